"""The records that travel between stages, and the pure functions that make them.

A vine starts as a BigQuery row (VineRow) and/or a relay event (SourceEvent). The
join turns each into one WorkItem, which every later stage enriches and passes on.
Every WorkItem ends in exactly one terminal outcome: published, skipped (with a
reason) or dead-lettered (see dead_letters.py).
"""

import dataclasses
import math
import re
import unicodedata
from typing import Any, Dict, List, Optional, Tuple

from transforms.core import hashtags as hashtags_lib
from transforms.nostr.event import first_tag_value, tag_values

VIDEO_KIND = 32222
# NIP-71 addressable short vertical video: what current divine.video clients read.
SHORT_VIDEO_KIND = 34236
# --event-kind choices: what each vine gets published as.
KIND_32222 = "32222"
KIND_34236 = "34236"
KIND_BOTH = "both"
MIGRATION_TAG = "migration"
MIGRATION_NAME = "openvine-to-stream"

# Vine post ids: 11 characters of [0-9A-Za-z]. `\Z`, not `$`: `$` also matches
# before a trailing newline, and "b9KOOWX7HUx\n" is not a Vine id.
VINE_ID_RE = re.compile(r"^[0-9A-Za-z]{11}\Z")
STREAM_UID_RE = re.compile(r"^[0-9a-f]{32}\Z")
# OpenVine ids are `{13-digit epoch ms}-{8 hex}`; take everything after /media/ up to /?#.
OPENVINE_MEDIA_URL = "https://api.openvine.co/media/%s"
_OPENVINE_URL_RE = re.compile(r"^https?://(?:api|apt)\.openvine\.co/media/([^/?#\s]+)")
OPENVINE_ID_RE = re.compile(r"^[0-9]{13}-[0-9a-f]{8}\Z")
# What the migration API may be sent as videoId: the strict shape above, or a
# permissive one that still cannot walk a path (no leading dot, so no `.` or `..`).
_OPENVINE_USABLE_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")

# Vine ran 2013-01-24 .. 2017-01-17; allow 2012 test posts and the last stragglers.
MIN_VINE_TS = 1325376000  # 2012-01-01
MAX_VINE_TS = 1514764799  # 2017-12-31

# Skip reasons (terminal, named).
SKIP_NO_EVENT = "no_event"
SKIP_NO_VINE_ID = "no_vine_id"
SKIP_NO_OPENVINE_ID = "no_openvine_id"
SKIP_UP_TO_DATE = "up_to_date"


class BadInput(ValueError):
  """Input that can never be processed as it is; becomes a bad_input dead letter."""


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def surrogate_free(value: str, replacement: str = "\ufffd") -> str:
  """The text with each lone surrogate replaced (they cannot be encoded as UTF-8)."""
  return _LONE_SURROGATE.sub(replacement, value)


