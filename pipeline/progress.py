"""What an operator sees of a run: a live progress display and the end-of-run summary table.

The local runner (FnApiRunner) reports Beam counters only when the run ends, so the live
display reads `accounting.live_counts()`, the process-local tally every counter increment
also adds to, a few times a second from a background thread, and redraws it with rich on
stderr. It is off with `--no-progress`, when stderr is not a terminal, for streaming runs,
for remote runners and with several worker processes (their counts live in those
processes).

The renderers are pure functions of the counts, so tests render them to text; the
display thread takes its console, clock and refresh interval as arguments.
"""

import collections
import io
import json
import logging
import sys
import threading
import time
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from transforms.core.text import utc_now_iso
from transforms.runtime import accounting

_LOG = logging.getLogger("vine_migration")

REFRESH_SECONDS = 0.25
# The rate the ETA uses is measured over this many seconds once the reading is over (the
# reading finishes next to nothing, so the average since the start undervalues the rate).
RATE_WINDOW_SECONDS = 10.0
DASH = "\u2014"
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "direct")
# Counters only the stages after the join increment. The local runner starts the stage
# reading a CoGroupByKey's output only when every stage writing to it is done, so once one
# of these is non-zero, the reading is over.
_AFTER_JOIN = (accounting.VIDEOS_MIGRATED, accounting.VIDEOS_ALREADY_MIGRATED,
               accounting.FAILED_MIGRATIONS, accounting.PUBLISHED, accounting.BLURHASH_MISSING,
               "skipped_up_to_date", "skipped_no_openvine_id") + tuple(
                   accounting.DEAD_LETTER_PREFIX + stage for stage in (
                       "migrate", "blurhash", "build", "sign", "publish"))


def _prefixed_sum(counts: Mapping[str, int], prefix: str) -> int:
  return sum(int(v) for k, v in counts.items() if k.startswith(prefix))


def progress_numbers(counts: Mapping[str, int]) -> Dict[str, int]:
  """The display's figures from counter values (live tally or final counters).

  Args:
    counts: Counter name -> value.

  Returns:
    events_read, rows_read, vines_in, migrated (new + already on Stream, which
    includes reused), migrated_new, migrated_already, reused, published, skipped,
    dead_lettered, finished (published + skipped + dead-lettered).
  """
  get = lambda name: int(counts.get(name, 0))
  numbers = {
      "events_read": get(accounting.EVENTS_READ),
      "rows_read": get(accounting.ROWS_READ),
      "vines_in": get(accounting.VINES_IN),
      "migrated_new": get(accounting.VIDEOS_MIGRATED),
      "migrated_already": get(accounting.VIDEOS_ALREADY_MIGRATED),
      "reused": get(accounting.MIGRATIONS_REUSED),
      "published": get(accounting.PUBLISHED),
      "skipped": _prefixed_sum(counts, accounting.SKIPPED_PREFIX),
      "dead_lettered": _prefixed_sum(counts, accounting.DEAD_LETTER_PREFIX),
  }
  numbers["migrated"] = numbers["migrated_new"] + numbers["migrated_already"]
  numbers["finished"] = numbers["published"] + numbers["skipped"] + numbers["dead_lettered"]
  return numbers


def seed_stats(counts: Mapping[str, int], started: float, now: float) -> Dict[str, object]:
  """The seed's progress-file `stats` from counter values (pipeline/run_record.py writes them).

  Args:
    counts: Counter name -> value (the live tally).
    started, now: Wall-clock seconds of the run's start and of this checkpoint.
  """
  stats: Dict[str, object] = {name: int(counts.get(name, 0)) for name in (
      accounting.EVENTS_CHECKED, accounting.VIDEOS_MIGRATED, accounting.VIDEOS_REPUBLISHED,
      accounting.FAILED_MIGRATIONS)}
  stats.update(start_time=utc_now_iso(started), last_checkpoint=utc_now_iso(now))
  return stats


def reading_over(counts: Mapping[str, int]) -> bool:
  """Whether every read is done: a stage after the join has counted something."""
  return any(int(counts.get(name, 0)) for name in _AFTER_JOIN)


