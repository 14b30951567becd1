"""Logs: one line per stage event that matters, per-element chatter only at DEBUG.

Two runs of the pipeline on local stacks of different sizes (10 and 50 vines, the
sample data's planted failures plus one vine whose migration always fails), logged at
INFO: the number of INFO+ lines does not grow with the vines, no INFO+ line names a
vine except the warning for the one whose retries ran out, the stages' ready and done
lines are there, and no secret is logged. A relay that drops the connection: one
WARNING for the loss, with the relay and the reason, and one INFO for the reconnect.
"""

import json
import logging
import socket

import pytest

from devstack.stack import LocalStack
from tests.conftest import read_ndjson, run_pipeline
from tests.support.ws_server import ThreadedServer
from transforms.runtime.logs import CappedLog, stage_line
from transforms.nostr.event import Signer, generate_private_key
from transforms.clients.relay.outcomes import OUTCOME_ACCEPTED, OUTCOME_PERMANENT
from transforms.clients.relay.publisher import RelayPublisher


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


class _DroppingRelay(ThreadedServer):
  """Closes its first connection on the first EVENT without answering; then answers OK,
  or `invalid:` for events whose content says "refuse"."""

  def __init__(self):
    self.connections = 0
    super().__init__()

  def _handle(self, conn):
    self.connections += 1
    first = self.connections == 1
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "EVENT":
        continue
      if first:  # dropped, no closing handshake: as when a relay or its proxy dies
        conn.socket.shutdown(socket.SHUT_RDWR)
        return
      refuse = msg[1]["content"].endswith("refuse")
      conn.send(json.dumps(["OK", msg[1]["id"], not refuse, "invalid: no" if refuse else ""]))


def test_a_relay_reconnect_is_logged_once_with_the_relay_and_reason(caplog):
  signer = Signer(generate_private_key())
  events = [signer.sign({"created_at": 1700000000 + i, "kind": 1, "tags": [],
                         "content": "n %d%s" % (i, " refuse" if i % 2 else "")})
            for i in range(5)]
  with _DroppingRelay() as relay, caplog.at_level(logging.DEBUG, "transforms.clients.relay.publisher"):
    with RelayPublisher(relay.url, sleep=lambda s: None) as pub:
      for event in events:
        pub.submit(event)
      results = pub.drain(timeout=20)
  outcomes = {r.event_id: r.outcome for r in results}
  assert [outcomes[e["id"]] for e in events] == [OUTCOME_ACCEPTED, OUTCOME_PERMANENT] * 2 + [
      OUTCOME_ACCEPTED]
  lost = [r for r in caplog.records if "lost" in r.getMessage()]
  assert len(lost) == 1 and lost[0].levelno == logging.WARNING
  assert relay.url in lost[0].getMessage() and "connection 1 lost (" in lost[0].getMessage()
  back = [r for r in caplog.records if "reconnected" in r.getMessage()]
  assert len(back) == 1 and back[0].levelno == logging.INFO
  assert relay.url in back[0].getMessage()
  done = [r.getMessage() for r in caplog.records if ": done (" in r.getMessage()]
  assert len(done) == 1 and "accepted 3, duplicate 0, refused 2" in done[0]
  assert "reconnects 1" in done[0]
  # Events themselves, refused or not, are never above DEBUG (the DoFn reports its vines).
  assert not [r for r in caplog.records if r.levelno >= logging.INFO
              and any(e["id"] in r.getMessage() for e in events)]


def test_capped_log_and_stage_line(caplog):
  log = CappedLog(logging.getLogger("t.capped"), "failures", limit=3)
  with caplog.at_level(logging.DEBUG, "t.capped"):
    for i in range(10):
      log.log("vine %d failed", i)
  levels = [(r.levelno, r.getMessage()) for r in caplog.records]
  assert [m for lvl, m in levels if lvl == logging.WARNING] == [
      "vine 0 failed", "vine 1 failed", "vine 2 failed",
      "3 failures logged: further ones at DEBUG only (the done line counts them)"]
  assert sum(1 for lvl, _ in levels if lvl == logging.DEBUG) == 7 and log.count == 10
  assert stage_line("S", "done", {"a_b": 1, "wait_s": 2.5, "x": "y"}) == (
      "S: done (a b 1, wait 2.5 s, x y)")
