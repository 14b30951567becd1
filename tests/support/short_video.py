"""Work items for kind 34236 (NIP-71) tests: an old 32222 event, a row, the API's URLs."""

from transforms.core import records, rows
from transforms.nostr.event import Signer, generate_private_key

UID = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32
VINE = "MYxVapFvz2z"
SIGNER = Signer(generate_private_key())


def signed_event(tags, kind=32222, content="old", created_at=1750000000):
  """An event signed by SIGNER."""
  return SIGNER.sign({"kind": kind, "created_at": created_at, "tags": tags, "content": content})


def short_video_item(row=True, old_tags=None, video=None, blurhash="LKO2?U%2Tw=w]~RBVZRi};RPxuwH",
                     sha256=SHA):
  """A work item of VINE: an old 32222 event, a row (or none), the API's URLs."""
  old = signed_event(old_tags or [["d", VINE], ["title", "Rescued Vine video"],
                                  ["url", "https://api.openvine.co/media/1751085897568-0fd41442"],
                                  ["dim", "480x480"], ["duration", "6.5"], ["t", "vine"],
                                  ["loops", "77"], ["published_at", "1390000000"]],
                     created_at=2000000000)
  vine_row = rows.parse_row({
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
