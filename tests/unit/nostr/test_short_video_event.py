"""Kind 34236 (NIP-71 short video) events: the builder, the build/sign/publish plan, reuse."""

import json
import re

import pytest

from transforms.stages import replay
from transforms.runtime import outcomes as dl
from transforms.nostr import short_video_event as nip71_event
from transforms.core import records
from transforms.stages.migrate import reuse_migration
from transforms.nostr.event import Signer, generate_private_key, validate_event
from transforms.stages.publish import result_record
from transforms.stages.build import BuildVideoEventFn, plan_event

UID = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32
VINE = "MYxVapFvz2z"
SIGNER = Signer(generate_private_key())


def _event(tags, kind=32222, content="old", created_at=1750000000):
  return SIGNER.sign({"kind": kind, "created_at": created_at, "tags": tags, "content": content})


def _item(row=True, old_tags=None, video=None, blurhash="LKO2?U%2Tw=w]~RBVZRi};RPxuwH",
          sha256=SHA):
  old = _event(old_tags or [["d", VINE], ["title", "Rescued Vine video"],
                            ["url", "https://api.openvine.co/media/1751085897568-0fd41442"],
                            ["dim", "480x480"], ["duration", "6.5"], ["t", "vine"],
                            ["loops", "77"], ["published_at", "1390000000"]],
               created_at=2000000000)
  vine_row = records.parse_row({
      "vineId": VINE, "username": "Ann 🎉", "description": "hello  #World #FelizAñoNuevo",
      "loops": 10, "likes": 0, "comment_count": None, "repost_count": 2,
      "created_timestamp": 1400000000}) if row else None
  urls = {"uid": UID, "hls": "https://cdn/%s/manifest/video.m3u8" % UID,
          "dash": "https://cdn/%s/manifest/video.mpd" % UID,
          "mp4": "https://cdn/%s/downloads/default.mp4" % UID,
          "thumbnail": "https://cdn/%s/thumbnails/thumbnail.jpg" % UID,
          "animated_thumbnail": "https://cdn/t.gif", "sha256": sha256,
          "blossom": "https://blossom.example/%s" % SHA if sha256 else None}
  return records.WorkItem(vine_id=VINE, source=records.to_source_event(old), row=vine_row,
                          openvine_id="1751085897568-0fd41442", migration=urls, blurhash=blurhash,
                          video=records.to_source_event(video) if video else None)


def _tags(event):
  out = {}
  for tag in event["tags"]:
    out.setdefault(tag[0], []).append(tag[1:])
  return out


def _imeta(event):
  (imeta,) = _tags(event)["imeta"]
  return dict(entry.split(" ", 1) for entry in imeta), imeta


def test_short_video_event_satisfies_nip71_and_nip92():
  ev = nip71_event.build_short_video_event(_item(), now=2100000000)
  assert ev["kind"] == 34236 and ev["created_at"] == 2100000000
  tags = _tags(ev)
  assert tags["d"] == [[VINE]]
  assert tags["title"] == [["hello #World #FelizAñoNuevo"]]
  fields, raw = _imeta(ev)
  # NIP-92: one "key value" per entry, url plus at least one more field.
  assert raw[0].startswith("url ") and len(raw) >= 2
  assert all(re.match(r"^[a-z]+ \S", entry) for entry in raw)
  assert fields["url"].endswith(".mp4") and fields["m"] == "video/mp4"
  assert fields["dim"] == "480x480" and fields["duration"] == "6.5"
  assert float(fields["duration"]) < 7
  assert fields["image"].endswith("thumbnail.jpg") and fields["x"] == SHA
  assert fields["blurhash"] == "LKO2?U%2Tw=w]~RBVZRi};RPxuwH"
  fallbacks = [e[len("fallback "):] for e in raw if e.startswith("fallback ")]
  assert fallbacks == ["https://blossom.example/%s" % SHA,
                       "https://api.openvine.co/media/1751085897568-0fd41442"]
  assert not any(".m3u8" in v or ".mpd" in v for t in ev["tags"] for v in t), "no HLS/DASH"
  assert tags["published_at"] == [["1400000000"]]
  assert tags["loops"] == [["10"]] and tags["likes"] == [["0"]] and tags["reposts"] == [["2"]]
  assert "comments" not in tags  # NULL count: no tag
  assert tags["t"] == [["world"], ["felizañonuevo"]]
  assert tags["origin"] == [["vine", VINE, "https://vine.co/v/" + VINE]]
  assert tags["alt"] == [["Vine video: hello #World #FelizAñoNuevo"]]
  assert tags["client"] == [["divine.video"]]
  assert tags["migration"] == [["openvine-to-stream", UID]]
  assert ev["content"] == "hello  #World #FelizAñoNuevo"
  assert all(isinstance(v, str) for t in ev["tags"] for v in t)
  signed = SIGNER.sign(ev)
  assert validate_event(signed) is None
  assert records.migrated_uid(signed["tags"], 34236) == UID


