"""Text safety: what may travel between steps, into files and into signed events.

One home for the character classes the pipeline refuses or cleans:

* lone surrogates (from JSON escapes like "\\ud800"), which no UTF-8 encoder
  accepts: Beam's coders, output files and BigQuery would crash on them;
* C0 control characters other than tab, newline and return, on which Nostr
  serialisers and relays disagree.

Also the one ISO-8601 timestamp format of dead letters, monitor lines and logs, and the
one JSON text form of output lines, journal records and payloads (`sorted_json`).
No Beam import: clients use it too.
"""

import datetime
import json
import re
from typing import Any, Optional

LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# C0 controls other than \t \n \r.
C0_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Either of the two: one pass over a text finds everything an event check could refuse.
SUSPECT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def surrogate_free(value: str, replacement: str = "\ufffd") -> str:
  """The text with each lone surrogate replaced (they cannot be encoded as UTF-8)."""
  return LONE_SURROGATE.sub(replacement, value)


def clean_text(value: str) -> str:
  """Drops C0 controls other than tab/newline/return and replaces lone surrogates.

  Serialisers and relays disagree on both, so they never reach a signed event.
  """
  if SUSPECT_TEXT.search(value) is None:  # the common case: one scan, no copies
    return value
  return surrogate_free(C0_CONTROL.sub("", value))


def json_safe(obj: Any) -> Any:
  """obj with lone surrogates in any string written as the text `\\udXXX`.

  JSON escapes like "\\ud800" decode to lone surrogates, which no UTF-8 encoder
  (Beam's coders, output files, BigQuery) accepts: a record holding one would
  crash the step that writes it. Payloads of dead letters go through this.
  """
  if isinstance(obj, str):
    return LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), obj)
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
    return bool(LONE_SURROGATE.search(obj))
  if isinstance(obj, (list, tuple)):
    return any(has_surrogate(v) for v in obj)
  if isinstance(obj, dict):
    return any(has_surrogate(k) or has_surrogate(v) for k, v in obj.items())
  return False


def utc_now_iso(at: Optional[float] = None) -> str:
  """ISO-8601 UTC to the millisecond: of now, or of the unix time `at`."""
  moment = (datetime.datetime.now(datetime.timezone.utc) if at is None
            else datetime.datetime.fromtimestamp(at, datetime.timezone.utc))
  return moment.isoformat(timespec="milliseconds")


# json.dumps with any option builds a new encoder on every call: this one is made once.
_SORTED_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, default=str)


def sorted_json(value: Any) -> str:
  """JSON text with sorted keys, non-ASCII kept and str() of anything else (every output)."""
  return _SORTED_JSON.encode(value)
