"""Building the kind 32222 replacement event: tag order and values, trimming, up-to-date checks."""

from transforms.core import records, rows
from transforms.nostr import video_event as event_builder
from transforms.nostr.event import Signer, generate_private_key, validate_event

UID = "0123456789abcdef0123456789abcdef"


def _event(tags, content="old", created_at=1750000000, signer=None):
  signer = signer or Signer(generate_private_key())
  return signer.sign({"kind": 32222, "created_at": created_at, "tags": tags, "content": content})


def _item(row=True, blurhash="LKO2?U%2Tw=w]~RBVZRi};RPxuwH", old_tags=None):
  old = _event(old_tags or [["d", "MYxVapFvz2z"], ["title", "Rescued Vine video"],
                            ["url", "https://api.openvine.co/media/1751085897568-0fd41442"],
                            ["dim", "480x480"], ["t", "vine"]], created_at=2000000000)
  vine_row = rows.parse_row({
      "vineId": "MYxVapFvz2z", "username": "Ann 🎉", "description": "hello  #World",
      "loops": 10, "likes": 0, "comment_count": None, "repost_count": 2,
      "created_timestamp": 1400000000}) if row else None
  urls = {"uid": UID, "hls": "https://cdn/h.m3u8", "dash": "https://cdn/d.mpd",
          "mp4": "https://cdn/v.mp4", "thumbnail": "https://cdn/t.jpg",
          "animated_thumbnail": "https://cdn/t.gif"}
  return records.WorkItem(vine_id="MYxVapFvz2z", source=records.to_source_event(old), row=vine_row,
                          openvine_id="1751085897568-0fd41442", migration=urls, blurhash=blurhash)


def test_build_event_tags_in_seed_order_and_values():
  item = _item()
  ev = event_builder.build_video_event(item, now=1000)
  names = [t[0] for t in ev["tags"]]
  assert names == ["d", "title", "url", "streaming", "r", "thumb", "preview", "vine_id",
                   "stream_uid", "published_at", "loops", "likes", "reposts", "username", "t",
                   "client", "migration", "imeta"]
  tags = {t[0]: t[1:] for t in ev["tags"]}
  assert tags["title"] == ["hello #World"]
  assert tags["streaming"] == ["https://cdn/h.m3u8", "hls"]
  assert tags["r"] == ["https://cdn/v.mp4", "download"]
  assert tags["published_at"] == ["1400000000"] and tags["likes"] == ["0"]
  assert "comments" not in tags  # NULL count: no tag
  assert tags["t"] == ["world"]
  assert tags["migration"] == ["openvine-to-stream", UID]
  assert tags["imeta"][:4] == ["url https://cdn/v.mp4", "m video/mp4", "dim 480x480", "duration 6"]
  assert "blurhash LKO2?U%2Tw=w]~RBVZRi};RPxuwH" in tags["imeta"]
  assert ev["content"] == "hello  #World"
  # created_at = max(now, old + 1)
  assert ev["created_at"] == 2000000001
  assert all(isinstance(v, str) for t in ev["tags"] for v in t)


def test_build_event_without_row_keeps_old_metadata_and_no_blurhash():
  ev = event_builder.build_video_event(_item(row=False, blurhash=None), now=3000000000)
  tags = {t[0]: t[1:] for t in ev["tags"]}
  assert ev["created_at"] == 3000000000
  assert tags["t"] == ["vine"] and "published_at" not in tags
  assert not any(v.startswith("blurhash") for v in tags["imeta"])


def test_long_and_hostile_text_trimmed_and_cleaned():
  item = _item()
  row = rows.parse_row({"vineId": "MYxVapFvz2z", "description": "x\x01y" + "é" * 100000,
                           "username": "a\ud800b"})
  ev = event_builder.build_video_event(item.replace(row=row), now=1)
  for tag in ev["tags"]:
    for value in tag:
      assert len(value.encode("utf-8")) <= event_builder.MAX_TAG_BYTES
      assert "\x01" not in value and "\ud800" not in value
  assert "\x01" not in ev["content"]
  signed = Signer(generate_private_key()).sign(ev)
  assert validate_event(signed) is None


def test_up_to_date_detects_unchanged_republish():
  item = _item()
  signer = Signer(generate_private_key())
  first = signer.sign(event_builder.build_video_event(item, now=2100000000))
  again = item.replace(source=records.to_source_event(first))
  rebuilt = event_builder.build_video_event(again, now=2200000000)
  assert event_builder.is_up_to_date(first, rebuilt)
  assert not event_builder.is_up_to_date(item.source.event, rebuilt)
  urls = event_builder.existing_urls(first)
  assert urls["mp4"] == "https://cdn/v.mp4" and urls["blurhash"] == item.blurhash
  assert urls["dash"] == "https://cdn/d.mpd"


def test_url_is_the_mp4_when_no_stream_works():
  from tests.support.short_video import short_video_item
  item = short_video_item()
  urls = dict(item.migration, hls=None, dash=None)
  event = event_builder.build_video_event(item.replace(migration=urls), 1800000000)
  tags = {t[0]: t for t in event["tags"]}
  assert tags["url"][1] == urls["mp4"]
  assert "streaming" not in tags
  imeta = tags["imeta"]
  assert not any(e.endswith((".m3u8", ".mpd")) for e in imeta)