def test_short_video_without_row_keeps_old_metadata_and_always_has_a_title():
  ev = nip71_event.build_short_video_event(_item(row=False, blurhash=None, sha256=None), now=5)
  tags = _tags(ev)
  assert tags["title"] == [["Rescued Vine video"]]  # a placeholder, but nothing better known
  assert tags["published_at"] == [["1390000000"]] and tags["loops"] == [["77"]]
  assert tags["t"] == [["vine"]]
  fields, raw = _imeta(ev)
  assert "x" not in fields and "blurhash" not in fields
  assert [e for e in raw if e.startswith("fallback ")] == [
      "fallback https://api.openvine.co/media/1751085897568-0fd41442"]
  row = records.parse_row({"vineId": VINE, "username": "Bo", "description": ""})
  assert _tags(nip71_event.build_short_video_event(_item().replace(row=row), now=5))[
      "title"] == [["Vine by Bo"]]
  untitled = _item(row=False, old_tags=[["d", VINE], ["url", "https://x.example/v.mp4"]])
  assert _tags(nip71_event.build_short_video_event(untitled, now=5))["title"] == [["Vine " + VINE]]


@pytest.mark.parametrize("value,expected", [
    ("6", "6"), ("6.5", "6.5"), ("6.999", "6.999"), ("7", "6"), ("7.0", "6"), ("60", "6"),
    ("0", "6"), ("-1", "6"), ("nan", "6"), ("inf", "6"), ("six", "6"), (None, "6"),
    ("5.25", "5.25")])
def test_duration_is_always_a_number_below_seven(value, expected):
  assert nip71_event.clip_duration(value) == expected


def test_replaces_earlier_34236_version_with_a_later_created_at():
  earlier = _event([["d", VINE], ["title", "v1"]], kind=34236, created_at=2500000000)
  ev = nip71_event.build_short_video_event(_item(video=earlier), now=2100000000)
  assert ev["created_at"] == 2500000001
  ev = nip71_event.build_short_video_event(_item(video=earlier), now=2600000000)
  assert ev["created_at"] == 2600000000


def _run_build(fn, item):
  return list(fn.process(item))


def test_build_plans_each_address_and_skips_when_nothing_changes():
  item = _item()
  for kind, want in (("32222", ("unsigned",)), ("34236", ("unsigned_video",)),
                     ("both", ("unsigned", "unsigned_video"))):
    (out,) = _run_build(BuildVideoEventFn("r", event_kind=kind, clock=lambda: 2100000000), item)
    got = tuple(f for f in ("unsigned", "unsigned_video") if getattr(out, f) is not None)
    assert got == want, kind
  # The published 34236 version is up to date: nothing to do for it.
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  again = item.replace(video=records.to_source_event(video))
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="34236", clock=lambda: 2200000000), again)
  assert out.tag == dl.SKIPPED and out.value["reason"] == "up_to_date"
  # With both, only the 32222 replacement is still to do.
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="both", clock=lambda: 2200000000), again)
  assert out.unsigned is not None and out.unsigned_video is None and out.signed_video is None
  # A relay lacks the current version: the same signed event again, never a new one.
  behind = again.replace(video=records.to_source_event(video).__class__(
      **{**records.to_source_event(video).__dict__, "missing_on": ("ws://127.0.0.1:1",)}))
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="34236", clock=lambda: 2200000000),
                      behind)
  assert out.signed_video == video and out.unsigned_video is None
  with pytest.raises(ValueError):
    BuildVideoEventFn("r", event_kind="21")


def test_plan_event_forces_a_new_version():
  item = _item()
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  rebuilt = nip71_event.build_short_video_event(
      item.replace(video=records.to_source_event(video)), now=2200000000)
  assert plan_event(records.to_source_event(video), rebuilt, force=False) == (None, None)
  assert plan_event(records.to_source_event(video), rebuilt, force=True) == (rebuilt, None)
  assert plan_event(None, rebuilt, force=False) == (rebuilt, None)


def test_reuse_takes_urls_from_our_34236_event_when_the_32222_is_unmigrated():
  item = _item()
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  bare = item.replace(migration=None, blurhash=None, video=records.to_source_event(video))
  reused = reuse_migration(bare, "https://cdn.example")
  urls = reused.migration
  assert urls["uid"] == UID and urls["sha256"] == SHA
  assert urls["mp4"] == item.migration["mp4"] and urls["blossom"] == item.migration["blossom"]
  assert reused.blurhash == item.blurhash
  # Rebuilt from the reused URLs, the 34236 event is unchanged: a re-run publishes nothing.
  rebuilt = nip71_event.build_short_video_event(reused, now=2200000000)
  assert rebuilt["tags"] == video["tags"] and rebuilt["content"] == video["content"]


def test_result_record_and_replay_payload_carry_both_events():
  item = _item()
  signed = SIGNER.sign({"kind": 32222, "created_at": 1, "tags": [["d", VINE]], "content": ""})
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2))
  both = item.replace(signed=signed, signed_video=video,
                      video=records.to_source_event(video))
  record = result_record(both, ["ws://a"], "run")
  assert record["event_id"] == signed["id"] and record["video_event_id"] == video["id"]
  assert record["kinds"] == [32222, 34236]
  only_video = result_record(item.replace(signed_video=video), ["ws://a"], "run")
  assert only_video["event_id"] == video["id"] and only_video["kinds"] == [34236]
  dead = dl.dead_letter_for_item("run", dl.STAGE_PUBLISH, dl.TRANSIENT_EXHAUSTED, "x", both)
  stage, back = replay.item_from_dead_letter(json.loads(json.dumps(dead)))
  assert stage == dl.STAGE_PUBLISH
  assert back.signed == signed and back.signed_video == video
  assert back.video.event == video
