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
Beam's FileSystems, so a `gs://` output directory works too. Reading the files and
the questions are pure functions in pipeline/run_outputs.py; this module builds the
replay command, prints and parses the command line.
"""

import argparse
import json
import logging
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence

from pipeline.run_outputs import (
  OUTPUT_FILES,
  ReportError,
  RunOutputs,
  find_run_dir,
  join_path,
  load_run,
  migrated_counts,
  recent_failures,
  select_dead,
  top_errors,
  totals,
  vine_status,
)
from transforms.clients.secrets import TOKEN_ENV_VAR
from transforms.io.local_files import DEAD_LETTERS_FILE, SUMMARY_FILE
from transforms.runtime import outcomes as dl

_LOG = logging.getLogger(__name__)

# Stages whose dead letters a replay cannot run (transforms/stages/replay.py ENTRY_STAGE).
NOT_REPLAYABLE_STAGES = (dl.STAGE_READ_ROWS, dl.STAGE_READ_EVENTS, dl.STAGE_JOIN)
# Flags of the original run a replay must not repeat, with whether they take a value:
# the mode and its inputs are the replay's own, a run id is generated per run, and a
# replay reads dead letters, never rows or an events export (a replay's event reads
# only refresh the vines it replays; an export's bad events would be counted again).
# A webhook URL is recorded scrubbed (it is a credential): the replay names its own.
DROPPED_FLAGS = ("--mode", "--replay-from", "--replay-filter", "--run-id", "--rows",
                 "--events-file", "--notify-url")
# Flags a replay needs, and the variable the run took each from when it was not given.
NEEDED_FLAGS = (("--relays", "NOSTR_RELAYS", "<RELAY_URLS>"),
                ("--migration-api", "CF_STREAM_MIGRATION_API", "<MIGRATION_API_URL>"),
                ("--cdn-base", "CDN_BASE", "<CDN_BASE>"),
                ("--keys-db", "MIGRATION_DB", "<KEYS_DB>"),
                ("--kek", "MIGRATION_KEK_SPEC", None),
                ("--token-secret", "TOKEN_SECRET", None))
PATH_FLAGS = ("--keys-db", "--output-dir")
PIPED_WIDTH = 140
WRAPPED_COLUMNS = ("message", "error", "count")  # the others never wrap


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
  """The --replay-filter value for a class and/or stage (see transforms/stages/replay.py)."""
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
  dead_file = join_path(run_dir, DEAD_LETTERS_FILE)
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
    notes.append("the API token comes from env %s (or --token-secret)" % TOKEN_ENV_VAR)
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