def expected_vines(counts: Mapping[str, int], replay: bool = False) -> Optional[int]:
  """How many vines the run will account for; None while the reading goes on.

  The local runner fuses the join with the stages after it, so `vines_in` grows only a
  few items (the API limit) ahead of the migrations and is complete only near the end.
  A migration run's total is therefore estimated from the read stages' final counts:
  each checked event becomes one unit (a join output, a skip or a dead letter), and so
  does each bad row or event. Rows without an event (skipped `no_event`) are missing from
  the estimate, and a future-dated event is counted twice; both are rare. In a replay,
  every unit is born before the join, so `vines_in` is the total.

  Args:
    counts: Counter name -> value.
    replay: a --mode replay run.
  """
  if not reading_over(counts):
    return None
  vines_in = int(counts.get(accounting.VINES_IN, 0))
  if replay:
    return vines_in
  estimate = sum(int(counts.get(name, 0)) for name in (
      accounting.EVENTS_CHECKED, accounting.DEAD_LETTER_PREFIX + "read_rows",
      accounting.DEAD_LETTER_PREFIX + "read_events"))
  return max(vines_in, estimate)


def eta_seconds(counts: Mapping[str, int], rate: float, replay: bool = False) -> Optional[float]:
  """Seconds left at `rate` finished vines/s; None while the total is unknown or rate is 0."""
  total = expected_vines(counts, replay)
  if rate <= 0 or total is None:
    return None
  return max(0, total - progress_numbers(counts)["finished"]) / rate


