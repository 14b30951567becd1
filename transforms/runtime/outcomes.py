"""How an item's way through the stages ends, besides being published: dead letters and skips.

One row shape each, built by one function each (`make_dead_letter`, `make_skip`), and
making one counts it: a dead letter by stage (`dead_letters_<stage>`, what the balance
check adds up) and by error class (`dead_letter_class_<class>`), a skip by reason
(`skipped_<reason>`). Every dead letter and skip is made here, so no call site can
forget a counter or count one twice; making one also journals it when the run has a
journal (transforms/io/journal.py). Also: the output tags every risky DoFn may emit,
and StopRun, the error that ends a whole run.

A dead letter holds what a replay needs (the payload) and never a secret: payloads
are built from WorkItem.to_payload() or from the raw public input, and every error
text passes through `secrets.scrub` first (registered secret values, Authorization
headers, bearer tokens and nsec keys removed). A payload is capped at MAX_PAYLOAD_BYTES:
a larger one (a 30 MB garbage rows line) is replaced by its head and a note saying it was
cut (`cap_payload`), so one bad input never becomes a dead letter as big as itself.
"""

import json
import logging
import threading
from typing import Any, Dict, Optional

import apache_beam as beam

from transforms.clients import secrets as secret_values
from transforms.core.ids import record_id
from transforms.core.text import sorted_json, utc_now_iso
from transforms.io import journal
from transforms.runtime import accounting

# Tag names of the outputs every risky DoFn may emit besides its main output. A stage's
# DoFn declares the ones it emits in its OUTPUTS, and `tagged` applies them.
DEAD_LETTER = "dead_letter"
SKIPPED = "skipped"
MONITOR = "monitor"

# Stages (the `stage` column), in pipeline order; replay resumes at the failed one.
STAGE_READ_ROWS = "read_rows"
STAGE_READ_EVENTS = "read_events"
STAGE_JOIN = "join"
STAGE_MIGRATE = "migrate"
STAGE_BLURHASH = "blurhash"
STAGE_VERIFY = "verify"
STAGE_BUILD = "build"
STAGE_SIGN = "sign"
STAGE_PUBLISH = "publish"
STAGES = (STAGE_READ_ROWS, STAGE_READ_EVENTS, STAGE_JOIN, STAGE_MIGRATE, STAGE_BLURHASH,
          STAGE_VERIFY, STAGE_BUILD, STAGE_SIGN, STAGE_PUBLISH)

# Error classes (the `error_class` column).
TRANSIENT_EXHAUSTED = "transient_exhausted"
PERMANENT = "permanent"
BAD_INPUT = "bad_input"
CONFIG = "config"
ERROR_CLASSES = (TRANSIENT_EXHAUSTED, PERMANENT, BAD_INPUT, CONFIG)

