"""BuildShortVideoEvent: the NIP-71 kind 34236 event of a migrated vine, as a pure function.

Current divine.video clients read only kind 34236 (addressable short vertical video)
and ignore the seed's 32222. The 34236 event lives at its own address: same author
key, same `d` as the 32222 event, so that every vine has one 34236 version per author
that later runs replace (created_at strictly greater than the version a relay holds).

What clients need (../shared/reference/nostr.md): a `title` (NIP-71 and divine's relays
require one); an `imeta` (NIP-92: `url` plus at least one more field) whose `url` is the
MP4 (clients prefer .mp4; the CDN answers 410 for HLS manifests, so HLS is not offered),
`duration` below 7 (clients drop 7 and longer) and `image` (a thumbnail is required);
`published_at` as a string of unix seconds; `origin` naming the Vine post. The
migration tag marks the event as this migration's, so that re-runs reuse its uid.
"""

import re
from typing import Any, Dict, List, Optional

from transforms.core.ids import HEX64_RE, OPENVINE_MEDIA_URL, usable_openvine_id
from transforms.core.records import MIGRATION_NAME, MIGRATION_TAG, SHORT_VIDEO_KIND, WorkItem
from transforms.core.text import clean_text
from transforms.nostr.carry_over import merged_hashtags, merged_metadata
from transforms.nostr.event import first_tag_value
from transforms.nostr.video_event import (
  CLIENT_NAME,
  DEFAULT_DIM,
  DEFAULT_DURATION,
  MAX_CONTENT_BYTES,
  MAX_HASHTAGS,
  PLACEHOLDER_TITLES,
  add_tag,
  fit_event_size,
  imeta_field,
  trim_utf8,
  video_title,
)

VINE_URL = "https://vine.co/v/%s"
# Clients drop videos whose duration is 7 s or more; Vines are at most about 6.5 s.
MAX_DURATION = 7.0
_DIM = re.compile(r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}\Z")
_COUNTS = (("loops", "loops"), ("likes", "likes"), ("comments", "comment_count"),
           ("reposts", "repost_count"))


def clip_duration(value: Optional[str]) -> str:
  """A duration clients play: the old value when it is a number in (0, 7), else "6"."""
  try:
    seconds = float(value)
  except (TypeError, ValueError):
    return DEFAULT_DURATION
  if not 0 < seconds < MAX_DURATION:
    return DEFAULT_DURATION
  text = ("%.3f" % seconds).rstrip("0").rstrip(".")
  return text


def _dim(old_tags: List[List[str]]) -> str:
  dim = first_tag_value(old_tags, "dim") or imeta_field(old_tags, "dim")
  return dim if isinstance(dim, str) and _DIM.match(dim) else DEFAULT_DIM


def short_video_title(item: WorkItem) -> str:
  """Never empty: a real old title, else the caption, else "Vine by <username>", else
  the old placeholder title ("Untitled", ...), else "Vine <vine id>"."""
  title = video_title(item)
  if title and title.strip().lower() not in PLACEHOLDER_TITLES:
    return title
  username = item.row.username if item.row and item.row.username else None
  if username and username.strip():
    return "Vine by %s" % username
  return title if title and title.strip() else "Vine %s" % item.vine_id


def _imeta(item: WorkItem, urls: Dict[str, Any], old_tags: List[List[str]],
           alt: str) -> List[str]:
  source = (OPENVINE_MEDIA_URL % item.openvine_id
            if usable_openvine_id(item.openvine_id) else None)
  sha256 = urls.get("sha256") if HEX64_RE.match(urls.get("sha256") or "") else None
  duration = first_tag_value(old_tags, "duration") or imeta_field(old_tags, "duration")
  entries = (("url", urls.get("mp4")), ("m", "video/mp4"), ("dim", _dim(old_tags)),
             ("duration", clip_duration(duration)), ("blurhash", item.blurhash),
             ("image", urls.get("thumbnail")), ("x", sha256),
             ("fallback", urls.get("blossom")), ("fallback", source), ("alt", alt))
  imeta = ["imeta"]
  for key, value in entries:
    if value is not None and str(value).strip():
      imeta.append(trim_utf8(clean_text("%s %s" % (key, value))))
  return imeta


def previous_events(item: WorkItem) -> List[Dict[str, Any]]:
  """The versions a 34236 event replaces or derives from: its own address's, then the 32222."""
  return ([item.video.event] if item.video is not None else []) + [item.source.event]


def build_short_video_event(item: WorkItem, now: int) -> Dict[str, Any]:
  """The unsigned NIP-71 kind 34236 event of a migrated item.

  Args:
    item: a WorkItem whose `migration` holds normalised URLs (uid, mp4, thumbnail,
      optionally sha256 and blossom), optionally a row, a blurhash and `video`, the
      author's current 34236 version at this address.
    now: the current unix time; created_at = max(now, video.created_at + 1) so that
      the new version replaces the old one.

  Returns:
    A dict with kind, created_at, tags, content (no pubkey, id or sig).
  """
  old_tags = item.source.event["tags"]
  urls = item.migration or {}
  row = item.row
  d_value = first_tag_value(old_tags, "d") or item.vine_id
  description = row.description if row and row.description else None
  content = description if description is not None else item.source.event.get("content", "")
  title = short_video_title(item)
  caption = " ".join((description or "").split())
  alt = "Vine video: %s" % (caption or title)

  tags: List[List[str]] = []
  add_tag(tags, "d", d_value)
  add_tag(tags, "title", title)
  tags.append(_imeta(item, urls, old_tags, alt))
  # A value the row lacks (NULL, out of range) keeps the previous version's: this
  # address's 34236 first, then the 32222 event (carry_over).
  previous = previous_events(item)
  values, _ = merged_metadata(row, previous)
  add_tag(tags, "published_at", values["published_at"])
  for name, _ in _COUNTS:
    add_tag(tags, name, values[name])
  for hashtag in merged_hashtags(row, previous)[:MAX_HASHTAGS]:
    add_tag(tags, "t", hashtag)
  add_tag(tags, "origin", "vine", item.vine_id, VINE_URL % item.vine_id)
  add_tag(tags, "alt", alt)
  add_tag(tags, "client", CLIENT_NAME)
  add_tag(tags, MIGRATION_TAG, MIGRATION_NAME, urls.get("uid"))

  created_at = int(now)
  if item.video is not None:
    created_at = max(created_at, int(item.video.event["created_at"]) + 1)
  tags, text = fit_event_size(tags, trim_utf8(clean_text(content or ""), MAX_CONTENT_BYTES))
  return {"kind": SHORT_VIDEO_KIND, "created_at": created_at, "tags": tags, "content": text}


def short_video_urls(event: Dict[str, Any]) -> Dict[str, Optional[str]]:
  """URLs a migrated 34236 event carries, in the normalised shape of migration_contract."""
  tags = event["tags"]
  fallbacks = []
  for tag in tags:
    if tag and tag[0] == "imeta":
      fallbacks = [e[len("fallback "):] for e in tag[1:] if e.startswith("fallback ")]
      break
  blossom = next((u for u in fallbacks if "openvine.co/" not in u), None)
  sha256 = imeta_field(tags, "x")
  return {
      "mp4": imeta_field(tags, "url"),
      "thumbnail": imeta_field(tags, "image"),
      "blurhash": imeta_field(tags, "blurhash"),
      "sha256": sha256 if HEX64_RE.match(sha256 or "") else None,
      "blossom": blossom,
  }
