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

A run that did not finish (killed, or stopped: summary.json `stopped`) is read from its
journal (`journal/`, transforms/io/journal.py): the report says so, why when it knows,
what the journal saw (published vines, vines sent without an answer, whose new version
may be on a relay, dead letters, skips) and the command that completes the rest.

These answer the seed's four debug recipes without jq or grep: progress (totals),
recent failures (`--recent`), count migrated, status of one vine id (`--vine-id`).
Missing or empty files are reported as such, never as a traceback. Paths go through
Beam's FileSystems, so a `gs://` output directory works too. Reading the files and
the questions are pure functions in pipeline/run_outputs.py, the replay and re-run
commands are built in pipeline/rerun_commands.py; this module prints and parses the
command line.
"""

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

from pipeline.rerun_commands import (  # noqa: F401 (strip_flags: part of this module's API)
  replay_command,
  strip_flags,
  unfinished,
)
from pipeline.run_outputs import (
  OUTPUT_FILES,
  ReportError,
  RunOutputs,
  find_run_dir,
  load_run,
  migrated_counts,
  recent_failures,
  select_dead,
  top_errors,
  totals,
  vine_status,
)
from transforms.io.local_files import SUMMARY_FILE
from transforms.runtime import outcomes as dl

_LOG = logging.getLogger(__name__)

PIPED_WIDTH = 140
WRAPPED_COLUMNS = ("message", "error", "count")  # the others never wrap


# ---------------------------------------------------------------------------
# The report: one JSON-able dict, rendered as tables or printed as JSON.


def build_report(run: RunOutputs, error_class: Optional[str] = None, stage: Optional[str] = None,
                 vine_id: Optional[str] = None, recent: int = 0,
                 top: int = 10) -> Dict[str, Any]:
  """Everything the command line asked for, as plain data."""
  report: Dict[str, Any] = {
      "run_id": run.run_id, "run_dir": run.run_dir, "missing_files": list(run.missing),
      "unreadable_lines": dict(run.bad_lines), "unfinished": unfinished(run),
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
  if not run.from_journal:  # else there is no dead_letters.ndjson to replay: re-run instead
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
  if report.get("unfinished"):
    _render_unfinished(report["unfinished"], out)
  for name in report["missing_files"]:
    why = (" (the run crashed or is still running: totals come from the other files)"
           if name == SUMMARY_FILE and not report.get("unfinished") else "")
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
  if "replay" in report:
    _render_replay(report["replay"], out)


def _render_unfinished(info: Dict[str, Any], out: PlainOut) -> None:
  if info["status"] == "stopped":
    out.heading("The run stopped before the end: %s" % (info["reason"] or "reason unknown"))
  else:
    out.heading("The run did not finish (killed, or still running)")
  if not info["journal"]:
    out.line("no journal: nothing recorded what it did")
  else:
    out.table(("journal", ""), [
        ("started", info["started_at"] or "-"), ("last record", info["last_record_at"] or "-"),
        ("published", info["published"]),
        ("sent without an answer", "%d (their new version may be on a relay)"
         % len(info["in_doubt"])),
        ("not published", info["not_published"]), ("dead letters", info["dead_letters"]),
        ("skipped", info["skipped"])])
    if info["in_doubt"]:
      out.line("sent without an answer: " + ", ".join(info["in_doubt"]))
  out.line("Re-run the same command to complete the rest: it resumes from the relays' state "
           "(vines already published are up to date and are not published again).")
  if info["rerun"]:
    out.line(info["rerun"])


def _render_totals(tot: Dict[str, Any], migrated: Dict[str, Any], out: PlainOut) -> None:
  out.heading("Totals (from %s)" % tot["source"])
  balanced = {True: "OK", False: "DOES NOT ADD UP",
              None: "unknown (no summary.json)" if tot["source"] != SUMMARY_FILE
              else "not checked (the run stopped)"}
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
  if len(run.missing) == len(OUTPUT_FILES) and run.journal is None:
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