def format_duration(seconds: Optional[float]) -> str:
  """H:MM:SS, or a dash for an unknown duration."""
  if seconds is None:
    return DASH
  whole = int(round(seconds))
  return "%d:%02d:%02d" % (whole // 3600, whole % 3600 // 60, whole % 60)


def render_progress(counts: Mapping[str, int], elapsed: float, rate: Optional[float] = None,
                    done: bool = False, replay: bool = False,
                    stopped: bool = False) -> RenderableType:
  """The live display for one moment of a run.

  Args:
    counts: Counter name -> value (the live tally).
    elapsed: Seconds since the run started.
    rate: Finished vines per second to show and to base the ETA on; default the
      average since the start.
    done: The final frame: the exact total, the average rate, no ETA.
    replay: a --mode replay run (see `expected_vines`).
    stopped: The last frame of a run that failed or was stopped: no ETA.

  Returns:
    A rich renderable: a table of read, migrated, published, skipped, dead-lettered,
    finished of the (estimated) total, rate and ETA.
  """
  n = progress_numbers(counts)
  final = done or stopped
  if rate is None or final:
    rate = n["finished"] / elapsed if elapsed > 0 else 0.0
  total = n["vines_in"] if done else expected_vines(counts, replay)
  table = Table(box=None, show_header=False, pad_edge=False,
                title=Text("vine-migration  %s%s" % (format_duration(elapsed), "  done" if done
                                                     else "  stopped" if stopped else ""),
                           style="bold"), title_justify="left")
  table.add_column("what", style="bold")
  table.add_column("count", justify="right")
  table.add_column("detail", style="dim")
  table.add_row("read", str(n["vines_in"]), "vines in   %d events, %d rows" % (
      n["events_read"], n["rows_read"]))
  table.add_row("migrated", str(n["migrated"]), "%d new, %d already on Stream (%d without a call)"
                % (n["migrated_new"], n["migrated_already"], n["reused"]))
  table.add_row("published", str(n["published"]), "")
  table.add_row("skipped", str(n["skipped"]), "")
  table.add_row("dead-lettered", str(n["dead_lettered"]), "")
  if total:
    detail = Table.grid(padding=(0, 1))
    detail.add_row(ProgressBar(total=total, completed=min(n["finished"], total), width=30),
                   "of %s%d (%d %%)" % ("" if done or replay else "~", total,
                                        100 * min(n["finished"], total) // total))
    table.add_row("finished", str(n["finished"]), detail)
  else:
    table.add_row("finished", str(n["finished"]), "of %s" % DASH)
  if final:
    table.add_row("rate", "%.1f" % rate, "vines/s on average")
  else:
    table.add_row("rate", "%.1f" % rate, "vines/s   ETA %s" % format_duration(
        eta_seconds(counts, rate, replay)))
  return table


def render_to_text(renderable: RenderableType, width: int = 100) -> str:
  """Plain text of a renderable (tests, logs)."""
  console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
  console.print(renderable)
  return console.file.getvalue()


def quiet_reason(*, no_progress: bool, is_terminal: bool, streaming: bool, workers: int,
                 local: bool = True) -> Optional[str]:
  """Why the live display is off, or None when it shows.

  Args:
    no_progress: --no-progress was given.
    is_terminal: stderr is a terminal.
    streaming: a streaming run.
    workers: local worker processes: 1 for the in-process runner, else the processes of
      multi_processing mode (--workers, or --direct_num_workers).
    local: the runner runs on this machine (not Dataflow).
  """
  if no_progress:
    return "--no-progress"
  if streaming:
    return "streaming run: counters are on the runner's monitoring page"
  if not local:
    return "remote runner: counters are on the runner's monitoring page"
  if workers > 1:
    return ("worker processes (multi_processing mode): the counts live in those processes "
            "until the run ends; the summary has them")
  if not is_terminal:
    return "stderr is not a terminal"
  return None


def make_console() -> Console:
  """The console the live display draws on: stderr (tests replace this)."""
  return Console(stderr=True)


class ProgressDisplay:
  """A background thread that redraws `render_progress` of a live tally on a console.

  Args:
    console: Where to draw (a terminal; tests use Console(file=StringIO(), force_terminal=True)).
    tally: Returns the current counts (default `accounting.live_counts`).
    clock: Monotonic seconds (injectable for tests).
    interval: Seconds between frames.
    replay: a --mode replay run (see `expected_vines`).
  """

  def __init__(self, console: Console, tally: Callable[[], Dict[str, int]] = None,
               clock: Callable[[], float] = time.monotonic, interval: float = REFRESH_SECONDS,
               replay: bool = False):
    self._console = console
    self._replay = replay
    self._tally = tally or accounting.live_counts
    self._clock = clock
    self._interval = interval
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._live: Optional[Live] = None
    self._started_at = 0.0
    self._window: Deque[Tuple[float, int]] = collections.deque()
    self._handlers: List[Tuple[logging.StreamHandler, object]] = []
    self.frames = 0
    self.last_counts: Dict[str, int] = {}

  def frame(self, done: bool = False, stopped: bool = False) -> RenderableType:
    """Renders the tally now (the thread calls this; tests may too)."""
    counts = self._tally()
    elapsed = max(0.0, self._clock() - self._started_at)
    rate = None if done or stopped else self._recent_rate(counts, elapsed)
    self.frames += 1
    self.last_counts = counts
    return render_progress(counts, elapsed, rate=rate, done=done, replay=self._replay,
                           stopped=stopped)

  def _recent_rate(self, counts: Mapping[str, int], elapsed: float) -> Optional[float]:
    """Finished vines/s over the last RATE_WINDOW_SECONDS since the reading ended.

    None while reading (the renderer shows the average; there is no ETA yet); 0 for the
    first half second after it (not measured yet: no ETA rather than a wild one).
    """
    if not reading_over(counts):
      self._window.clear()  # reading finishes nothing: leave it out of the rate
      return None
    self._window.append((elapsed, progress_numbers(counts)["finished"]))
    while elapsed - self._window[0][0] > RATE_WINDOW_SECONDS:
      self._window.popleft()
    first_t, first_n = self._window[0]
    if elapsed - first_t < 0.5:
      return 0.0
    return (self._window[-1][1] - first_n) / (elapsed - first_t)

  def start(self) -> "ProgressDisplay":
    self._started_at = self._clock()
    # Redirect stdout/stderr (log lines print above the display) only on the real stderr.
    real = self._console.file in (sys.stderr, sys.__stderr__)
    self._live = Live(self.frame(), console=self._console, auto_refresh=False,
                      redirect_stdout=real, redirect_stderr=real)
    original_stderr = sys.stderr
    self._live.start()
    if real and sys.stderr is not original_stderr:
      self._point_log_handlers(original_stderr, sys.stderr)
    self._live.refresh()
    self._thread = threading.Thread(target=self._loop, name="progress-display", daemon=True)
    self._thread.start()
    return self

  def _point_log_handlers(self, old, new) -> None:
    """Log handlers writing to the old stderr write through the display while it runs."""
    for handler in logging.getLogger().handlers:
      if isinstance(handler, logging.StreamHandler) and handler.stream is old:
        self._handlers.append((handler, old))
        handler.setStream(new)

  def _loop(self) -> None:
    while not self._stop.wait(self._interval):
      try:
        self._live.update(self.frame(), refresh=True)
      except Exception:  # pylint: disable=broad-except
        _LOG.debug("progress display frame failed", exc_info=True)

  def stop(self, ok: bool = True) -> None:
    """Draws the final frame from the tally and leaves it on screen.

    Args:
      ok: The run finished (the frame says "done"), else it failed ("stopped").
    """
    if self._live is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      self._live.update(self.frame(done=ok, stopped=not ok), refresh=True)
    finally:
      for handler, old in self._handlers:
        handler.setStream(old)
      self._handlers = []
      self._live.stop()
      self._live = None

  def __enter__(self) -> "ProgressDisplay":
    return self.start()

  def __exit__(self, exc_type, *exc) -> None:
    self.stop(ok=exc_type is None)


def for_run(*, no_progress: bool, streaming: bool, workers: int, local: bool,
            replay: bool = False) -> Optional[ProgressDisplay]:
  """The live display for a run, not started; None (and a log line saying why) when off."""
  console = make_console()
  reason = quiet_reason(no_progress=no_progress, is_terminal=console.is_terminal,
                        streaming=streaming, workers=workers, local=local)
  if reason is None:
    return ProgressDisplay(console, interval=REFRESH_SECONDS, replay=replay)
  if workers > 1 and not (no_progress or streaming) and local:
    _LOG.info("no live progress display: %s", reason)
  else:
    _LOG.debug("no live progress display: %s", reason)
  return None


# -- the end-of-run summary -------------------------------------------------------------------


def summary_table(summary: Mapping, run_dir: str = "",
                  bigquery_tables: Sequence[Tuple[str, str]] = ()) -> RenderableType:
  """The end-of-run summary as a table, from the summary.json content.

  Args:
    summary: accounting.summarise() plus run_id, counters, seconds,
      events_per_second, started_at, finished_at, output_files, event_kind.
    run_dir: Where the run's files are.
    bigquery_tables: (what, table) pairs of configured BigQuery outputs.

  Returns:
    A rich renderable: the outcome counts (per skip reason, dead-letter stage and
    class), the accounting check, time, rate and outputs.
  """
  table = Table(title=Text("vine-migration run %s" % summary.get("run_id", ""), style="bold"),
                box=box.SIMPLE_HEAVY, title_justify="left")
  table.add_column("", style="bold", no_wrap=True)
  table.add_column("vines", justify="right", no_wrap=True)
  table.add_column("", overflow="fold")
  sub = lambda label: Text("  " + label, style="")
  table.add_row("vines in", str(summary["vines_in"]), "")
  kind_note = ""
  if summary.get("event_kind"):
    kind_note = "as kind %s" % summary["event_kind"].replace("both", "32222 + 34236")
    events = summary.get("counters", {}).get(accounting.EVENTS_PUBLISHED)
    if events is not None:
      kind_note += ", %d events" % events
  table.add_row("published", str(summary["published"]), kind_note)
  skipped = summary.get("skipped", {})
  table.add_row("skipped", str(sum(skipped.values())), "")
  for reason, n in skipped.items():
    table.add_row(sub(reason), str(n), "skip reason")
  dead = summary.get("dead_lettered", {})
  table.add_row("dead-lettered", str(sum(dead.values())), "")
  for stage, n in dead.items():
    table.add_row(sub(stage), str(n), "dead-letter stage")
  for error_class, n in summary.get("dead_letter_classes", {}).items():
    table.add_row(sub(error_class), str(n), "error class")
  table.add_section()
  table.add_row("accounting", "OK" if summary["balanced"] else "DOES NOT ADD UP",
                Text("%d in = %d out" % (summary["vines_in"], summary["accounted"]),
                     style="green" if summary["balanced"] else "bold red"))
  if "seconds" in summary:
    table.add_row("time", "%.1f s" % summary["seconds"], "%s to %s" % (
        summary.get("started_at", "?"), summary.get("finished_at", "?")))
    table.add_row("events/s", "%.1f" % summary.get("events_per_second", 0.0),
                  "events published per second of wall time")
  table.add_section()
  if run_dir:
    table.add_row("outputs", "", Text(run_dir))
  if summary.get("output_files"):
    table.add_row("files", str(len(summary["output_files"])),
                  Text(", ".join(summary["output_files"])))
  for what, name in bigquery_tables:
    table.add_row("BigQuery", "", Text("%s: %s" % (what, name)))
  return table


def counters_line(summary: Mapping) -> str:
  """The counters the table does not show, as one JSON line."""
  info = {k: v for k, v in sorted(summary.get("counters", {}).items()) if not k.startswith(
      (accounting.SKIPPED_PREFIX, accounting.DEAD_LETTER_PREFIX,
       accounting.DEAD_LETTER_CLASS_PREFIX))}
  return "counters: %s" % json.dumps(info)


def print_summary(summary: Mapping, run_dir: str = "",
                  bigquery_tables: Sequence[Tuple[str, str]] = (),
                  console: Optional[Console] = None) -> None:
  """Prints the summary table on stdout (plain text when stdout is not a terminal)."""
  if console is None:
    console = Console()
    if not console.is_terminal:
      console.width = max(console.width, 120)  # paths fold less in logs
  console.print()
  console.print(summary_table(summary, run_dir, bigquery_tables))
  console.print(counters_line(summary), soft_wrap=True, markup=False, highlight=False)
