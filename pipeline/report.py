"""Reads a finished run's outputs and answers the usual questions about it.

    python -m pipeline.report --output-dir out                    # newest run under out/
    python -m pipeline.report --output-dir out --run-id RUN --class transient_exhausted
    python -m pipeline.report --output-dir out/RUN --vine-id 5npQaiwPS40
    python -m pipeline.report --output-dir out --recent 20 [--json]

Without a question it prints the totals of `summary.json` (in, published, skipped
by reason, dead-lettered by stage and, from `dead_letters.ndjson`, by error class),
the migrated counts (MIGRATED and REPUBLISHED lines of `monitor.log`, `newly_migrated`
in `published.ndjson`), the most frequent error messages (volatile parts such as
ids, numbers, URLs and times normalised) and the command that replays the run's
dead letters, rebuilt from the run's own flags (summary.json `argv`) when the run
recorded them. `--class` / `--stage` list the dead letters of a class or stage (and
narrow the replay command to them), `--vine-id` shows what happened to one vine (or
event id) in every output file, `--recent N` the newest failures.

These answer the seed's four debug recipes without jq or grep: progress (totals),
recent failures (`--recent`), count migrated, status of one vine id (`--vine-id`).
Missing or empty files are reported as such, never as a traceback. Paths go through
Beam's FileSystems, so a `gs://` output directory works too.
"""

import argparse
import collections
import dataclasses
import json
import logging
import os
import re
import shlex
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from transforms import dead_letters as dl

_LOG = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DEAD_LETTERS_FILE = "dead_letters.ndjson"
SKIPPED_FILE = "skipped.ndjson"
PUBLISHED_FILE = "published.ndjson"
MONITOR_FILE = "monitor.log"
OUTPUT_FILES = (SUMMARY_FILE, DEAD_LETTERS_FILE, SKIPPED_FILE, PUBLISHED_FILE, MONITOR_FILE)

# Stages whose dead letters a replay cannot run (pipeline/replay.py ENTRY_STAGE).
NOT_REPLAYABLE_STAGES = (dl.STAGE_READ_ROWS, dl.STAGE_READ_EVENTS, dl.STAGE_JOIN)
# Flags of the original run a replay must not repeat, with whether they take a value:
# the mode and its inputs are the replay's own, a run id is generated per run, and a
# replay reads dead letters, never rows or an events export (a replay's event reads
# only refresh the vines it replays; an export's bad events would be counted again).
DROPPED_FLAGS = ("--mode", "--replay-from", "--replay-filter", "--run-id", "--rows",
                 "--events-file")
# Flags a replay needs, and the variable the run took each from when it was not given.
NEEDED_FLAGS = (("--relays", "NOSTR_RELAYS", "<RELAY_URLS>"),
                ("--migration-api", "CF_STREAM_MIGRATION_API", "<MIGRATION_API_URL>"),
                ("--cdn-base", "CDN_BASE", "<CDN_BASE>"),
                ("--keys-db", "MIGRATION_DB", "<KEYS_DB>"),
                ("--kek", "MIGRATION_KEK_SPEC", None),
                ("--token-secret", "TOKEN_SECRET", None))
PATH_FLAGS = ("--keys-db", "--output-dir")
SEED_STATS = ("events_checked", "videos_migrated", "videos_already_migrated",
              "videos_republished", "failed_migrations", "migrations_reused",
              "metadata_missing", "blurhash_missing")
