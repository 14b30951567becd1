"""BuildVideoEvent: the republished kind 32222 event, as a pure function.

Tags follow the seed design's order. Numbers are strings, no tag carries an empty
or null value, and tag values longer than MAX_TAG_BYTES are trimmed at a character
boundary with an ellipsis (strfry and others refuse values over 1,024 bytes). The
content is trimmed the same way to MAX_CONTENT_BYTES (a Vine caption is at most 140
characters), at most MAX_HASHTAGS `t` tags are kept, and the whole event is kept
under MAX_EVENT_BYTES (relays commonly refuse events over 64 KiB): `t` tags are
dropped from the end, then the content is trimmed further. Tags of the old event
that the seed does not list (an `expiration` among them) are not carried over.
"""

import json
from typing import Any, Dict, List, Optional

from transforms.core.ids import OPENVINE_MEDIA_URL, usable_openvine_id
from transforms.core.records import MIGRATION_NAME, MIGRATION_TAG, VIDEO_KIND, WorkItem
from transforms.core.text import clean_text
from transforms.nostr.carry_over import METADATA_FIELDS, merged_hashtags, merged_metadata
from transforms.nostr.event import first_tag_value

CLIENT_NAME = "divine.video"
MAX_TAG_BYTES = 1024
MAX_CONTENT_BYTES = 16 * 1024
MAX_HASHTAGS = 64
# Serialised size budget; id, pubkey, sig and field names add about 250 bytes.
MAX_EVENT_BYTES = 60 * 1024
_EVENT_OVERHEAD = 400
MAX_TITLE_CHARS = 100
DEFAULT_DIM = "480x480"
DEFAULT_DURATION = "6"
_ELLIPSIS = "\u2026"
# Tags that identify the video's place and must survive republishing unchanged.
PLACEHOLDER_TITLES = ("rescued vine video", "untitled", "")


def trim_utf8(value: str, max_bytes: int = MAX_TAG_BYTES) -> str:
  """Trims to at most max_bytes of UTF-8 at a character boundary, ending in an ellipsis."""
  if len(value) * 4 <= max_bytes:  # no character takes more than 4 bytes: fits, unencoded
    return value
  raw = value.encode("utf-8", "surrogatepass")
  if len(raw) <= max_bytes:
    return value
  budget = max_bytes - len(_ELLIPSIS.encode("utf-8"))
  cut = raw[:budget].decode("utf-8", "ignore")
  return cut + _ELLIPSIS


def video_title(item: WorkItem) -> Optional[str]:
  """The old title unless it is a placeholder, else the caption's start, else the old title."""
  old_title = first_tag_value(item.source.event["tags"], "title")
  description = (item.row.description if item.row else None) or ""
  description = " ".join(description.split())
  if old_title and old_title.strip().lower() not in PLACEHOLDER_TITLES:
    return old_title
  if description:
    return description[:MAX_TITLE_CHARS]
  return old_title or None


def imeta_field(tags: List[List[str]], name: str) -> Optional[str]:
  """The value of the first `name <value>` entry of the first imeta tag that has one."""
  for tag in tags:
    if tag and tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith(name + " "):
          return entry[len(name) + 1:]
  return None


def add_tag(tags: List[List[str]], name: str, *values: Any) -> None:
  """Appends a tag, cleaned and trimmed, unless one of its values is empty or None."""
  if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
    return
  tags.append([name] + [trim_utf8(clean_text(str(v))) for v in values])


