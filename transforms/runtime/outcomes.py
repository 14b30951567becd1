"""Dead letters: one row shape for every stage, built by one function.

Building a dead letter also counts it by error class (`dead_letter_class_<class>`):
every dead letter is made here, so the class counts cannot miss a path. The stage
counters (`accounting.dead_lettered`) stay with the callers, which own the accounting.

A dead letter holds what a replay needs (the payload) and never a secret: payloads
are built from WorkItem.to_payload() or from the raw public input, and every error
text passes through sanitise() first (registered secret values, Authorization
headers, bearer tokens and nsec keys removed).
"""

import datetime
import json
import re
from typing import Any, Dict, Optional

from transforms.runtime import accounting

from transforms.clients import secrets as secret_values

# Tag names of the outputs every risky DoFn may emit besides its main output.
DEAD_LETTER = "dead_letter"
SKIPPED = "skipped"
MONITOR = "monitor"

# Stages (the `stage` column), in pipeline order; replay resumes at the failed one.
STAGE_READ_ROWS = "read_rows"
STAGE_READ_EVENTS = "read_events"
STAGE_JOIN = "join"
STAGE_MIGRATE = "migrate"
STAGE_BLURHASH = "blurhash"
STAGE_BUILD = "build"
STAGE_SIGN = "sign"
STAGE_PUBLISH = "publish"
STAGES = (STAGE_READ_ROWS, STAGE_READ_EVENTS, STAGE_JOIN, STAGE_MIGRATE, STAGE_BLURHASH,
          STAGE_BUILD, STAGE_SIGN, STAGE_PUBLISH)

# Error classes (the `error_class` column).
TRANSIENT_EXHAUSTED = "transient_exhausted"
PERMANENT = "permanent"
BAD_INPUT = "bad_input"
CONFIG = "config"
ERROR_CLASSES = (TRANSIENT_EXHAUSTED, PERMANENT, BAD_INPUT, CONFIG)

MAX_ERROR_CHARS = 2000

# BigQuery schema of the dead-letter table; local NDJSON rows have the same fields.
SCHEMA_FIELDS = (
    ("run_id", "STRING", "REQUIRED"),
    ("stage", "STRING", "REQUIRED"),
    ("vine_id", "STRING", "NULLABLE"),
    ("event_id", "STRING", "NULLABLE"),
    ("error_class", "STRING", "REQUIRED"),
    ("error", "STRING", "NULLABLE"),
    ("attempts", "INTEGER", "NULLABLE"),
    ("first_failure", "TIMESTAMP", "NULLABLE"),
    ("last_failure", "TIMESTAMP", "NULLABLE"),
    ("payload", "STRING", "NULLABLE"),
    ("replay_of", "STRING", "NULLABLE"),
)

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\n]+")
_NSEC = re.compile(r"(?i)nsec1[0-9a-z]{20,}")


def utc_now_iso(at: Optional[float] = None) -> str:
  """ISO-8601 UTC to the millisecond: of now, or of the unix time `at`."""
  moment = (datetime.datetime.now(datetime.timezone.utc) if at is None
            else datetime.datetime.fromtimestamp(at, datetime.timezone.utc))
  return moment.isoformat(timespec="milliseconds")


def sanitise(text: Any) -> str:
  """Error text safe to store: no secret, Authorization header, bearer token or nsec, bounded.

  Args:
    text: An error message or exception.

  Returns:
    The text with every value registered in `secret_values` replaced, header and
    bearer values and nsec keys masked, at most MAX_ERROR_CHARS characters.
  """
  text = secret_values.redact(str(text))
  text = _AUTH_HEADER.sub(r"\1***", text)
  text = _BEARER.sub(r"\1***", text)
  text = _NSEC.sub("nsec1***", text)
  return text[:MAX_ERROR_CHARS]


def make_dead_letter(run_id: str,
                     stage: str,
                     error_class: str,
                     error: Any,
                     *,
                     vine_id: Optional[str] = None,
                     event_id: Optional[str] = None,
                     attempts: int = 1,
                     first_failure: Optional[str] = None,
                     last_failure: Optional[str] = None,
                     payload: Optional[Dict[str, Any]] = None,
                     replay_of: Optional[str] = None) -> Dict[str, Any]:
  """The one dead-letter row shape. `payload` must be public data (never a key).

  Counts `dead_letter_class_<error_class>` once per row: call it once per dead letter.
  """
  if stage not in STAGES:
    raise ValueError("unknown stage %r" % stage)
  if error_class not in ERROR_CLASSES:
    raise ValueError("unknown error class %r" % error_class)
  accounting.dead_letter_class(error_class)
  now = utc_now_iso()
  return {
      "run_id": run_id,
      "stage": stage,
      "vine_id": vine_id,
      "event_id": event_id,
      "error_class": error_class,
      "error": sanitise(error),
      "attempts": int(attempts),
      "first_failure": first_failure or now,
      "last_failure": last_failure or first_failure or now,
      "payload": json.dumps(payload, ensure_ascii=False, sort_keys=True,
                            default=str) if payload is not None else None,
      "replay_of": replay_of,
  }


def dead_letter_for_item(run_id: str, stage: str, error_class: str, error: Any, item,
                         **kwargs) -> Dict[str, Any]:
  """A dead letter for a WorkItem, with its replay payload."""
  return make_dead_letter(run_id, stage, error_class, error, vine_id=item.vine_id,
                          event_id=item.event_id, payload=item.to_payload(), **kwargs)


def make_skip(stage: str, reason: str, vine_id: Optional[str],
              event_id: Optional[str]) -> Dict[str, Any]:
  """A skipped item: terminal, with a named reason."""
  return {"stage": stage, "reason": reason, "vine_id": vine_id, "event_id": event_id}


def bigquery_schema() -> Dict[str, Any]:
  return {"fields": [{"name": n, "type": t, "mode": m} for n, t, m in SCHEMA_FIELDS]}


class StopRun(RuntimeError):
  """A configuration error that must stop the whole run (e.g. the API refused the token).

  Raised out of the DoFn on purpose: burning the whole corpus into dead letters
  would help nobody.
  """
