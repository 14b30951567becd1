"""Re-runs and a crash: the real pipeline on DirectRunner, a real relay.

Two local stacks of the same sample data, module-scoped:

* Re-runs: incremental, --force-remigrate, --force-republish, update-existing.
* A crash: `python -m pipeline.main` killed mid-run, then a plain re-run; the relay
  ends as after a clean run.

Every run asserts the conservation check (`summary["balanced"]`).
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from devstack.stack import LocalStack
from tests.support.faulty_relay import FaultyRelayProxy
from tests.support.paths import ROOT
from tests.support.run_checks import (
  assert_balanced,
  assert_relay_consistent,
  blurhash_of,
  d_tag,
  is_migrated,
  read_outputs,
)
from tests.support.runs import TOKEN_ENV, run_pipeline
from transforms.nostr.event import first_tag_value

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------
# Re-runs.

N_RERUN, SEED_RERUN = 25, 41


def _normalised(events, emulator_url):
  """Relay state without what differs between two runs: ids, signatures, created_at, ports."""
  return sorted((e["pubkey"], d_tag(e), e["kind"], e["content"],
                 json.dumps(e["tags"], ensure_ascii=False).replace(emulator_url, "EMU"))
                for e in events)


@pytest.fixture(scope="module")
def rerun_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("rerun")), n_vines=N_RERUN,
                  seed=SEED_RERUN) as stack:
    yield stack


@pytest.fixture(scope="module")
def clean_run(rerun_stack, tmp_path_factory):
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path_factory.mktemp("out"))
  assert_balanced(code, summary)
  events = rerun_stack.relay_events()
  return {"summary": summary, "out": read_outputs(run_dir), "events": events,
          "normalised": _normalised(events, rerun_stack.emulator.url)}


def _unfinished(stack):
  planted = stack.manifest["planted"]
  return {planted["missing_openvine_video"]["vine_id"]} | set(
      planted["no_signing_key"]["vine_ids"])


def test_second_run_makes_no_calls_publishes_nothing_and_says_so(rerun_stack, clean_run,
                                                                 tmp_path):
  rerun_stack.emulator.reset_stats()
  before = sorted(e["id"] for e in rerun_stack.relay_events())
  code, _, summary = run_pipeline(rerun_stack, tmp_path)
  assert_balanced(code, summary)
  done = rerun_stack.manifest["expected_published"]
  counters = summary["counters"]
  assert summary["published"] == 0 and summary["skipped"]["up_to_date"] == done
  assert counters["migrations_reused"] == done and counters.get("videos_migrated", 0) == 0
  # Only the vines that did not end published last time were tried again, once each.
  calls = rerun_stack.emulator.stats()["migrate_calls"]
  assert set(calls) == _unfinished(rerun_stack) and counters["migrate_calls"] == len(calls)
  assert sorted(e["id"] for e in rerun_stack.relay_events()) == before


def test_force_remigrate_calls_the_api_but_changes_nothing(rerun_stack, clean_run, tmp_path):
  rerun_stack.emulator.reset_stats()
  before = sorted(e["id"] for e in rerun_stack.relay_events())
  code, _, summary = run_pipeline(rerun_stack, tmp_path, ["--force-remigrate"])
  assert_balanced(code, summary)
  stats = rerun_stack.emulator.stats()
  done = rerun_stack.manifest["expected_published"]
  assert stats["migrate_calls_total"] == done + len(_unfinished(rerun_stack))
  assert stats["migrations"] == 0  # the API's idempotency: all already_migrated
  assert summary["published"] == 0 and summary["skipped"]["up_to_date"] == done
  assert sorted(e["id"] for e in rerun_stack.relay_events()) == before


def test_force_republish_publishes_new_versions_without_calls(rerun_stack, clean_run, tmp_path):
  rerun_stack.emulator.reset_stats()
  old = {(e["pubkey"], d_tag(e)): e for e in rerun_stack.relay_events()}
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path, ["--force-republish"])
  assert_balanced(code, summary)
  out = read_outputs(run_dir)
  assert summary["published"] == rerun_stack.manifest["expected_published"]
  calls = rerun_stack.emulator.stats()["migrate_calls"]
  assert set(calls) == _unfinished(rerun_stack)
  events = assert_relay_consistent(rerun_stack.relay_urls[0], out["published"])
  republished = {r["event_id"] for r in out["published"]}
  for event in events:
    if event["id"] in republished:
      previous = old[(event["pubkey"], d_tag(event))]
      assert event["created_at"] > previous["created_at"]
      assert [t for t in event["tags"]] == [t for t in previous["tags"]]


def test_update_existing_adds_metadata_once_and_keeps_stream_urls(rerun_stack, clean_run,
                                                                  tmp_path):
  orphan = rerun_stack.manifest["planted"]["event_without_row"]["vine_id"]
  before = next(e for e in rerun_stack.relay_events() if d_tag(e) == orphan)
  assert is_migrated(before) and first_tag_value(before["tags"], "loops") is None
  rows = tmp_path / "rows.ndjson"
  with open(rerun_stack.path("rows.ndjson"), encoding="utf-8") as f:
    text = f.read()
  row = {"vineId": orphan, "username": "Orphan Annie", "description": "found my row #Found",
         "loops": 4242, "likes": 42, "comment_count": 4, "repost_count": 2,
         "created_timestamp": 1400000000, "hashtags": ["found"]}
  rows.write_text(text + json.dumps(row) + "\n", encoding="utf-8")
  rerun_stack.emulator.reset_stats()
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path / "a", ["--rows", str(rows)])
  assert_balanced(code, summary)
  assert [r["vine_id"] for r in read_outputs(run_dir)["published"]] == [orphan]
  assert orphan not in rerun_stack.emulator.stats()["migrate_calls"]
  after = next(e for e in rerun_stack.relay_events() if d_tag(e) == orphan)
  tags = {t[0]: t[1:] for t in after["tags"]}
  assert tags["loops"] == ["4242"] and tags["published_at"] == ["1400000000"]
  assert tags["username"] == ["Orphan Annie"] and after["content"] == row["description"]
  assert ["t", "found"] in after["tags"]
  for name in ("url", "streaming", "r", "thumb", "preview", "stream_uid", "migration"):
    # `streaming` is in neither: the CDN answers 410 for HLS, so VerifyUrls never publishes it.
    assert tags.get(name) == next((t[1:] for t in before["tags"] if t[0] == name), None), name
  assert blurhash_of(after) == blurhash_of(before)
  # Once: the next run finds it up to date.
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path / "b", ["--rows", str(rows)])
  assert_balanced(code, summary)
  assert summary["published"] == 0


# ---------------------------------------------------------------------------
# A crash mid-run, then a plain re-run.


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory):
  # Same seed and size as rerun_stack: the same vines, keys and events.
  with LocalStack(str(tmp_path_factory.mktemp("crash")), n_vines=N_RERUN,
                  seed=SEED_RERUN) as stack:
    yield stack


def _kill_mid_run(stack, out_dir, at_least=3, timeout=90.0):
  """Runs `python -m pipeline.main` and SIGKILLs it once at_least vines are on the relay.

  The DirectRunner materialises each stage's output before the next stage starts, so
  all events reach PublishEvents together; a proxy that holds each EVENT 150 ms, with
  one event in flight (--publish-limit 1), spreads publishing over a few seconds.
  """
  proxy = FaultyRelayProxy(stack.relay_urls[0],
                           lambda event, sends: ("hook", lambda: time.sleep(0.15)))
  env = dict(os.environ, PYTHONPATH=ROOT, **{TOKEN_ENV: stack.token})
  args = stack.pipeline_args(output_dir=str(out_dir), extra=[
      "--run-id", "killed", "--relays", proxy.url, "--publish-limit", "1",
      "--retry-base-delay", "0.01"])
  try:
    with open(os.path.join(str(out_dir), "killed.log"), "w", encoding="utf-8") as log:
      proc = subprocess.Popen([sys.executable, "-m", "pipeline.main"] + args, cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
      try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
          if sum(map(is_migrated, stack.relay_events())) >= at_least:
            break
          time.sleep(0.05)
      finally:
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  finally:
    proxy.close()
  return proc.returncode


def test_killed_run_then_plain_rerun_ends_like_a_clean_run(crash_stack, clean_run,
                                                           tmp_path):
  returncode = _kill_mid_run(crash_stack, tmp_path)
  assert returncode == -signal.SIGKILL, "the run ended before it could be killed"
  first = {d_tag(e) for e in crash_stack.relay_events() if is_migrated(e)}
  expected = crash_stack.manifest["expected_published"]
  assert 3 <= len(first) < expected
  calls_before = collections.Counter(crash_stack.emulator.stats()["migrate_calls"])
  code, run_dir, summary = run_pipeline(crash_stack, tmp_path / "rerun")
  assert_balanced(code, summary)
  stats = crash_stack.emulator.stats()
  calls_after = collections.Counter(stats["migrate_calls"]) - calls_before
  # Nothing published before the crash was migrated again...
  assert not first & set(calls_after)
  # ...and the emulator copied each video once: repeats were answered already_migrated.
  assert stats["migrations"] == expected + len(
      crash_stack.manifest["planted"]["no_signing_key"]["vine_ids"])
  assert summary["published"] == expected - len(first)
  assert summary["counters"]["migrations_reused"] == len(first)
  # The relay ends exactly as after a clean run of the same input.
  events = assert_relay_consistent(crash_stack.relay_urls[0],
                                   read_outputs(run_dir)["published"])
  assert _normalised(events, crash_stack.emulator.url) == clean_run["normalised"]