def json_safe(obj: Any) -> Any:
  """obj with lone surrogates in any string written as the text `\\udXXX`.

  JSON escapes like "\\ud800" decode to lone surrogates, which no UTF-8 encoder
  (Beam's coders, output files, BigQuery) accepts: a record holding one would
  crash the step that writes it. Payloads of dead letters go through this.
  """
  if isinstance(obj, str):
    return _LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), obj)
  if isinstance(obj, list):
    return [json_safe(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(json_safe(v) for v in obj)
  if isinstance(obj, dict):
    return {json_safe(k): json_safe(v) for k, v in obj.items()}
  return obj


def has_surrogate(obj: Any) -> bool:
  """True if any string in obj (keys included) holds a lone surrogate."""
  if isinstance(obj, str):
    return bool(_LONE_SURROGATE.search(obj))
  if isinstance(obj, (list, tuple)):
    return any(has_surrogate(v) for v in obj)
  if isinstance(obj, dict):
    return any(has_surrogate(k) or has_surrogate(v) for k, v in obj.items())
  return False


@dataclasses.dataclass(frozen=True)
class VineRow:
  """One row of the seed's BigQuery query, typed and cleaned."""
  vine_id: str
  username: Optional[str] = None
  description: Optional[str] = None
  loops: Optional[int] = None
  likes: Optional[int] = None
  comment_count: Optional[int] = None
  repost_count: Optional[int] = None
  created_timestamp: Optional[int] = None
  hashtags: Tuple[str, ...] = ()
  notes: Tuple[str, ...] = ()

  def to_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d["hashtags"] = list(self.hashtags)
    d["notes"] = list(self.notes)
    return d


@dataclasses.dataclass(frozen=True)
class SourceEvent:
  """A verified event read from the relays (kind 32222, or 34236 for `WorkItem.video`)."""
  event: Dict[str, Any]
  vine_id: Optional[str]
  openvine_ids: Tuple[str, ...] = ()
  migrated_uid: Optional[str] = None  # set when it already carries our migration tags
  # Relays that were read and do not hold this version (an older one, or none).
  missing_on: Tuple[str, ...] = ()

  @property
  def key(self) -> Tuple[str, str]:
    return (self.event["pubkey"], first_tag_value(self.event["tags"], "d") or "")


@dataclasses.dataclass(frozen=True)
class WorkItem:
  """One vine under one author's key, as it moves through the stages."""
  vine_id: str
  source: SourceEvent
  row: Optional[VineRow] = None
  openvine_id: Optional[str] = None
  migration: Optional[Dict[str, Any]] = None  # normalised URLs, uid, api_status
  newly_migrated: bool = False
  blurhash: Optional[str] = None
  unsigned: Optional[Dict[str, Any]] = None  # the kind 32222 replacement
  signed: Optional[Dict[str, Any]] = None
  notes: Tuple[str, ...] = ()
  # --event-kind 34236|both: the author's current 34236 version at the same address
  # (None when there is none yet), and the new one.
  video: Optional[SourceEvent] = None
  unsigned_video: Optional[Dict[str, Any]] = None
  signed_video: Optional[Dict[str, Any]] = None

  @property
  def event_id(self) -> str:
    return self.source.event.get("id", "")

  @property
  def pubkey(self) -> str:
    return self.source.event.get("pubkey", "")

  @property
  def outgoing(self) -> Tuple[Dict[str, Any], ...]:
    """The signed events this item publishes: the 32222 replacement and/or the 34236."""
    return tuple(e for e in (self.signed, self.signed_video) if e is not None)

  def with_note(self, note: str) -> "WorkItem":
    return dataclasses.replace(self, notes=self.notes + (note,))

  def replace(self, **changes) -> "WorkItem":
    return dataclasses.replace(self, **changes)

  def to_payload(self) -> Dict[str, Any]:
    """What a replay needs to resume this item: public data only (never a key)."""
    return {
        "vine_id": self.vine_id,
        "event": self.source.event,
        "row": self.row.to_dict() if self.row else None,
        "openvine_id": self.openvine_id,
        "migration": self.migration,
        "blurhash": self.blurhash,
        "signed": self.signed,
        "video_event": self.video.event if self.video else None,
        "signed_video": self.signed_video,
        "notes": list(self.notes),
    }


# ---------------------------------------------------------------------------
# Rows.
_COUNT_TEXT = re.compile(r"^-?[0-9]{1,19}\Z")
MAX_INT64 = 2 ** 63 - 1


def _clean_count(value: Any, name: str, notes: List[str]) -> Optional[int]:
  """An INT64-range integer, or None (noted) for anything else.

  Accepts ints, integral finite floats (12.0) and decimal ASCII digit strings; a
  bool, 1.5, NaN, Infinity, "12abc", "1e5" or a list is `<name>_not_numeric`, a
  negative number `<name>_negative`.
  """
  if value is None or value == "":
    return None
  number = None
  if isinstance(value, bool):
    number = None
  elif isinstance(value, int):
    number = value
  elif isinstance(value, float):
    if math.isfinite(value) and value.is_integer():
      number = int(value)
  elif isinstance(value, str) and _COUNT_TEXT.match(value.strip()):
    number = int(value.strip())
  if number is None or number > MAX_INT64 or number < -MAX_INT64:
    notes.append("%s_not_numeric" % name)
    return None
  if number < 0:
    notes.append("%s_negative" % name)
    return None
  return number


def _clean_hashtag(value: Any) -> Optional[str]:
  """A hashtag from the row's own list: at least one letter or digit, no spaces or controls."""
  if not isinstance(value, str) or has_surrogate(value):
    return None
  tag = value.strip().lstrip("#").strip()
  if not tag or any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in tag):
    return None
  if not any(unicodedata.category(ch)[0] in ("L", "N") for ch in tag):
    return None
  return tag


def is_vine_id(value: Any) -> bool:
  return isinstance(value, str) and bool(VINE_ID_RE.match(value))


def parse_row(raw: Dict[str, Any]) -> VineRow:
  """Turns a BigQuery row (or its NDJSON form) into a VineRow.

  Counts that are negative or not numbers become None (noted, never published);
  timestamps outside Vine's lifetime become None. A vineId that is not a Vine id
  raises BadInput: it would otherwise reach URLs and relay filters.
  """
  if not isinstance(raw, dict):
    raise BadInput("row is not an object")
  vine_id = raw.get("vineId")
  if not is_vine_id(vine_id):
    raise BadInput("vineId is not an 11-character Vine id: %r" % (str(vine_id)[:40],))
  notes: List[str] = []
  description = raw.get("description")
  if description is not None and not isinstance(description, str):
    description = str(description)
  username = raw.get("username")
  if username is not None and not isinstance(username, str):
    username = str(username)
  # Lone surrogates (from "\\ud800" escapes) cannot travel between steps: cleaned here.
  if description is not None and has_surrogate(description):
    description = surrogate_free(description)
    notes.append("description_cleaned")
  if username is not None and has_surrogate(username):
    username = surrogate_free(username)
    notes.append("username_cleaned")
  created = _clean_count(raw.get("created_timestamp"), "created_timestamp", notes)
  if created is not None and not MIN_VINE_TS <= created <= MAX_VINE_TS:
    notes.append("created_timestamp_out_of_range")
    created = None
  given = raw.get("hashtags") or []
  if not isinstance(given, list):
    given = []
  cleaned = [t for t in map(_clean_hashtag, given) if t]
  if len(cleaned) != len(given):
    notes.append("hashtags_dropped")
  tags = hashtags_lib.merge(hashtags_lib.extract(description or ""), cleaned)
  return VineRow(
      vine_id=vine_id,
      username=username,
      description=description,
      loops=_clean_count(raw.get("loops"), "loops", notes),
      likes=_clean_count(raw.get("likes"), "likes", notes),
      comment_count=_clean_count(raw.get("comment_count"), "comment_count", notes),
      repost_count=_clean_count(raw.get("repost_count"), "repost_count", notes),
      created_timestamp=created,
      hashtags=tuple(tags),
      notes=tuple(notes))


def row_from_dict(d: Dict[str, Any]) -> VineRow:
  """Rebuilds a VineRow from VineRow.to_dict() (replay payloads)."""
  fields = {f.name for f in dataclasses.fields(VineRow)}
  values = {k: v for k, v in d.items() if k in fields}
  values["hashtags"] = tuple(values.get("hashtags") or ())
  values["notes"] = tuple(values.get("notes") or ())
  return VineRow(**values)


# ---------------------------------------------------------------------------
# Events.
def openvine_id_from_url(url: str) -> Optional[str]:
  match = _OPENVINE_URL_RE.match(url or "")
  return match.group(1) if match else None


def usable_openvine_id(value: Any) -> bool:
  """True for an id that is safe to send as videoId (the server puts it in a URL path)."""
  return isinstance(value, str) and bool(_OPENVINE_USABLE_RE.match(value))


def extract_openvine_ids(tags: List[List[str]]) -> Tuple[str, ...]:
  """OpenVine ids from `url`, `r`, imeta `url`, then imeta `fallback`, in that order, unique.

  A migrated event keeps its OpenVine source as an imeta fallback (event_builder).
  """
  candidates: List[str] = []
  candidates.extend(tag_values(tags, "url"))
  candidates.extend(tag_values(tags, "r"))
  fallbacks: List[str] = []
  for tag in tags:
    if tag and tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith("url "):
          candidates.append(entry[4:].strip())
        elif entry.startswith("fallback "):
          fallbacks.append(entry[len("fallback "):].strip())
  candidates.extend(fallbacks)
  found: List[str] = []
  for url in candidates:
    ov = openvine_id_from_url(url)
    if ov and ov not in found:
      found.append(ov)
  return tuple(found)


def extract_vine_id(tags: List[List[str]]) -> Optional[str]:
  """The Vine id from `d`, else from `vine_id`; junk like `openvine_17` is not one."""
  for name in ("d", "vine_id"):
    value = first_tag_value(tags, name)
    if is_vine_id(value):
      return value
  return None


def migrated_uid(tags: List[List[str]], kind: int = VIDEO_KIND) -> Optional[str]:
  """The Stream uid if the event already carries this migration's tags.

  Kind 32222 carries `["migration", name, uid]` and a matching `stream_uid`; a 34236
  event (NIP-71 has no stream_uid tag) carries the migration tag alone.
  """
  for tag in tags:
    if len(tag) >= 3 and tag[0] == MIGRATION_TAG and tag[1] == MIGRATION_NAME:
      uid = first_tag_value(tags, "stream_uid") if kind == VIDEO_KIND else tag[2]
      if uid and STREAM_UID_RE.match(uid) and uid == tag[2]:
        return uid
  return None


def to_source_event(event: Dict[str, Any]) -> SourceEvent:
  """Extracts ids from a verified event (validation happens before)."""
  tags = event["tags"]
  return SourceEvent(
      event=event,
      vine_id=extract_vine_id(tags),
      openvine_ids=extract_openvine_ids(tags),
      migrated_uid=migrated_uid(tags, event.get("kind", VIDEO_KIND)))


def newer(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
  """The version a relay keeps of two addressable events: highest created_at, then lowest id."""
  if a["created_at"] != b["created_at"]:
    return a if a["created_at"] > b["created_at"] else b
  return a if a["id"] <= b["id"] else b
