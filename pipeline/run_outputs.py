"""A finished run's output files, read, and the questions asked of them (pure functions).

`load_run` reads what one run wrote under `<output-dir>/<run-id>/` (summary.json, the
NDJSON files, monitor.log) through Beam's FileSystems, so `gs://` works too; missing
files and lines that are not JSON are recorded, never raised. `totals`, `top_errors`,
`select_dead`, `recent_failures`, `vine_status` and `migrated_counts` answer the
seed's debug recipes; pipeline/report.py prints them.
"""

import collections
import dataclasses
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from transforms.io import journal
from transforms.io.local_files import (
  DEAD_LETTERS_FILE,
  MONITOR_FILE,
  PROGRESS_FILE,
  PUBLISHED_FILE,
  RUN_LOG_FILE,
  SKIPPED_FILE,
  SUMMARY_FILE,
)
from transforms.runtime.accounting import SEED_STATS

OUTPUT_FILES = (SUMMARY_FILE, DEAD_LETTERS_FILE, SKIPPED_FILE, PUBLISHED_FILE, MONITOR_FILE)
# Files a run writes while it goes (pipeline/run_record.py): they mark a run folder too.
RECORD_FILES = (PROGRESS_FILE, RUN_LOG_FILE)

TIMING_KEYS = ("started_at", "finished_at", "seconds", "events_per_second", "event_kind")

# Normalisation of error texts, applied in this order: each volatile part becomes a
# placeholder so that the same failure of many vines groups into one message.
_NORMALISERS = (
    (re.compile(r"\b(?:wss?|https?|gs)://[^\s,;'\")\]]+"), "<url>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?"),
     "<time>"),
    (re.compile(r"\b\d{13}-[0-9a-f]{8}\b"), "<openvine_id>"),
    (re.compile(r"\b(?:npub|nsec|note)1[0-9a-z]{20,}\b"), "<bech32>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<uid>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),
    (re.compile(r"\b\d+\.\d+\b"), "<n>"),
    (re.compile(r"\b\d{4,}\b"), "<n>"),  # small numbers (HTTP status, attempts) stay
)



class ReportError(Exception):
  """The run cannot be found or read; the message says what to do."""


@dataclasses.dataclass
class RunOutputs:
  """What one run wrote, as read from its directory.

  Attributes:
    run_dir: The run directory.
    summary: summary.json, or None when missing or unreadable.
    dead: dead letters; skipped; published: records of the NDJSON files.
    monitor: lines of monitor.log.
    missing: output files that are not there.
    bad_lines: {file: lines that are not JSON objects}.
    journal: what the run's journal saw (transforms/io/journal.py what_it_saw), or None.
    from_journal: the dead letters, skips and published vines come from the journal (the
      run did not write its files).
  """

  run_dir: str
  summary: Optional[Dict[str, Any]] = None
  dead: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  skipped: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  published: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  monitor: List[str] = dataclasses.field(default_factory=list)
  missing: List[str] = dataclasses.field(default_factory=list)
  bad_lines: Dict[str, int] = dataclasses.field(default_factory=dict)
  journal: Optional[Dict[str, Any]] = None
  from_journal: bool = False

  @property
  def finished(self) -> bool:
    """Whether the run says it finished (a summary that is not `stopped`)."""
    return self.summary is not None and self.summary.get("status", "finished") == "finished"

  @property
  def run_id(self) -> str:
    if self.summary and self.summary.get("run_id"):
      return str(self.summary["run_id"])
    return os.path.basename(self.run_dir.rstrip("/"))


# ---------------------------------------------------------------------------
# Finding and reading a run.


def join_path(base: str, *parts: str) -> str:
  """A path under base: FileSystems.join for remote (gs://) paths, os.path.join else."""
  return FileSystems.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def _exists(path: str) -> bool:
  try:
    return FileSystems.exists(path)
  except Exception:  # pylint: disable=broad-except
    return False


def _read_text(path: str) -> Optional[str]:
  """The file's text, or None when it does not exist."""
  if not _exists(path):
    return None
  try:
    with FileSystems.open(path) as f:
      return f.read().decode("utf-8", errors="replace")
  except (OSError, IOError) as exc:
    raise ReportError("cannot read %s: %s" % (path, exc)) from None