PIPED_WIDTH = 140
WRAPPED_COLUMNS = ("message", "error", "count")  # the others never wrap
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
  """

  run_dir: str
  summary: Optional[Dict[str, Any]] = None
  dead: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  skipped: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  published: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  monitor: List[str] = dataclasses.field(default_factory=list)
  missing: List[str] = dataclasses.field(default_factory=list)
  bad_lines: Dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def run_id(self) -> str:
    if self.summary and self.summary.get("run_id"):
      return str(self.summary["run_id"])
    return os.path.basename(self.run_dir.rstrip("/"))


# ---------------------------------------------------------------------------
# Finding and reading a run.


def _join(base: str, *parts: str) -> str:
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
  return any(_exists(_join(path, name)) for name in OUTPUT_FILES)


def list_runs(output_dir: str) -> List[Tuple[str, float]]:
  """(run dir, newest output mtime) of every run under output_dir, newest first.

  A run's age is the modification time of its newest output file (summary.json is
  written last); equal times fall back to the run id, which starts with its UTC start.
  """
  newest: Dict[str, float] = {}
  patterns = [_join(output_dir, "*", name) for name in OUTPUT_FILES]
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
    path = _join(output_dir, run_id)
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
  text = _read_text(_join(run_dir, SUMMARY_FILE))
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
    text = _read_text(_join(run_dir, name))
    if text is None:
      run.missing.append(name)
      continue
    records, bad = parse_ndjson(text)
    setattr(run, attr, records)
    if bad:
      run.bad_lines[name] = bad
  text = _read_text(_join(run_dir, MONITOR_FILE))
  if text is None:
    run.missing.append(MONITOR_FILE)
  else:
    run.monitor = [line for line in text.splitlines() if line.strip()]
  return run


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
    return {"source": "files", "vines_in": None, "published": published,
            "skipped": files_skipped, "dead_lettered": files_dead,
            "dead_letter_classes": classes, "balanced": None, "accounted": dead_sum,
            "stats": {}, "timing": {}, "checks": checks}
  counters = summary.get("counters") or {}
  dead_by_stage = dict(summary.get("dead_lettered") or {})
  if DEAD_LETTERS_FILE not in run.missing and files_dead != dead_by_stage:
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


# ---------------------------------------------------------------------------
# The replay command.


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
  value = None
  for index, arg in enumerate(argv):
    if arg == flag and index + 1 < len(argv):
      value = argv[index + 1]
    elif arg.startswith(flag + "="):
      value = arg[len(flag) + 1:]
  return value


def strip_flags(argv: Sequence[str], flags: Sequence[str] = DROPPED_FLAGS) -> List[str]:
  """argv without `flags` and their values (`--flag value` and `--flag=value`).

  Leading words that are not flags (a program name) are dropped too.
  """
  args = list(argv)
  while args and not args[0].startswith("-"):
    args.pop(0)
  out, skip = [], False
  for arg in args:
    if skip:
      skip = False
      continue
    if arg in flags:
      skip = True
      continue
    if any(arg.startswith(flag + "=") for flag in flags):
      continue
    out.append(arg)
  return out


def replay_filter_text(error_class: Optional[str] = None, stage: Optional[str] = None) -> str:
  """The --replay-filter value for a class and/or stage (see pipeline/replay.py)."""
  parts = []
  if stage:
    parts.append("stage=" + stage)
  if error_class:
    parts.append("error_class=" + error_class)
  return ",".join(parts)


def _absolute(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


def replay_command(run: RunOutputs, error_class: Optional[str] = None,
                   stage: Optional[str] = None) -> Dict[str, Any]:
  """The command that replays the run's dead letters, and what the reader must know.

  Built from summary.json `argv` (the run's own flags, minus those a replay sets or
  does not read: DROPPED_FLAGS) when the run recorded it, else with placeholders.

  Returns:
    {"argv": list, "command": str, "from_run_flags": bool, "replayable": int,
    "notes": [str]}.
  """
  run_dir = _absolute(run.run_dir)
  dead_file = _join(run_dir, DEAD_LETTERS_FILE)
  head = ["python", "-m", "pipeline.main", "--mode", "replay", "--replay-from", dead_file]
  flt = replay_filter_text(error_class, stage)
  if flt:
    head += ["--replay-filter", flt]
  notes = []
  recorded = (run.summary or {}).get("argv")
  parent = run_dir[:run_dir.rstrip("/").rfind("/")] or "/"
  if isinstance(recorded, list) and all(isinstance(a, str) for a in recorded):
    rest = strip_flags(recorded)
    for flag, env, _ in NEEDED_FLAGS:
      if _flag_value(rest, flag) is None and env in ("NOSTR_RELAYS", "CF_STREAM_MIGRATION_API",
                                                     "MIGRATION_DB"):
        notes.append("the run took %s from env %s: set it the same way" % (flag, env))
    if _flag_value(rest, "--output-dir") is None:
      rest += ["--output-dir", parent]
    for flag in PATH_FLAGS:
      value = _flag_value(rest, flag)
      if value and "://" not in value and not os.path.isabs(value):
        notes.append("%s %s is relative to the directory the run started in" % (flag, value))
    from_run = True
  else:
    rest = []
    for flag, _, placeholder in NEEDED_FLAGS:
      if placeholder:
        rest += [flag, placeholder]
    rest += ["--output-dir", parent]
    kind = (run.summary or {}).get("event_kind")
    if kind:
      rest += ["--event-kind", str(kind)]
    rest += ["[--kek <KEK_SPEC>]"]
    notes.append("summary.json has no argv (the run did not record its flags): replace the "
                 "<PLACEHOLDERS> with the original run's values and add its other flags")
    from_run = False
  if _flag_value(rest, "--token-secret") is None:
    notes.append("the API token comes from env CF_STREAM_MIGRATION_TOKEN (or --token-secret)")
  chosen = select_dead(run.dead, error_class, stage)
  replayable = [d for d in chosen if d["stage"] not in NOT_REPLAYABLE_STAGES]
  if len(replayable) < len(chosen):
    unreplayable = len(chosen) - len(replayable)
    notes.append("%d dead letter%s of the read stages %s not replayable (skipped "
                 "not_replayable): fix the source and re-run the job"
                 % (unreplayable, "" if unreplayable == 1 else "s",
                    "is" if unreplayable == 1 else "are"))
  if not chosen:
    notes.append("no dead letters%s: nothing to replay" % (" match " + flt if flt else ""))
  argv = head + rest
  command = " ".join(a if a.startswith("[") else shlex.quote(a) for a in argv)
  return {"argv": [a for a in argv if not a.startswith("[")], "command": command,
          "from_run_flags": from_run, "replayable": len(replayable), "notes": notes}


# ---------------------------------------------------------------------------
# The report: one JSON-able dict, rendered as tables or printed as JSON.


def build_report(run: RunOutputs, error_class: Optional[str] = None, stage: Optional[str] = None,
                 vine_id: Optional[str] = None, recent: int = 0,
                 top: int = 10) -> Dict[str, Any]:
  """Everything the command line asked for, as plain data."""
  report: Dict[str, Any] = {
      "run_id": run.run_id, "run_dir": run.run_dir, "missing_files": list(run.missing),
      "unreadable_lines": dict(run.bad_lines),
  }
  if vine_id:
    report["vine"] = vine_status(run, vine_id)
    return report
  report["totals"] = totals(run)
  report["migrated"] = migrated_counts(run)
  if error_class or stage:
    report["selected"] = {"error_class": error_class, "stage": stage,
                          "dead_letters": select_dead(run.dead, error_class, stage)}
  if recent:
    report["recent_failures"] = recent_failures(run.dead, recent)
  if not (error_class or stage or recent):
    report["top_errors"] = top_errors(run.dead, top)
  report["replay"] = replay_command(run, error_class, stage)
  return report


class PlainOut:
  """Plain text output: aligned columns, no colour."""

  def __init__(self, stream):
    self._stream = stream

  def line(self, text: str = "") -> None:
    print(text, file=self._stream)

  def heading(self, text: str) -> None:
    self.line()
    self.line("== %s ==" % text)

  def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row]
                                           for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for index, row in enumerate(cells):
      self.line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
      if index == 0:
        self.line("  ".join("-" * w for w in widths))


class RichOut(PlainOut):
  """rich tables; rich drops colour by itself when the output is not a terminal."""

  def __init__(self, stream):
    super().__init__(stream)
    from rich.console import Console  # pylint: disable=import-outside-toplevel
    width = None
    if not (hasattr(stream, "isatty") and stream.isatty()) and not os.environ.get("COLUMNS"):
      width = PIPED_WIDTH  # rich would use 80: error messages would wrap in narrow cells
    self._console = Console(file=stream, highlight=False, width=width)

  def line(self, text: str = "") -> None:
    # Long lines (the replay command) are never re-wrapped: they must stay copyable.
    self._console.print(text, markup=False, soft_wrap=True)

  def heading(self, text: str) -> None:
    self._console.print()
    self._console.print(text, style="bold", markup=False)

  def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich import box  # pylint: disable=import-outside-toplevel
    from rich.table import Table  # pylint: disable=import-outside-toplevel
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    needed = 0
    for index, column in enumerate(columns):
      if column in WRAPPED_COLUMNS:
        table.add_column(column, overflow="fold")
        needed += 30 + 2
      else:  # ids and times stay whole: they are copied into other commands
        width = max([len(column)] + [len(row[index]) for row in cells])
        table.add_column(column, no_wrap=True, min_width=width)
        needed += width + 2
    for row in cells:
      table.add_row(*row)
    self._console.print(table, width=max(self._console.width, needed))


def make_output(stream, plain: bool = False) -> PlainOut:
  if not plain:
    try:
      return RichOut(stream)
    except ImportError:
      pass
  return PlainOut(stream)


def _short(text: Any, limit: int = 160) -> str:
  text = " ".join(str(text or "").split())
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _json_inline(value: Dict[str, Any]) -> str:
  return ", ".join("%s %s" % (k, v) for k, v in value.items()) or "none"


def render(report: Dict[str, Any], out: PlainOut) -> None:
  """Writes a report built by build_report."""
  out.line("run %s  (%s)" % (report["run_id"], report["run_dir"]))
  for name in report["missing_files"]:
    why = (" (the run crashed or is still running: totals come from the other files)"
           if name == SUMMARY_FILE else "")
    out.line("missing: %s%s" % (name, why))
  for name, count in report["unreadable_lines"].items():
    out.line("unreadable: %d lines of %s are not JSON objects (skipped)" % (count, name))
  if "vine" in report:
    _render_vine(report["vine"], out)
    return
  _render_totals(report["totals"], report["migrated"], out)
  if "selected" in report:
    sel = report["selected"]
    what = " and ".join("%s %s" % (k, v) for k, v in (("class", sel["error_class"]),
                                                       ("stage", sel["stage"])) if v)
    out.heading("Dead letters of %s: %d" % (what, len(sel["dead_letters"])))
    if sel["dead_letters"]:
      out.table(("vine id", "event id", "stage", "class", "attempts", "last failure"),
                [(d["vine_id"], d["event_id"], d["stage"], d["error_class"], d["attempts"],
                  d["last_failure"]) for d in sel["dead_letters"]])
  if "recent_failures" in report:
    rows = report["recent_failures"]
    out.heading("Most recent failures: %d" % len(rows))
    if rows:
      out.table(("last failure", "stage", "class", "vine id", "error"),
                [(r["last_failure"], r["stage"], r["error_class"], r["vine_id"] or r["event_id"],
                  _short(r["error"], 100)) for r in rows])
  if "top_errors" in report:
    rows = report["top_errors"]
    out.heading("Top error messages" if rows else "Top error messages: no dead letters")
    if rows:
      out.table(("count", "stage", "class", "message", "example vine id"),
                [(g["count"], g["stage"], g["error_class"], _short(g["message"]),
                  g["example_vine_id"] or g["example_event_id"]) for g in rows])
  _render_replay(report["replay"], out)


def _render_totals(tot: Dict[str, Any], migrated: Dict[str, Any], out: PlainOut) -> None:
  out.heading("Totals (from %s)" % tot["source"])
  balanced = {True: "OK", False: "DOES NOT ADD UP", None: "unknown (no summary.json)"}
  rows = [("vines in", "-" if tot["vines_in"] is None else tot["vines_in"]),
          ("published", tot["published"]),
          ("skipped", "%d  (%s)" % (sum(tot["skipped"].values()), _json_inline(tot["skipped"]))),
          ("dead-lettered", "%d  by stage: %s" % (sum(tot["dead_lettered"].values()),
                                                   _json_inline(tot["dead_lettered"]))),
          ("", "by class: %s" % _json_inline(tot["dead_letter_classes"])),
          ("accounting", balanced[tot["balanced"]])]
  rows += [(k.replace("_", " "), v) for k, v in tot["timing"].items()]
  rows += [(k.replace("_", " "), v) for k, v in tot["stats"].items()]
  out.table(("", "count"), rows)
  for check in tot["checks"]:
    out.line("note: " + check)
  out.heading("Migrated")
  out.table(("", "count"), [
      ("MIGRATED lines (monitor.log)", migrated["monitor_migrated"]),
      ("REPUBLISHED lines (monitor.log)", migrated["monitor_republished"]),
      ("published, newly migrated (published.ndjson)", migrated["published_newly_migrated"]),
      ("published, replays of dead letters", migrated["published_replayed"])])


def _render_vine(vine: Dict[str, Any], out: PlainOut) -> None:
  out.heading("%s: %s" % (vine["key"], vine["status"].replace("_", " ")))
  if vine["status"] == "not_found":
    out.line("not in this run's outputs: not in its input, or the run stopped before writing "
             "(try another --run-id)")
  for r in vine["published"]:
    out.table(("published", ""), [("vine id", r["vine_id"]), ("event id", r["event_id"]),
                                  ("previous event id", r["previous_event_id"]),
                                  ("stream uid", r["stream_uid"]),
                                  ("relays", ", ".join(r["relays"] or ())),
                                  ("newly migrated", r["newly_migrated"]),
                                  ("notes", ", ".join(r["notes"] or ()) or "-"),
                                  ("published at", r["published_at"])])
  for r in vine["skipped"]:
    out.table(("skipped", ""), [("vine id", r.get("vine_id")), ("event id", r.get("event_id")),
                                ("stage", r.get("stage")), ("reason", r.get("reason"))])
  for r in vine["dead_lettered"]:
    out.table(("dead-lettered", ""), [
        ("vine id", r["vine_id"]), ("event id", r["event_id"]), ("stage", r["stage"]),
        ("class", r["error_class"]), ("error", _short(r["error"], 400)),
        ("attempts", r["attempts"]), ("first failure", r["first_failure"]),
        ("last failure", r["last_failure"]), ("replay of", r["replay_of"] or "-")])
  for line in vine["monitor"]:
    out.line("monitor.log: " + line)


def _render_replay(replay: Dict[str, Any], out: PlainOut) -> None:
  out.heading("Replay the dead letters (%d replayable)%s" % (
      replay["replayable"], "" if replay["from_run_flags"] else " - with placeholders"))
  out.line(replay["command"])
  for note in replay["notes"]:
    out.line("note: " + note)


# ---------------------------------------------------------------------------
# Command line.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.report", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output-dir", default="out",
                      help="the pipeline's --output-dir (default out), or one run's directory")
  parser.add_argument("--run-id", default=None, help="the run (default: the newest)")
  parser.add_argument("--class", dest="error_class", choices=dl.ERROR_CLASSES, default=None,
                      help="list the dead letters of this error class (and replay only them)")
  parser.add_argument("--stage", choices=dl.STAGES, default=None,
                      help="list the dead letters of this stage (and replay only them)")
  parser.add_argument("--vine-id", default=None,
                      help="what happened to this vine id (or event id) in the run")
  parser.add_argument("--recent", type=int, default=0, metavar="N",
                      help="the N most recent failures (by last_failure)")
  parser.add_argument("--top", type=int, default=10, metavar="N",
                      help="error messages shown in the top list (default 10; 0: all)")
  parser.add_argument("--json", action="store_true", help="machine-readable output")
  parser.add_argument("--plain", action="store_true", help="plain text even when rich is there")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, stream=None) -> int:
  """Prints the report; returns 0, or 1 when there is no run to report on."""
  args = parse_args(argv)
  stream = stream or sys.stdout
  try:
    run_dir = find_run_dir(args.output_dir, args.run_id)
    run = load_run(run_dir)
  except ReportError as exc:
    print("report: %s" % exc, file=sys.stderr)
    return 1
  if len(run.missing) == len(OUTPUT_FILES):
    print("report: %s holds no output files: the run stopped before writing them (see its "
          "console output)" % run_dir, file=sys.stderr)
    return 1
  report = build_report(run, error_class=args.error_class, stage=args.stage,
                        vine_id=args.vine_id, recent=args.recent, top=args.top)
  if args.json:
    print(json.dumps(report, indent=2, ensure_ascii=False, default=str), file=stream)
  else:
    render(report, make_output(stream, plain=args.plain))
  return 0


if __name__ == "__main__":
  sys.exit(main())
