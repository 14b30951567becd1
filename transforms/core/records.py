"""The records that travel between stages, and the pure functions that make them.

A vine starts as a BigQuery row (VineRow) and/or a relay event (SourceEvent). The
join turns each into one WorkItem, which every later stage enriches and passes on.
Every WorkItem ends in exactly one terminal outcome: published, skipped (with a
reason) or dead-lettered (see transforms/runtime/outcomes.py). Ids are in
`ids.py`, text safety in `text.py`, the parsing of metadata rows in `rows.py`.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from transforms.core.ids import STREAM_UID_RE, is_vine_id, openvine_id_from_url
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

# Skip reasons (terminal, named).
SKIP_NO_EVENT = "no_event"
SKIP_NO_VINE_ID = "no_vine_id"
SKIP_NO_OPENVINE_ID = "no_openvine_id"
SKIP_UP_TO_DATE = "up_to_date"


class BadInput(ValueError):
  """Input that can never be processed as it is; becomes a bad_input dead letter."""


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
  # The thumbnail URL ComputeBlurhash fetched and decoded as a real image in this run:
  # VerifyUrls takes it as working without asking again, then clears it.
  thumbnail_seen: Optional[str] = None

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


def row_from_dict(d: Dict[str, Any]) -> VineRow:
  """Rebuilds a VineRow from VineRow.to_dict() (replay payloads)."""
  fields = {f.name for f in dataclasses.fields(VineRow)}
  values = {k: v for k, v in d.items() if k in fields}
  values["hashtags"] = tuple(values.get("hashtags") or ())
  values["notes"] = tuple(values.get("notes") or ())
  return VineRow(**values)


# ---------------------------------------------------------------------------
# Events.
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