def is_run_dir(path: str) -> bool:
  return any(_exists(join_path(path, name))
             for name in OUTPUT_FILES + RECORD_FILES + (journal.JOURNAL_DIR,))


def list_runs(output_dir: str) -> List[Tuple[str, float]]:
  """(run dir, newest output mtime) of every run under output_dir, newest first.

  A run's age is the modification time of its newest output file (summary.json is
  written last); equal times fall back to the run id, which starts with its UTC start.
  """
  newest: Dict[str, float] = {}
  patterns = [join_path(output_dir, "*", name) for name in OUTPUT_FILES + RECORD_FILES]
  try:
    results = FileSystems.match(patterns)
  except Exception:  # pylint: disable=broad-except
    results = []
  for result in results:
    for meta in result.metadata_list:
      parent = meta.path[:meta.path.rstrip("/").rfind("/")]
      mtime = float(getattr(meta, "last_updated_in_seconds", 0.0) or 0.0)
      newest[parent] = max(newest.get(parent, 0.0), mtime)
  if "://" not in output_dir and os.path.isdir(output_dir):
    for entry in os.scandir(output_dir):  # a run that stopped before writing anything
      if entry.is_dir() and entry.path not in newest and not entry.name.startswith("."):
        newest[entry.path] = 0.0
  return sorted(newest.items(), key=lambda kv: (kv[1], os.path.basename(kv[0])), reverse=True)


def find_run_dir(output_dir: str, run_id: Optional[str] = None) -> str:
  """The run directory to report on.

  Args:
    output_dir: The pipeline's --output-dir, or one run's directory.
    run_id: A run id under output_dir; absent: the newest run.

  Returns:
    The run directory.

  Raises:
    ReportError: Nothing to report on (the message says why).
  """
  output_dir = output_dir.rstrip("/") or "/"
  if run_id:
    path = join_path(output_dir, run_id)
    if _exists(path) or is_run_dir(path):
      return path
    if os.path.basename(output_dir) == run_id and is_run_dir(output_dir):
      return output_dir
    raise ReportError("no run %s under %s" % (run_id, output_dir))
  if is_run_dir(output_dir):
    return output_dir
  if "://" not in output_dir and not os.path.isdir(output_dir):
    raise ReportError("%s does not exist (give the pipeline's --output-dir)" % output_dir)
  runs = list_runs(output_dir)
  if not runs:
    raise ReportError("no runs under %s (no directory with %s)"
                      % (output_dir, ", ".join(OUTPUT_FILES)))
  return runs[0][0]


