"""The run's journal: an append-only record written while the run goes, so that a crash leaves one.

The NDJSON outputs and summary.json are written when a bounded run ends (Beam's file sinks
finalise at the end), so a run killed with SIGKILL, or by a full disk, would leave no record of
what it did. The journal is written as things happen:

* PublishEvents writes `sending` (vine id, event ids, relays) before a vine's events go to the
  relays, and `published` or `not_published` once they answered: after a kill, a `sending`
  without an outcome names a vine whose new version may have reached a relay;
* every dead letter and skip is journaled as it is made (transforms/runtime/outcomes.py calls
  `made`; dead letters without their payload);
* the driver (pipeline/run_record.py) writes `run` (run id, flags) first and `end` (finished or
  stopped, and why) last.

Layout: `<run dir>/journal/<host>-<pid>.ndjson`, one file per process (in-process runs have
one; multi_processing workers one each). Every line is written with one `os.write` on a file
opened with O_APPEND, under a process-wide lock: a line is whole in the kernel as soon as it is
written, so it survives SIGKILL of the process (not a power cut: there is no fsync per line).
PublishEvents hands its lines over in batches (`PublishJournal.flush`), every `sending` before
the events it names go to the relays.

Where: the driver names the run folder in the environment variable JOURNAL_ENV for the time of
a local bounded run (`activate`); the stages of that process and of the worker processes it
starts (multi_processing mode inherits the environment) journal there when the folder exists on
their machine. Dataflow workers have neither the variable nor the folder: there the BigQuery
tables (--dead-letter-table, --results-table) are the record.
"""

import glob
import json
import logging
import os
import socket
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from transforms.core.text import sorted_json, utc_now_iso
from transforms.io.local_files import JOURNAL_DIR

_LOG = logging.getLogger(__name__)

# What a line records (its "what" field).
RUN = "run"
SENDING = "sending"
PUBLISHED = "published"
NOT_PUBLISHED = "not_published"
DEAD_LETTER = "dead_letter"
SKIPPED = "skipped"
END = "end"

JOURNAL_ENV = "VINE_MIGRATION_JOURNAL_DIR"
MAX_ERROR_CHARS = 300  # the dead letter itself holds the whole (capped) error


class Journal:
  """One process's journal file of one run: whole lines appended, each on its own."""

  def __init__(self, path: str):
    self.path = path
    self._lock = threading.Lock()
    self._fd: Optional[int] = None
    self._broken = False

  def write(self, what: str, **fields: Any) -> None:
    """Appends one record at once; a journal that cannot be written is logged once, never raised."""
    self.write_lines([self.line(what, **fields)])

  @staticmethod
  def line(what: str, **fields: Any) -> bytes:
    """One record as its NDJSON line (for `write_lines`)."""
    record = {"what": what, "t": utc_now_iso(), "pid": os.getpid()}
    record.update(fields)
    return (sorted_json(record) + "\n").encode("utf-8")

  def write_lines(self, lines: Sequence[bytes]) -> None:
    """Appends whole lines with one system call (each one is a GIL hand-over on a busy
    process: PublishEvents hands its lines over in batches)."""
    if not lines:
      return
    data = b"".join(lines)
    with self._lock:
      if self._broken:
        return
      try:
        if self._fd is None:
          os.makedirs(os.path.dirname(self.path), exist_ok=True)
          self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        while data:
          data = data[os.write(self._fd, data):]
      except OSError as exc:  # a full disk must not fail the run: the outputs still come
        self._broken = True
        _LOG.warning("journal %s cannot be written (%s): journaling stops", self.path, exc)

  def close(self) -> None:
    with self._lock:
      if self._fd is not None:
        os.close(self._fd)
        self._fd = None


_journals: Dict[Tuple[str, int], Journal] = {}
_journals_lock = threading.Lock()


def journal_path(run_dir: str) -> str:
  """This process's journal file under run_dir."""
  return os.path.join(run_dir, JOURNAL_DIR, "%s-%d.ndjson" % (socket.gethostname(), os.getpid()))


def open_journal(run_dir: Optional[str] = None) -> Optional[Journal]:
  """The process's journal of the run; None when there is none here.

  Args:
    run_dir: The run folder; default the one the driver named in JOURNAL_ENV.

  Returns:
    The journal shared by every stage of the process (one file, one lock; a forked
    child gets its own), or None without a run folder on this machine.
  """
  run_dir = run_dir or os.environ.get(JOURNAL_ENV)
  if not run_dir:
    return None
  key = (run_dir, os.getpid())
  journal = _journals.get(key)
  if journal is not None:
    return journal
  if "://" in run_dir or not os.path.isdir(run_dir):
    return None
  with _journals_lock:
    return _journals.setdefault(key, Journal(journal_path(run_dir)))


