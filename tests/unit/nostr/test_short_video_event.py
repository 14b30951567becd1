"""Kind 34236 (NIP-71 short video) events: the builder, title and duration rules, replacement."""

import re

import pytest

from tests.support.short_video import SHA, SIGNER, UID, VINE, short_video_item, signed_event
from transforms.core import records, rows
from transforms.nostr import short_video_event as nip71_event
from transforms.nostr.event import validate_event


def _tags(event):
  out = {}
  for tag in event["tags"]:
    out.setdefault(tag[0], []).append(tag[1:])
  return out


def _imeta(event):
  (imeta,) = _tags(event)["imeta"]
  return dict(entry.split(" ", 1) for entry in imeta), imeta


def test_short_video_event_satisfies_nip71_and_nip92():
  ev = nip71_event.build_short_video_event(short_video_item(), now=2100000000)
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
  ev = nip71_event.build_short_video_event(short_video_item(row=False, blurhash=None, sha256=None),
                                          now=5)
  tags = _tags(ev)
  assert tags["title"] == [["Rescued Vine video"]]  # a placeholder, but nothing better known
  assert tags["published_at"] == [["1390000000"]] and tags["loops"] == [["77"]]
  assert tags["t"] == [["vine"]]
  fields, raw = _imeta(ev)
  assert "x" not in fields and "blurhash" not in fields
  assert [e for e in raw if e.startswith("fallback ")] == [
      "fallback https://api.openvine.co/media/1751085897568-0fd41442"]
  row = rows.parse_row({"vineId": VINE, "username": "Bo", "description": ""})
  assert _tags(nip71_event.build_short_video_event(short_video_item().replace(row=row), now=5))[
      "title"] == [["Vine by Bo"]]
  untitled = short_video_item(row=False, old_tags=[["d", VINE], ["url", "https://x.example/v.mp4"]])
  assert _tags(nip71_event.build_short_video_event(untitled, now=5))["title"] == [["Vine " + VINE]]


@pytest.mark.parametrize("value,expected", [
    ("6", "6"), ("6.5", "6.5"), ("6.999", "6.999"), ("7", "6"), ("7.0", "6"), ("60", "6"),
    ("0", "6"), ("-1", "6"), ("nan", "6"), ("inf", "6"), ("six", "6"), (None, "6"),
    ("5.25", "5.25")])
def test_duration_is_always_a_number_below_seven(value, expected):
  assert nip71_event.clip_duration(value) == expected


def test_replaces_earlier_34236_version_with_a_later_created_at():
  earlier = signed_event([["d", VINE], ["title", "v1"]], kind=34236, created_at=2500000000)
  ev = nip71_event.build_short_video_event(short_video_item(video=earlier), now=2100000000)
  assert ev["created_at"] == 2500000001
  ev = nip71_event.build_short_video_event(short_video_item(video=earlier), now=2600000000)
  assert ev["created_at"] == 2600000000