def build_video_event(item: WorkItem, now: int) -> Dict[str, Any]:
  """The unsigned replacement event for a migrated item.

  Args:
    item: a WorkItem whose `migration` holds normalised URLs (uid, hls, dash, mp4,
      thumbnail, animated_thumbnail) and, optionally, a row and a blurhash.
    now: the current unix time; created_at = max(now, old.created_at + 1) so that the
      new version replaces the old one on every relay.

  Returns:
    A dict with kind, created_at, tags, content (no pubkey, id or sig).
  """
  old = item.source.event
  old_tags = old["tags"]
  urls = item.migration or {}
  row = item.row
  uid = urls.get("uid")
  d_value = first_tag_value(old_tags, "d") or item.vine_id
  description = (row.description if row and row.description else None)
  content = description if description is not None else old.get("content", "")

  tags: List[List[str]] = []
  add_tag(tags, "d", d_value)
  add_tag(tags, "title", video_title(item))
  # The best working video URL: HLS, else the MP4 (the CDN answers 410 for HLS since Oct
  # 2025, and VerifyUrls leaves only working URLs), else DASH.
  add_tag(tags, "url", best_video_url(urls))
  add_tag(tags, "streaming", urls.get("hls"), "hls")
  add_tag(tags, "r", urls.get("mp4"), "download")
  add_tag(tags, "thumb", urls.get("thumbnail"))
  add_tag(tags, "preview", urls.get("animated_thumbnail"))
  add_tag(tags, "vine_id", item.vine_id)
  add_tag(tags, "stream_uid", uid)
  # A value the row lacks (NULL, out of range) keeps the old event's (carry_over).
  values, _ = merged_metadata(row, [old])
  for name, _field in METADATA_FIELDS:
    add_tag(tags, name, values[name])
  for hashtag in merged_hashtags(row, [old])[:MAX_HASHTAGS]:
    add_tag(tags, "t", hashtag)
  add_tag(tags, "client", CLIENT_NAME)
  add_tag(tags, MIGRATION_TAG, MIGRATION_NAME, uid)

  dim = first_tag_value(old_tags, "dim") or imeta_field(old_tags, "dim") or DEFAULT_DIM
  duration = (first_tag_value(old_tags, "duration") or imeta_field(old_tags, "duration")
              or DEFAULT_DURATION)
  # The OpenVine source stays in the event as a last imeta fallback: it is where the
  # video came from, and what --force-remigrate sends the API again.
  source = (OPENVINE_MEDIA_URL % item.openvine_id
            if usable_openvine_id(item.openvine_id) else None)
  imeta = ["imeta"]
  for key, value in (("url", urls.get("mp4")), ("m", "video/mp4"), ("dim", dim),
                     ("duration", duration), ("blurhash", item.blurhash),
                     ("image", urls.get("thumbnail")), ("fallback", urls.get("hls")),
                     ("fallback", urls.get("dash")), ("fallback", source),
                     ("alt", " ".join((description or "").split())
                      or imeta_field(old_tags, "alt"))):
    if value is not None and str(value).strip():
      imeta.append(trim_utf8(clean_text("%s %s" % (key, value))))
  if len(imeta) > 2:
    tags.append(imeta)

  created_at = max(int(now), int(old["created_at"]) + 1)
  tags, text = fit_event_size(tags, trim_utf8(clean_text(content or ""), MAX_CONTENT_BYTES))
  return {"kind": VIDEO_KIND, "created_at": created_at, "tags": tags, "content": text}


def best_video_url(urls: Dict[str, Any]) -> Optional[str]:
  """The `url` tag's value: HLS when there is one, else the MP4, else DASH."""
  return urls.get("hls") or urls.get("mp4") or urls.get("dash")


def _event_bytes(tags: List[List[str]], content: str) -> int:
  body = json.dumps([tags, content], ensure_ascii=False, separators=(",", ":"))
  return len(body.encode("utf-8")) + _EVENT_OVERHEAD


def fit_event_size(tags: List[List[str]], content: str, max_bytes: int = MAX_EVENT_BYTES):
  """Drops `t` tags from the end, then trims the content, until the event fits max_bytes."""
  size = _event_bytes(tags, content)
  if size <= max_bytes:
    return tags, content
  tags = list(tags)
  while size > max_bytes:
    last_t = max((i for i, tag in enumerate(tags) if tag[0] == "t"), default=None)
    if last_t is None:
      break
    del tags[last_t]
    size = _event_bytes(tags, content)
  while size > max_bytes and content:
    # JSON escaping can make a byte of text cost up to 6: trim by the overshoot, at least.
    budget = max(0, len(content.encode("utf-8")) - (size - max_bytes) - 4)
    content = trim_utf8(content, budget) if budget > 4 else ""
    size = _event_bytes(tags, content)
  return tags, content


def is_up_to_date(old_event: Dict[str, Any], new_unsigned: Dict[str, Any]) -> bool:
  """True when republishing would change nothing but created_at and the signature."""
  return (old_event.get("tags") == new_unsigned["tags"]
          and old_event.get("content") == new_unsigned["content"]
          and old_event.get("kind") == new_unsigned["kind"])


def existing_urls(event: Dict[str, Any]) -> Dict[str, Optional[str]]:
  """URLs an already-migrated event carries, in the normalised shape of migration_contract."""
  tags = event["tags"]
  hls = None
  mp4 = None
  for tag in tags:
    if len(tag) >= 3 and tag[0] == "streaming" and tag[2] == "hls":
      hls = hls or tag[1]
    if len(tag) >= 3 and tag[0] == "r" and tag[2] == "download":
      mp4 = mp4 or tag[1]
  dash = None
  for tag in tags:
    if tag and tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith("fallback ") and entry.endswith(".mpd"):
          dash = entry[len("fallback "):]
  return {
      "hls": hls,
      "dash": dash,
      "mp4": mp4 or imeta_field(tags, "url"),
      "thumbnail": first_tag_value(tags, "thumb") or imeta_field(tags, "image"),
      "animated_thumbnail": first_tag_value(tags, "preview"),
      "blurhash": imeta_field(tags, "blurhash"),
  }