MAX_ERROR_CHARS = 2000
# The largest payload a dead letter stores, in UTF-8 bytes of its JSON text (a BigQuery
# row is at most a few MB, and no replay payload of a real vine comes near this).
MAX_PAYLOAD_BYTES = 256 * 1024
# Keys of a payload that was cut (replay refuses it: it has no `event`).
PAYLOAD_CUT = "payload_cut"

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
    ("record_id", "STRING", "NULLABLE"),
)


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

  Counts the dead letter by stage and by error class: call it once per dead letter,
  and only for an item that ends here.
  """
  if stage not in STAGES:
    raise ValueError("unknown stage %r" % stage)
  if error_class not in ERROR_CLASSES:
    raise ValueError("unknown error class %r" % error_class)
  accounting.count_dead_letter(stage, error_class)
  now = utc_now_iso()
  payload_text = cap_payload(sorted_json(payload)) if payload is not None else None
  # Without a vine or event id (a bad input line), the payload tells two records apart.
  unique = (vine_id, event_id) if vine_id or event_id else (payload_text,)
  row = {
      "run_id": run_id,
      "stage": stage,
      "vine_id": vine_id,
      "event_id": event_id,
      "error_class": error_class,
      "error": secret_values.scrub(str(error))[:MAX_ERROR_CHARS],
      "attempts": int(attempts),
      "first_failure": first_failure or now,
      "last_failure": last_failure or first_failure or now,
      "payload": payload_text,
      "replay_of": replay_of,
      "record_id": record_id(run_id, stage, *unique),
  }
  journal.made(journal.DEAD_LETTER, row)
  return row


def cap_payload(text: str, limit: int = MAX_PAYLOAD_BYTES) -> str:
  """A payload's JSON text as stored: itself, or when over `limit` bytes a note that it was cut.

  The note is JSON too: {"payload_cut": true, "payload_bytes": N, "head": the first
  characters of the original text}, the whole note within `limit` bytes.
  """
  size = len(text.encode("utf-8"))
  if size <= limit:
    return text
  # JSON escaping at most doubles a character's bytes here (a quote or a backslash);
  # a UTF-8 character is at most 4 bytes: a head of limit / 8 characters always fits.
  head = text[:max(0, (limit - 200) // 8)]
  return json.dumps({PAYLOAD_CUT: True, "payload_bytes": size, "head": head},
                    ensure_ascii=False, sort_keys=True)


def dead_letter_for_item(run_id: str, stage: str, error_class: str, error: Any, item,
                         **kwargs) -> Dict[str, Any]:
  """A dead letter for a WorkItem, with its replay payload."""
  return make_dead_letter(run_id, stage, error_class, error, vine_id=item.vine_id,
                          event_id=item.event_id, payload=item.to_payload(), **kwargs)


MAX_MONITOR_ERROR_CHARS = 500


def monitor_failed(dead: Dict[str, Any]) -> str:
  """The seed's monitor line FAILED,{vine_id},{stage},{error_class},{error} of a dead letter.

  The error is the last field (it may hold commas), on one line and cut to
  MAX_MONITOR_ERROR_CHARS; the dead letter has the rest. Its text was scrubbed when made.
  """
  error = " ".join(str(dead.get("error") or "").split())[:MAX_MONITOR_ERROR_CHARS]
  return "FAILED,%s,%s,%s,%s" % (dead.get("vine_id") or "", dead.get("stage") or "",
                                 dead.get("error_class") or "", error)


def make_skip(stage: str, reason: str, vine_id: Optional[str],
              event_id: Optional[str]) -> Dict[str, Any]:
  """A skipped item: terminal, with a named reason; counts `skipped_<reason>`."""
  accounting.count_skip(reason)
  row = {"stage": stage, "reason": reason, "vine_id": vine_id, "event_id": event_id}
  journal.made(journal.SKIPPED, row)
  return row


def tagged(fn: beam.DoFn) -> beam.ParDo:
  """`fn` as a ParDo with its main output ("main") and the tagged outputs it declares.

  The stage's contract lives with its DoFn (`fn.OUTPUTS`), not in the graph.
  """
  return beam.ParDo(fn).with_outputs(*fn.OUTPUTS, main="main")


class StopRun(RuntimeError):
  """A configuration error that must stop the whole run (e.g. the API refused the token).

  Raised out of the DoFn on purpose: burning the whole corpus into dead letters
  would help nobody.
  """


class ConfigLatch:
  """A streaming stage's first configuration error in this worker process: reported once.

  In streaming, raising `StopRun` out of a DoFn makes Dataflow retry the bundle forever
  and the stream stalls with no word to the operator. A stage that runs in streaming
  trips its latch instead: one ERROR line and one counter per process, no more calls,
  and every item after that a dead letter of class `config` (the job is drained and
  restarted with the fix; docs/streaming.md).
  """

  def __init__(self, stage_label: str, consequence: str, counter: str):
    self._stage_label = stage_label
    self._consequence = consequence
    self._counter = counter
    self._lock = threading.Lock()
    self.reason: Optional[str] = None

  def trip(self, error: Any) -> str:
    """Records the first error (logged once, counted once) and returns the reason."""
    with self._lock:
      if self.reason is None:
        text = ("%s: %s" % (type(error).__name__, error)
                if isinstance(error, BaseException) else str(error))
        self.reason = (text.splitlines() or [""])[0][:300]
        logging.getLogger(__name__).error(
            "%s: configuration error, no more calls from this worker process; %s until the "
            "job is drained and restarted with the fix (docs/streaming.md): %s",
            self._stage_label, self._consequence, secret_values.scrub(self.reason))
        accounting.inc(self._counter)
      return self.reason

  def reset(self) -> None:  # tests
    with self._lock:
      self.reason = None