def activate(run_dir: str) -> Optional[Journal]:
  """Names run_dir as the journal's folder for this process and its workers (the driver)."""
  os.environ[JOURNAL_ENV] = run_dir
  return open_journal(run_dir)


def deactivate() -> None:
  """Ends journaling in this process (end of a run): closes the files, forgets the folder."""
  os.environ.pop(JOURNAL_ENV, None)
  with _journals_lock:
    journals = list(_journals.values())
    _journals.clear()
  for journal in journals:
    journal.close()


def made(what: str, record: Dict[str, Any]) -> None:
  """Journals a dead letter or skip as it is made (transforms/runtime/outcomes.py)."""
  journal = open_journal()
  if journal is not None:
    fields = dead_letter_entry(record) if what == DEAD_LETTER else dict(record)
    journal.write(what, **fields)


class PublishJournal:
  """What PublishEvents journals, in batches: a no-op when the run has no journal here.

  Lines wait in memory until `flush`, which PublishEvents calls before it hands events to
  the relay connections (so every `sending` is on disk before its events can go out) and
  at the end of each bundle. A kill loses at most the outcomes since the last flush: their
  vines then read as sent without an answer (in doubt), never as not sent.
  """

  def __init__(self):
    self._journal = open_journal()
    self._lines: List[bytes] = []

  def _add(self, what: str, **fields: Any) -> None:
    if self._journal is not None:
      self._lines.append(self._journal.line(what, **fields))

  def sending(self, item, relays: Sequence[str]) -> None:
    self._add(SENDING, vine_id=item.vine_id, event_ids=[event["id"] for event in item.outgoing],
              relays=list(relays))

  def published(self, record: Dict[str, Any]) -> None:
    self._add(PUBLISHED, vine_id=record["vine_id"], event_id=record["event_id"],
              previous_event_id=record["previous_event_id"], stream_uid=record["stream_uid"],
              relays=record["relays"])

  def not_published(self, item, error_class: str, error: str) -> None:
    self._add(NOT_PUBLISHED, vine_id=item.vine_id, error_class=error_class,
              error=error[:MAX_ERROR_CHARS])

  def flush(self) -> None:
    if self._journal is not None and self._lines:
      lines, self._lines = self._lines, []
      self._journal.write_lines(lines)


def dead_letter_entry(dead: Dict[str, Any]) -> Dict[str, Any]:
  """What the journal keeps of a dead letter: everything but the payload, the error cut."""
  entry = {k: v for k, v in dead.items() if k != "payload"}
  entry["error"] = str(entry.get("error") or "")[:MAX_ERROR_CHARS]
  return entry


# ---------------------------------------------------------------------------
# Reading a journal back (pipeline/run_outputs.py, pipeline/report.py).


def read_journal(run_dir: str) -> Tuple[List[Dict[str, Any]], int]:
  """(records of every journal file of the run in time order, lines that are not JSON)."""
  records, bad = [], 0
  for path in sorted(glob.glob(os.path.join(run_dir, JOURNAL_DIR, "*.ndjson"))):
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError:
          bad += 1  # a line cut by a full disk
          continue
        if isinstance(record, dict) and "what" in record:
          records.append(record)
        else:
          bad += 1
  records.sort(key=lambda r: str(r.get("t") or ""))  # ISO-8601 UTC strings sort by time
  return records, bad


def what_it_saw(records: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
  """The journal's story of a run.

  Returns:
    {"run": the `run` record or None, "end": the `end` record or None, "published": {vine
    id: its `published` record}, "in_doubt": sorted vine ids sent without an answer (their
    new version may be on a relay), "not_published": {vine id: record}, "dead_letters":
    [...], "skipped": [...], "first": time, "last": time}.
  """
  seen: Dict[str, Any] = {"run": None, "end": None, "published": {}, "not_published": {},
                          "dead_letters": [], "skipped": [], "first": None, "last": None}
  sent = set()
  for record in records:
    what = record.get("what")
    seen["first"] = seen["first"] or record.get("t")
    seen["last"] = record.get("t") or seen["last"]
    if what in (RUN, END):
      seen[what] = record
    elif what == SENDING:
      sent.add(record.get("vine_id"))
    elif what in (PUBLISHED, NOT_PUBLISHED):
      seen[what][record.get("vine_id")] = record
    elif what == DEAD_LETTER:
      seen["dead_letters"].append(record)
    elif what == SKIPPED:
      seen["skipped"].append(record)
  answered = set(seen[PUBLISHED]) | set(seen[NOT_PUBLISHED])
  seen["in_doubt"] = sorted(str(v) for v in sent - answered)
  return seen
