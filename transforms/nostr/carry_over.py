"""What a new version of a vine's event keeps from the previous one: pure functions.

A new version never loses a value the previous version carried because today's row
lacks it: `parse_row` makes a NULL, a negative count or a timestamp outside Vine's
lifetime None, and None never replaces a value. Only a present, valid row value
replaces the old one. The builders (`video_event`, `short_video_event`) take their
metadata tags from `merged_metadata` and their hashtags from `merged_hashtags`;
BuildVideoEvent counts `kept_names` as `values_kept_from_previous`.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from transforms.core.records import VineRow
from transforms.nostr.event import first_tag_value

# Tag name -> VineRow field, in the order the builders write them.
METADATA_FIELDS = (("published_at", "created_timestamp"), ("loops", "loops"),
                   ("likes", "likes"), ("comments", "comment_count"),
                   ("reposts", "repost_count"), ("username", "username"))
_MAX_INT64 = 2 ** 63 - 1


def valid_value(name: str, value: Any) -> Optional[str]:
  """`value` as a tag value when it is valid for `name`, else None.

  Numbers (published_at and the counts) are non-negative integers; a username is a
  non-blank string.
  """
  if value is None or isinstance(value, bool):
    return None
  if name == "username":
    return value if isinstance(value, str) and value.strip() else None
  if type(value) is int:  # the common case (a parsed row), without the text round trip
    return str(value) if 0 <= value <= _MAX_INT64 else None
  text = str(value).strip()
  if not (text.isascii() and text.isdigit()) or int(text) > _MAX_INT64:
    return None
  return str(int(text))


def previous_value(name: str, previous: Sequence[Dict[str, Any]]) -> Optional[str]:
  """The first valid `name` value among the previous events' tags (newest address first)."""
  for event in previous:
    value = valid_value(name, first_tag_value(event.get("tags") or [], name))
    if value is not None:
      return value
  return None


def merged_metadata(row: Optional[VineRow], previous: Sequence[Dict[str, Any]]
                    ) -> Tuple[Dict[str, Optional[str]], Tuple[str, ...]]:
  """(tag name -> value, names kept from `previous` although a row exists).

  Args:
    row: today's metadata row, or None (no row: every value comes from `previous`).
    previous: the vine's current events, the one this version replaces first.

  Returns:
    Each metadata tag's value (None: neither the row nor a previous version has one),
    and the names whose value came from `previous` because the row lacked it.
  """
  values: Dict[str, Optional[str]] = {}
  kept: List[str] = []
  for name, field in METADATA_FIELDS:
    new = valid_value(name, getattr(row, field)) if row is not None else None
    if new is not None:
      values[name] = new
      continue
    values[name] = previous_value(name, previous)
    if row is not None and values[name] is not None:
      kept.append(name)
  return values, tuple(kept)


def merged_hashtags(row: Optional[VineRow], previous: Sequence[Dict[str, Any]]) -> List[str]:
  """The row's hashtags when it has any, else the first previous event's `t` tags."""
  if row is not None and row.hashtags:
    return list(row.hashtags)
  for event in previous:
    tags = [tag[1] for tag in event.get("tags") or [] if len(tag) >= 2 and tag[0] == "t"]
    if tags:
      return tags
  return []


def hashtags_kept(row: Optional[VineRow], previous: Sequence[Dict[str, Any]]) -> bool:
  """True when a row exists without hashtags and the previous version's are kept."""
  return row is not None and not row.hashtags and bool(merged_hashtags(None, previous))


def kept_names(row: Optional[VineRow], previous: Sequence[Dict[str, Any]]) -> Tuple[str, ...]:
  """Every value a new version keeps from `previous` because the row lacks it."""
  names = merged_metadata(row, previous)[1]
  return names + (("t",) if hashtags_kept(row, previous) else ())
