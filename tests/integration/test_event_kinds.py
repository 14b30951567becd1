"""--event-kind 34236 and both, end to end against a real relay process and the emulator.

One stack, four runs in order: 34236 (an earlier 34236 version planted for one vine,
dated a minute ahead, must be replaced), 34236 again (nothing to do), both (only the
32222 replacements are new; one published vine each), both again (nothing to do).
"""

import os
import time
import urllib.request

import pytest

from devstack.stack import LocalStack, publish_events
from tests.support.runs import read_ndjson, run_pipeline
from transforms.keys.store import KeyStore
from transforms.nostr.event import first_tag_value, validate_event

pytestmark = pytest.mark.integration


def _address(event):
  return (event["pubkey"], first_tag_value(event["tags"], "d"))


def _imeta(event):
  (imeta,) = [t for t in event["tags"] if t[0] == "imeta"]
  fields = {}
  for entry in imeta[1:]:
    key, value = entry.split(" ", 1)
    fields.setdefault(key, []).append(value)
  return fields


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs the four steps once; yields what each saw."""
  work = tmp_path_factory.mktemp("kinds")
  with LocalStack(str(work), n_vines=14, seed=5) as stack:
    keys = KeyStore.load(stack.path("keys.db"))
    before = {_address(e): e for e in stack.relay_events()}
    target = next(e for e in before.values()
                  if keys.signer_for(e["pubkey"]) and first_tag_value(e["tags"], "d")
                  and e["id"] != stack.manifest["planted"].get("missing_openvine_video", {}).get(
                      "event_id"))
    planted = keys.signer_for(target["pubkey"]).sign({
        "kind": 34236, "created_at": int(time.time()) + 60, "content": "old",
        "tags": [["d", first_tag_value(target["tags"], "d")], ["title", "an older version"],
                 ["imeta", "url https://example.invalid/old.mp4", "m video/mp4"]]})
    assert publish_events(stack.relay_urls[0], [planted]) == 1
    steps = {}
    for name, kind in (("video", "34236"), ("video_again", "34236"), ("both", "both"),
                       ("both_again", "both")):
      calls = stack.emulator.stats()["migrate_calls_total"]
      code, run_dir, summary = run_pipeline(stack, work / name, ["--event-kind", kind])
      steps[name] = {
          "code": code, "summary": summary, "run_dir": run_dir,
          "calls": stack.emulator.stats()["migrate_calls_total"] - calls,
          "published": read_ndjson(os.path.join(run_dir, "published.ndjson")),
          "videos": {_address(e): e for e in stack.relay_events(kind=34236)},
          "replacements": {_address(e): e for e in stack.relay_events()},
          "raw_videos": stack.relay_events(kind=34236)}
    yield stack, before, planted, steps


def test_34236_run_publishes_one_nip71_event_per_vine_and_leaves_32222_alone(runs):
  stack, before, planted, steps = runs
  step = steps["video"]
  assert step["code"] == 0 and step["summary"]["balanced"]
  assert step["summary"]["published"] == stack.manifest["expected_published"]
  assert step["replacements"] == before, "the 32222 events are not touched in 34236 mode"
  assert len(step["raw_videos"]) == len(step["videos"]), "one 34236 event per address"
  published = {r["video_event_id"]: r for r in step["published"]}
  assert len(published) == stack.manifest["expected_published"]
  for address, event in step["videos"].items():
    assert validate_event(event) is None
    if event["id"] == planted["id"]:
      continue
    record = published[event["id"]]
    assert record["kinds"] == [34236] and record["event_id"] == event["id"]
    old = before[address]  # same author key, same d as the 32222 event it comes from
    assert old["id"] == record["previous_event_id"]
    fields = _imeta(event)
    assert fields["url"] == [record["mp4_url"]] and fields["url"][0].endswith(".mp4")
    assert fields["m"] == ["video/mp4"] and fields["dim"] == ["480x480"]
    assert float(fields["duration"][0]) < 7
    assert fields["image"] == [record["thumbnail_url"]]
    (sha,) = fields["x"]
    assert fields["fallback"][0].endswith("/" + sha)
    tags = {t[0]: t[1:] for t in event["tags"]}
    assert tags["title"][0].strip() and tags["origin"][:2] == ["vine", first_tag_value(
        old["tags"], "d")]
    assert all(value.isdigit() for value in tags.get("published_at", [[]])[0])
  # The MP4 and the Blossom fallback play; a sample is enough.
  sample = next(e for e in step["videos"].values() if e["id"] != planted["id"])
  for url in (_imeta(sample)["url"][0], _imeta(sample)["fallback"][0]):
    with urllib.request.urlopen(url, timeout=10) as answer:
      assert answer.status == 200 and answer.headers["Content-Type"] == "video/mp4"


def test_earlier_34236_version_is_replaced_with_a_later_created_at(runs):
  _, _, planted, steps = runs
  current = steps["video"]["videos"][_address(planted)]
  assert current["id"] != planted["id"]
  assert current["created_at"] == planted["created_at"] + 1
  assert {t[0]: t[1] for t in current["tags"]}["title"] != "an older version"


def test_rerun_in_34236_mode_calls_nothing_and_publishes_nothing(runs):
  _, _, _, steps = runs
  first, again = steps["video"], steps["video_again"]
  assert again["code"] == 0 and again["summary"]["published"] == 0
  # The uid is reused from our own 34236 events: only the vine that failed is tried again.
  assert again["summary"]["counters"]["migrations_reused"] == first["summary"]["published"]
  assert again["calls"] == first["calls"] - first["summary"]["published"]
  assert again["summary"]["skipped"]["up_to_date"] == first["summary"]["published"]
  assert again["videos"] == first["videos"]


def test_both_publishes_the_32222_replacements_and_counts_one_vine_each(runs):
  stack, before, _, steps = runs
  step = steps["both"]
  assert step["code"] == 0 and step["summary"]["balanced"]
  assert step["calls"] == steps["video_again"]["calls"]  # the failing vine only
  assert step["summary"]["published"] == stack.manifest["expected_published"]
  assert step["videos"] == steps["video"]["videos"], "unchanged 34236 events are not resent"
  for record in step["published"]:
    assert record["kinds"] == [32222] and record["video_event_id"] is None
    event = step["replacements"][(record["pubkey"], first_tag_value(
        before[next(a for a, e in before.items() if e["id"] == record["previous_event_id"])][
            "tags"], "d"))]
    assert event["id"] == record["event_id"] and event["kind"] == 32222
    assert ["migration", "openvine-to-stream", record["stream_uid"]] in event["tags"]
  again = steps["both_again"]
  assert again["code"] == 0 and again["summary"]["published"] == 0
  assert again["calls"] == steps["video_again"]["calls"]
  assert again["replacements"] == step["replacements"] and again["videos"] == step["videos"]


def test_both_on_a_fresh_corpus_publishes_the_two_events_together_and_replays(tmp_path):
  with LocalStack(str(tmp_path / "fresh"), n_vines=7, seed=8, plant_failures=False) as stack:
    before = {_address(e): e for e in stack.relay_events()}
    failing = read_ndjson(stack.path("rows.ndjson"))[0]["vineId"]
    stack.emulator.configure(always_fail_vine_ids=[failing])
    code, run_dir, summary = run_pipeline(stack, tmp_path / "out", ["--event-kind", "both"])
    assert code == 0 and summary["balanced"]
    published = read_ndjson(os.path.join(run_dir, "published.ndjson"))
    assert summary["published"] == len(published) == stack.manifest["expected_published"] - 1
    assert summary["counters"]["events_published"] == 2 * len(published)
    replacements = {e["id"]: e for e in stack.relay_events()}
    videos = {e["id"]: e for e in stack.relay_events(kind=34236)}
    assert len(videos) == len(published)
    for record in published:
      assert record["kinds"] == [32222, 34236]
      new, video = replacements[record["event_id"]], videos[record["video_event_id"]]
      assert _address(new) == _address(video) and _address(new) in before
      assert new["created_at"] > before[_address(new)]["created_at"]
      assert ["migration", "openvine-to-stream", record["stream_uid"]] in video["tags"]

    # The failed vine, replayed once the API works: both of its events, one vine.
    (dead,) = read_ndjson(os.path.join(run_dir, "dead_letters.ndjson"))
    assert dead["vine_id"] == failing and dead["stage"] == "migrate"
    stack.emulator.configure(always_fail_vine_ids=[])
    replay_args = ["--event-kind", "both", "--mode", "replay", "--replay-from",
                   os.path.join(run_dir, "dead_letters.ndjson")]
    code, replay_dir, replayed = run_pipeline(stack, tmp_path / "replay", replay_args)
    assert code == 0 and replayed["balanced"] and replayed["published"] == 1
    (record,) = read_ndjson(os.path.join(replay_dir, "published.ndjson"))
    assert record["vine_id"] == failing and record["kinds"] == [32222, 34236]
    assert record["video_event_id"] in {e["id"] for e in stack.relay_events(kind=34236)}
    code, _, again = run_pipeline(stack, tmp_path / "again", replay_args)
    assert code == 0 and again["published"] == 0 and again["balanced"]
