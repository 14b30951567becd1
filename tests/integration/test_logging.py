"""Logs: one line per stage event that matters, per-element chatter only at DEBUG.

Two runs of the pipeline on local stacks of different sizes (10 and 50 vines, the
sample data's planted failures plus one vine whose migration always fails), logged at
INFO: the number of INFO+ lines does not grow with the vines, no INFO+ line names a
vine except the warning for the one whose retries ran out, the stages' ready and done
lines are there, and no secret is logged.
"""

import logging

import pytest

from devstack.stack import LocalStack
from tests.support.runs import read_ndjson, run_pipeline


def _planted_vines(stack):
  planted = stack.manifest["planted"]
  found = {v.get("vine_id") for v in planted.values()}
  return found | set(planted["no_signing_key"]["vine_ids"])


def _logged_run(stack, out_dir, caplog):
  """One run with one always-failing vine; returns (INFO+ records, failing vine, all vines)."""
  rows = read_ndjson(stack.path("rows.ndjson"))
  vines = {r["vineId"] for r in rows}
  vines |= {t[1] for e in read_ndjson(stack.path("events.ndjson")) for t in e["tags"]
            if t and t[0] == "d" and len(t) > 1}
  failing = next(r["vineId"] for r in rows if r["vineId"] not in _planted_vines(stack))
  stack.emulator.configure(always_fail_vine_ids=[failing])
  caplog.clear()
  try:
    with caplog.at_level(logging.INFO):
      code, _, summary = run_pipeline(stack, out_dir)
  finally:
    stack.emulator.configure(always_fail_vine_ids=[])
  assert code == 0 and summary["balanced"], summary
  assert summary["dead_lettered"].get("migrate") == 2  # the failing vine and the planted one
  records = [r for r in caplog.records if r.levelno >= logging.INFO]
  return records, failing, vines, summary


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("small")), n_vines=10, seed=3) as s:
    yield s


@pytest.mark.integration
def test_info_lines_do_not_grow_with_the_vines(stack, small_stack, tmp_path, caplog):
  small, small_failing, small_vines, small_summary = _logged_run(small_stack, tmp_path / "s",
                                                                 caplog)
  large, failing, vines, summary = _logged_run(stack, tmp_path / "l", caplog)
  assert summary["vines_in"] >= small_summary["vines_in"] + 40

  # Fixed per run: a handful of lines more or less (e.g. a page), never one per vine.
  assert abs(len(large) - len(small)) <= 5, "\n".join(r.getMessage() for r in large)

  for records, fail, all_vines in ((small, small_failing, small_vines),
                                   (large, failing, vines)):
    named = {}
    for record in records:
      message = record.getMessage()
      for vine in all_vines:
        if vine in message:
          named.setdefault(vine, []).append(record)
    # Only the vine whose retries ran out, once, at WARNING, with its class.
    assert list(named) == [fail], {v: [r.getMessage() for r in rs] for v, rs in named.items()}
    [warning] = named[fail]
    assert warning.levelno == logging.WARNING
    assert "retries exhausted (transient_exhausted) after 5 attempts" in warning.getMessage()

  messages = [r.getMessage() for r in large]
  for prefix in ("MigrateVideo: ready (", "MigrateVideo: done (elements 50,",
                 "MigrationClient: ready (", "ComputeBlurhash: ready (",
                 "ComputeBlurhash: done (", "RelayPublisher %s: ready (" % stack.relay_urls[0],
                 "RelayPublisher %s: done (" % stack.relay_urls[0],
                 "reading %s: start (" % stack.relay_urls[0],
                 "reading %s: done (" % stack.relay_urls[0]):
    assert any(m.startswith(prefix) for m in messages), prefix
  [client_done] = [m for m in messages if m.startswith("MigrationClient: done")]
  # 50 vines to migrate: 5 calls for the failing one, one for each other (the planted
  # missing source is refused at once, permanent).
  assert client_done.startswith("MigrationClient: done (vines 50, calls 54, successes 48, "
                                "retries 4, exhausted 1, permanent 1, config 0"), client_done

  for record in small + large:
    text = record.getMessage() + str(record.args)
    assert stack.token not in text and small_stack.token not in text
