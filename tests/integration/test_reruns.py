"""Re-runs and a crash: the real pipeline on DirectRunner, a real relay.

Two local stacks of the same sample data, module-scoped:

* Re-runs: incremental, --force-remigrate, --force-republish, update-existing.
* A crash: `python -m pipeline.main` killed mid-run: its journal names every vine that
  reached the relay and `pipeline.report` reads it; then a plain re-run, which publishes
  none of them again, and the relay ends as after a clean run.

Every run asserts the conservation check (`summary["balanced"]`).
"""

import collections
import contextlib
import io
import json
import os
import re
import signal
import sqlite3

import pytest

from devstack.stack import LocalStack, publish_events
from pipeline import report
from tests.support.run_checks import (
  assert_balanced,
  assert_relay_consistent,
  blurhash_of,
  d_tag,
  is_migrated,
  read_outputs,
)
from tests.support.runs import read_ndjson, run_pipeline, signal_mid_run
from transforms.io import journal
from transforms.nostr.event import Signer, first_tag_value, parse_private_key

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------
# Re-runs.

N_RERUN, SEED_RERUN = 25, 41


_BLURHASH = re.compile(r'"blurhash [^"]*"')
_CONTENT_MP4 = re.compile(r"EMU/[0-9a-f]{64}\.mp4")


def _normalised(events, emulator_url):
  """Relay state without what differs between two runs: ids, signatures, created_at, ports,
  and what derives from a Stream uid, which the service hands out at random: the uid, the
  blurhash of its thumbnail, and which of the MP4's two names an answer gave (the first
  answer names it by content hash, later ones by uid; keeping tags stable across runs is
  tested where tags are chosen)."""
  def tags_text(event):
    text = json.dumps(event["tags"], ensure_ascii=False).replace(emulator_url, "EMU")
    uid = first_tag_value(event["tags"], "stream_uid")
    text = text.replace(uid, "UID") if uid else text
    return _CONTENT_MP4.sub("EMU/UID/downloads/default.mp4", _BLURHASH.sub('"blurhash B"', text))
  return sorted((e["pubkey"], d_tag(e), e["kind"], e["content"], tags_text(e)) for e in events)


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


def _signer_of(stack, pubkey):
  with contextlib.closing(sqlite3.connect(stack.path("keys.db"))) as conn:
    (priv,) = conn.execute("SELECT nostr_private_key FROM user_migrations "
                           "WHERE nostr_public_key = ?", (pubkey,)).fetchone()
  return Signer(parse_private_key(priv))


def test_an_earlier_tools_stream_uid_event_is_updated_without_a_migrate_call(
    rerun_stack, clean_run, tmp_path):
  with_loops = {r["vineId"] for r in read_ndjson(rerun_stack.path("rows.ndjson"))
                if r["loops"] is not None}
  current = next(e for e in rerun_stack.relay_events()
                 if is_migrated(e) and d_tag(e) in with_loops)
  vine, uid = d_tag(current), first_tag_value(current["tags"], "stream_uid")
  # As an earlier tool wrote it: a stream_uid, not our migration tag, no metadata.
  legacy = _signer_of(rerun_stack, current["pubkey"]).sign({
      "kind": 32222, "created_at": current["created_at"] + 1, "content": current["content"],
      "tags": [t for t in current["tags"] if t[0] not in ("migration", "loops")]})
  assert publish_events(rerun_stack.relay_urls[0], [legacy]) == 1
  with open(rerun_stack.path("openvine_ids.txt"), encoding="utf-8") as f:
    held = [line.strip() for line in f if line.strip()]
  rerun_stack.emulator.reset_stats()
  rerun_stack.emulator.configure(openvine_ids=[])  # its source is gone at OpenVine now
  try:
    code, run_dir, summary = run_pipeline(rerun_stack, tmp_path)
  finally:
    rerun_stack.emulator.configure(openvine_ids=held)
  assert_balanced(code, summary)
  assert [r["vine_id"] for r in read_outputs(run_dir)["published"]] == [vine]
  stats = rerun_stack.emulator.stats()
  assert vine not in stats["migrate_calls"] and stats["lookups"] >= 1
  assert summary["counters"]["earlier_migrations_reused"] == 1
  assert summary["counters"]["migration_lookups"] == stats["lookups"]  # one per claimed vine
  after = next(e for e in rerun_stack.relay_events() if d_tag(e) == vine
               and e["pubkey"] == current["pubkey"])
  assert ["migration", "openvine-to-stream", uid] in after["tags"]
  assert first_tag_value(after["tags"], "stream_uid") == uid
  assert first_tag_value(after["tags"], "loops") == first_tag_value(current["tags"], "loops")


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


def test_killed_run_then_plain_rerun_ends_like_a_clean_run(crash_stack, clean_run,
                                                           tmp_path):
  returncode = signal_mid_run(
      crash_stack, tmp_path, "killed", signal.SIGKILL,
      lambda: sum(map(is_migrated, crash_stack.relay_events())) >= 3)
  assert returncode == -signal.SIGKILL, "the run ended before it could be killed"
  first = {d_tag(e) for e in crash_stack.relay_events() if is_migrated(e)}
  expected = crash_stack.manifest["expected_published"]
  assert 3 <= len(first) < expected
  # The killed run's journal names every vine whose new version reached the relay.
  killed_dir = os.path.join(str(tmp_path), "killed")
  records, bad = journal.read_journal(killed_dir)
  saw = journal.what_it_saw(records)
  assert saw["run"] is not None and saw["end"] is None and bad == 0
  assert first <= set(saw["published"]) | set(saw["in_doubt"])
  assert set(saw["published"]) <= first
  with open(os.path.join(killed_dir, "progress.json"), encoding="utf-8") as f:
    stats = json.load(f)["stats"]
  assert {"events_checked", "videos_migrated", "videos_republished", "failed_migrations",
          "start_time", "last_checkpoint"} <= set(stats)
  # pipeline.report reads it and says the run did not finish.
  text = io.StringIO()
  assert report.main(["--output-dir", killed_dir, "--plain"], stream=text) == 0
  text = text.getvalue()
  assert "The run did not finish" in text and "Totals (from journal)" in text
  assert all(vine_id in text for vine_id in saw["in_doubt"])
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
  outputs = read_outputs(run_dir)
  assert not {r["vine_id"] for r in outputs["published"]} & set(saw["published"])
  # One FAILED line in monitor.log per dead letter.
  with open(os.path.join(run_dir, "monitor.log"), encoding="utf-8") as f:
    failed = sorted(line.split(",")[1:4] for line in f if line.startswith("FAILED,"))
  assert outputs["dead_letters"] and failed == sorted(
      [d["vine_id"] or "", d["stage"], d["error_class"]] for d in outputs["dead_letters"])
  # The relay ends exactly as after a clean run of the same input.
  events = assert_relay_consistent(crash_stack.relay_urls[0], outputs["published"])
  assert _normalised(events, crash_stack.emulator.url) == clean_run["normalised"]
