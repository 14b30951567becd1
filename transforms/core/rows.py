"""Vine metadata rows: a BigQuery row (or its NDJSON form) made into a typed VineRow.

Counts that are NULL, negative or not numbers become absent (noted, never
published); timestamps outside Vine's lifetime are dropped; hashtags are re-extracted
Unicode-aware and merged with the row's own list; lone surrogates are cleaned. A
vineId that is not a Vine id is BadInput: it would otherwise reach URLs and relay
filters.
"""

import math
import re
import unicodedata
from typing import Any, Dict, List, Optional

from transforms.core import hashtags as hashtags_lib
from transforms.core.ids import is_vine_id
from transforms.core.records import BadInput, VineRow
from transforms.core.text import has_surrogate, surrogate_free

# Vine ran 2013-01-24 .. 2017-01-17; allow 2012 test posts and the last stragglers.
MIN_VINE_TS = 1325376000  # 2012-01-01
MAX_VINE_TS = 1514764799  # 2017-12-31

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