def parse_ndjson(text: str) -> Tuple[List[Dict[str, Any]], int]:
  """(records, count of lines that are not JSON objects) of NDJSON text."""
  records, bad = [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      bad += 1
      continue
    if isinstance(record, dict):
      records.append(record)
    else:
      bad += 1
  return records, bad


def load_run(run_dir: str) -> RunOutputs:
  """Reads every output file of a run; missing files are listed, never raised."""
  run = RunOutputs(run_dir=run_dir)
  text = _read_text(join_path(run_dir, SUMMARY_FILE))
  if text is None:
    run.missing.append(SUMMARY_FILE)
  else:
    try:
      summary = json.loads(text)
      run.summary = summary if isinstance(summary, dict) else None
    except ValueError:
      run.summary = None
    if run.summary is None:
      run.bad_lines[SUMMARY_FILE] = 1
  for name, attr in ((DEAD_LETTERS_FILE, "dead"), (SKIPPED_FILE, "skipped"),
                     (PUBLISHED_FILE, "published")):
    text = _read_text(join_path(run_dir, name))
    if text is None:
      run.missing.append(name)
      continue
    records, bad = parse_ndjson(text)
    setattr(run, attr, records)
    if bad:
      run.bad_lines[name] = bad
  text = _read_text(join_path(run_dir, MONITOR_FILE))
  if text is None:
    run.missing.append(MONITOR_FILE)
  else:
    run.monitor = [line for line in text.splitlines() if line.strip()]
  _read_journal(run)
  return run


def _read_journal(run: RunOutputs) -> None:
  """Adds the journal of a local run; its records stand in for the files the run never wrote."""
  if "://" in run.run_dir or not os.path.isdir(join_path(run.run_dir, journal.JOURNAL_DIR)):
    return
  records, bad = journal.read_journal(run.run_dir)
  if bad:
    run.bad_lines[journal.JOURNAL_DIR] = bad
  run.journal = journal.what_it_saw(records)
  if run.finished or DEAD_LETTERS_FILE not in run.missing:
    return
  run.from_journal = True
  run.dead = [dict(r) for r in run.journal["dead_letters"]]
  run.skipped = [dict(r) for r in run.journal["skipped"]]
  run.published = [dict(r) for r in run.journal["published"].values()]


# ---------------------------------------------------------------------------
# Questions (pure functions of a RunOutputs).


def _count_by(records: Iterable[Dict[str, Any]], key: str) -> Dict[str, int]:
  counts = collections.Counter(str(r.get(key)) for r in records)
  return dict(sorted(counts.items()))


def totals(run: RunOutputs) -> Dict[str, Any]:
  """The run's accounting: from summary.json, or from the files when it is missing.

  Returns:
    {"source", "vines_in", "published", "skipped", "dead_lettered", "dead_letter_classes",
    "balanced", "stats", "timing", "checks"}; `checks` lists disagreements between
    summary.json and the files.
  """
  classes = _count_by(run.dead, "error_class")
  files_dead = _count_by(run.dead, "stage")
  files_skipped = _count_by(run.skipped, "reason")
  summary = run.summary
  checks = []
  if summary is None:
    published = len(run.published)
    dead_sum = len(run.dead) + sum(files_skipped.values()) + published
    return {"source": "journal" if run.from_journal else "files", "vines_in": None, "published": published,
            "skipped": files_skipped, "dead_lettered": files_dead,
            "dead_letter_classes": classes, "balanced": None, "accounted": dead_sum,
            "stats": {}, "timing": {}, "checks": checks}
  counters = summary.get("counters") or {}
  dead_by_stage = dict(summary.get("dead_lettered") or {})
  if run.finished and DEAD_LETTERS_FILE not in run.missing and files_dead != dead_by_stage:
    checks.append("dead letters by stage: summary.json says %s, %s holds %s"
                  % (json.dumps(dead_by_stage), DEAD_LETTERS_FILE, json.dumps(files_dead)))
  if PUBLISHED_FILE not in run.missing and len(run.published) != summary.get("published"):
    checks.append("published: summary.json says %s, %s holds %d"
                  % (summary.get("published"), PUBLISHED_FILE, len(run.published)))
  summary_classes = summary.get("dead_letter_classes")
  if summary_classes and DEAD_LETTERS_FILE not in run.missing and summary_classes != classes:
    checks.append("dead letters by class: summary.json says %s, %s holds %s"
                  % (json.dumps(summary_classes), DEAD_LETTERS_FILE, json.dumps(classes)))
  return {
      "source": SUMMARY_FILE,
      "vines_in": summary.get("vines_in"),
      "published": summary.get("published"),
      "skipped": dict(summary.get("skipped") or {}),
      "dead_lettered": dead_by_stage,
      "dead_letter_classes": classes if DEAD_LETTERS_FILE not in run.missing
                             else dict(summary_classes or {}),
      "balanced": summary.get("balanced"),
      "accounted": summary.get("accounted"),
      "stats": {k: counters[k] for k in SEED_STATS if k in counters},
      "timing": {k: summary[k] for k in TIMING_KEYS if summary.get(k) is not None},
      "checks": checks,
  }


def normalise_error(text: Any, known: Sequence[Optional[str]] = ()) -> str:
  """An error text with its volatile parts replaced, so equal failures group together.

  Args:
    text: A dead letter's `error`.
    known: Values to replace wherever they appear (the dead letter's vine id).

  Returns:
    The text with URLs, times, OpenVine ids, event ids, Stream uids, long hex,
    decimals and numbers of 4 or more digits replaced by placeholders; small
    numbers (HTTP statuses, attempts) are kept.
  """
  text = " ".join(str(text or "").split())
  for value in known:
    if value and len(value) >= 4:
      text = text.replace(value, "<vine_id>")
  for pattern, placeholder in _NORMALISERS:
    text = pattern.sub(placeholder, text)
  return text


def top_errors(dead: Sequence[Dict[str, Any]], limit: int = 10) -> List[Dict[str, Any]]:
  """The most frequent (stage, class, normalised error), most frequent first."""
  groups: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
  for record in dead:
    message = normalise_error(record.get("error"), (record.get("vine_id"),))
    key = (str(record.get("stage")), str(record.get("error_class")), message)
    group = groups.get(key)
    if group is None:
      group = groups[key] = {"count": 0, "stage": key[0], "error_class": key[1],
                             "message": message, "example_vine_id": record.get("vine_id"),
                             "example_event_id": record.get("event_id")}
    group["count"] += 1
    if not group["example_vine_id"] and record.get("vine_id"):
      group["example_vine_id"] = record.get("vine_id")
  ranked = sorted(groups.values(), key=lambda g: (-g["count"], g["stage"], g["message"]))
  return ranked[:limit] if limit else ranked


def select_dead(dead: Sequence[Dict[str, Any]], error_class: Optional[str] = None,
                stage: Optional[str] = None) -> List[Dict[str, Any]]:
  """The dead letters of a class and/or stage, in file order, without their payloads."""
  chosen = []
  for record in dead:
    if error_class and record.get("error_class") != error_class:
      continue
    if stage and record.get("stage") != stage:
      continue
    chosen.append({k: record.get(k) for k in ("vine_id", "event_id", "stage", "error_class",
                                              "attempts", "last_failure", "error")})
  return chosen


def _when(record: Dict[str, Any]) -> str:
  return str(record.get("last_failure") or record.get("first_failure") or "")


def recent_failures(dead: Sequence[Dict[str, Any]], n: int) -> List[Dict[str, Any]]:
  """The n newest dead letters by last_failure (ISO-8601 UTC strings sort by time)."""
  ranked = sorted(dead, key=_when, reverse=True)[:max(0, n)]
  return [{"last_failure": _when(r), "stage": r.get("stage"), "error_class": r.get("error_class"),
           "vine_id": r.get("vine_id"), "event_id": r.get("event_id"),
           "attempts": r.get("attempts"), "error": r.get("error")} for r in ranked]


def _matches_id(record: Dict[str, Any], key: str) -> bool:
  return key in (record.get("vine_id"), record.get("event_id"), record.get("previous_event_id"))


def vine_status(run: RunOutputs, key: str) -> Dict[str, Any]:
  """Everything the run's files say about one vine id (or event id).

  Returns:
    {"key", "status" (published, skipped, dead_lettered, several or not_found),
    "published": [...], "skipped": [...], "dead_lettered": [...], "monitor": [...]}.
  """
  published = [{k: r.get(k) for k in ("vine_id", "event_id", "previous_event_id", "stream_uid",
                                      "relays", "newly_migrated", "notes", "published_at")}
               for r in run.published if _matches_id(r, key)]
  skipped = [dict(r) for r in run.skipped if _matches_id(r, key)]
  dead = [{k: r.get(k) for k in ("vine_id", "event_id", "stage", "error_class", "error",
                                 "attempts", "first_failure", "last_failure", "replay_of")}
          for r in run.dead if _matches_id(r, key)]
  monitor = [line for line in run.monitor if key in line.split(",")]
  found = [name for name, rows in (("published", published), ("skipped", skipped),
                                   ("dead_lettered", dead)) if rows]
  status = found[0] if len(found) == 1 else ("several" if found else "not_found")
  return {"key": key, "status": status, "published": published, "skipped": skipped,
          "dead_lettered": dead, "monitor": monitor}


def migrated_counts(run: RunOutputs) -> Dict[str, Any]:
  """The seed's "count migrated": monitor.log lines and published.ndjson flags."""
  kinds = collections.Counter(line.split(",", 1)[0] for line in run.monitor)
  return {
      "monitor_migrated": kinds.get("MIGRATED", 0),
      "monitor_republished": kinds.get("REPUBLISHED", 0),
      "published_newly_migrated": sum(1 for r in run.published if r.get("newly_migrated")),
      "published": len(run.published),
      "published_replayed": sum(1 for r in run.published
                                if any(str(n).startswith("replay_of=")
                                       for n in r.get("notes") or ())),
  }
