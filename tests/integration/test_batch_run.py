"""The spine end to end: DirectRunner against a real relay process and the emulator.

About 50 vines with planted failures (a missing source video, an author with no key,
a forged signature, a row without event, an event without row, an event without d).
"""

import os

import pytest
import requests

from tests.support.runs import read_ndjson, run_pipeline
from transforms.nostr.event import first_tag_value, validate_event

pytestmark = pytest.mark.integration


def _tags(event):
  out = {}
  for tag in event["tags"]:
    out.setdefault(tag[0], []).append(tag[1:])
  return out


@pytest.fixture(scope="module")
def first_run(stack, tmp_path_factory):
  before = {(e["pubkey"], first_tag_value(e["tags"], "d")): e for e in stack.relay_events()}
  code, run_dir, summary = run_pipeline(stack, tmp_path_factory.mktemp("out"))
  return code, run_dir, summary, before


def test_run_exits_zero_and_accounting_adds_up(stack, first_run):
  code, _, summary, _ = first_run
  assert code == 0
  assert summary["balanced"]
  assert summary["vines_in"] == summary["published"] + sum(summary["skipped"].values()) + sum(
      summary["dead_lettered"].values())
  assert summary["published"] == stack.manifest["expected_published"]


def test_dead_letters_are_exactly_the_planted_failures(stack, first_run):
  _, run_dir, summary, _ = first_run
  planted = stack.manifest["planted"]
  dead = read_ndjson(os.path.join(run_dir, "dead_letters.ndjson"))
  got = sorted((d["stage"], d["error_class"], d["event_id"]) for d in dead)
  want = sorted([
      ("migrate", "permanent", planted["missing_openvine_video"]["event_id"]),
      ("read_events", "bad_input", planted["forged_signature"]["event_id"]),
  ] + [("sign", "permanent", eid) for eid in planted["no_signing_key"]["event_ids"]])
  assert got == want
  by_stage = {d["stage"]: d for d in dead}
  assert "source missing (OpenVine answered 404)" in by_stage["migrate"]["error"]
  assert "no_signing_key" in by_stage["sign"]["error"]
  for d in dead:
    assert d["payload"] and d["run_id"] and d["first_failure"]
  skipped = read_ndjson(os.path.join(run_dir, "skipped.ndjson"))
  assert sorted((s["reason"], s["vine_id"] or s["event_id"]) for s in skipped) == sorted([
      ("no_event", planted["row_without_event"]["vine_id"]),
      ("no_vine_id", planted["event_without_d"]["event_id"])])


def test_relay_holds_one_new_valid_version_per_address(stack, first_run):
  _, run_dir, _, before = first_run
  after = stack.relay_events()
  addresses = [(e["pubkey"], first_tag_value(e["tags"], "d")) for e in after]
  assert len(addresses) == len(set(addresses)), "one event per (pubkey, d)"
  published = {r["vine_id"]: r for r in read_ndjson(os.path.join(run_dir, "published.ndjson"))}
  rows = {r["vineId"]: r for r in read_ndjson(stack.path("rows.ndjson"))}
  migrated = 0
  for event in after:
    assert validate_event(event) is None
    tags = _tags(event)
    vine_id = first_tag_value(event["tags"], "d")
    if vine_id not in published:
      continue
    migrated += 1
    old = before[(event["pubkey"], vine_id)]
    assert event["id"] == published[vine_id]["event_id"]
    assert event["created_at"] > old["created_at"] and event["kind"] == 32222
    # The emulator's uids are random: the one it holds for the vine is the one published.
    found = requests.get(stack.emulator.url + "/v1/lookup", params={"vineId": vine_id},
                         timeout=10).json()
    uid = found["uid"]
    assert tags["stream_uid"] == [[uid]]
    assert tags["migration"] == [["openvine-to-stream", uid]]
    assert tags["client"] == [["divine.video"]]
    mp4 = tags["r"][0][0]  # content-addressed (/{sha256}.mp4) when known, else by uid
    assert mp4.startswith(stack.emulator.url + "/") and mp4.endswith(".mp4")
    assert tags["url"] == [[mp4]] and "streaming" not in tags  # the CDN answers 410 for HLS
    imeta = tags["imeta"][0]
    assert any(v.startswith("blurhash ") and len(v) > 20 for v in imeta)
    row = rows.get(vine_id)
    if row is None:
      assert "published_at" not in tags or tags["published_at"] == _tags(old).get("published_at")
      continue
    if row["created_timestamp"] is not None:
      assert tags["published_at"] == [[str(row["created_timestamp"])]]
    if row["loops"] is not None:
      assert tags["loops"] == [[str(row["loops"])]]
    if row["username"]:
      assert tags["username"] == [[row["username"]]]
    assert event["content"] == (row["description"] if row["description"] is not None
                                else old["content"])
  assert migrated == stack.manifest["expected_published"]


def test_at_most_one_migrate_call_and_one_upload_per_vine(stack, first_run):
  stats = stack.emulator.stats()  # the emulator in the service's real (non-atomic) mode
  assert stats["migrate_calls"] and max(stats["migrate_calls"].values()) == 1
  assert stats["uploads"] and max(stats["uploads"].values()) == 1
  assert stats["max_in_flight_per_vine"] == 1


def test_rerun_is_incremental(stack, first_run, tmp_path):
  stack.emulator.reset_stats()
  relay_before = sorted(e["id"] for e in stack.relay_events())
  code, run_dir, summary = run_pipeline(stack, tmp_path)
  assert code == 0 and summary["balanced"]
  # Only vines that did not end published the first time are tried again.
  planted = stack.manifest["planted"]
  unfinished = {planted["missing_openvine_video"]["vine_id"]} | set(
      planted["no_signing_key"]["vine_ids"])
  calls = stack.emulator.stats()["migrate_calls"]
  assert set(calls) == unfinished and max(calls.values()) == 1
  assert summary["published"] == 0
  assert summary["skipped"]["up_to_date"] == stack.manifest["expected_published"]
  assert sorted(e["id"] for e in stack.relay_events()) == relay_before
