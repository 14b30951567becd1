"""What a run leaves in its folder while it goes, and how it stops cleanly.

`RunRecord` wraps a local run (pipeline/main.py run()):

* the journal's `run` and `end` records (transforms/io/journal.py);
* `progress.json`: the seed's `stats` (events_checked, videos_migrated, videos_republished,
  failed_migrations, start_time, last_checkpoint) and the live display's figures, rewritten
  atomically (temporary file, then rename) every PROGRESS_SECONDS from the live tally;
* `run.log`: every log line of the driver process, as on stderr, secrets scrubbed;
* a clean stop: SIGINT and SIGTERM raise StopRun in the main thread (where the local runner
  runs the stages), so a signal takes the same way out as a configuration error. The calls
  still in flight on the async loop are cancelled within STOP_SECONDS, the journal is closed,
  Beam's `beam-temp-*` folders are removed and summary.json says `stopped`, why, and the
  counts so far; the run exits EXIT_STOPPED. If the run has not stopped STOP_BOUND_SECONDS
  after the signal (a call that ignores it), or on a second signal, the same record is
  written and the process exits at once.
"""

import glob
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from apache_beam.io.filesystems import FileSystems

from pipeline import progress
from transforms.clients import secrets as secret_values
from transforms.core.text import utc_now_iso
from transforms.io import journal
from transforms.io.local_files import PROGRESS_FILE, RUN_LOG_FILE, SUMMARY_FILE
from transforms.runtime import accounting
from transforms.runtime.async_dofn import STOP_SECONDS, shutdown_shared_loop
from transforms.runtime.outcomes import StopRun

_LOG = logging.getLogger("vine_migration")

EXIT_STOPPED = 3  # stopped before the end (signal or configuration error); 1 is "unbalanced"
FINISHED = "finished"
STOPPED = "stopped"
PROGRESS_SECONDS = 5.0
STOP_BOUND_SECONDS = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ScrubbingFormatter(logging.Formatter):
  """The stderr format, with secrets removed (transforms/clients/secrets.scrub)."""

  def format(self, record: logging.LogRecord) -> str:
    return secret_values.scrub(super().format(record))


class StopRunTraceback(logging.Filter):
  """Drops the traceback Beam logs for an exception a stage raised when it is a StopRun.

  The run logs its stop once, as a clear line (a configuration stop as an error, a signal
  as a warning); a signal is not an error, and a traceback says nothing more.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], StopRun))


# The logger of Beam's DoFn runner, which logs a stage's exception with its traceback.
BEAM_DOFN_LOGGER = "apache_beam.runners.common"


def write_json_atomically(path: str, value: Dict[str, Any]) -> None:
  """Writes `path` whole or not at all: a reader never sees half a file."""
  temporary = "%s.tmp-%d" % (path, os.getpid())
  with open(temporary, "w", encoding="utf-8") as f:
    f.write(json.dumps(value, indent=2, sort_keys=True, default=str))
  os.replace(temporary, path)


def remove_temp_files(run_dir: str) -> List[str]:
  """Removes Beam's `beam-temp-*` folders a stopped run left; returns their names."""
  removed = []
  for path in glob.glob(os.path.join(run_dir, "beam-temp-*")):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
    removed.append(os.path.basename(path))
  return removed


class RunRecord:
  """The journal, progress file, log file and clean stop of one local run.

  Args:
    run_dir: The run folder (local; pipeline/main.py makes it).
    run_id: The run id.
    argv: The command line (stored scrubbed).
    clock: Wall-clock seconds (injectable for tests).
  """

  def __init__(self, run_dir: str, run_id: str, argv: List[str],
               clock: Callable[[], float] = time.time):
    self.run_dir = run_dir
    self.run_id = run_id
    self._argv = [secret_values.scrub(str(a)) for a in argv]
    self._clock = clock
    self._started = clock()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._handler: Optional[logging.Handler] = None
    self._old_handlers: Dict[int, Any] = {}
    self._timer: Optional[threading.Timer] = None
    self._filter = StopRunTraceback()
    self._journal: Optional[journal.Journal] = None
    self.stop_reason: Optional[str] = None
    self._finishing = threading.Lock()

  # -- the record ---------------------------------------------------------------------------

  def start(self) -> "RunRecord":
    self._handler = logging.FileHandler(os.path.join(self.run_dir, RUN_LOG_FILE),
                                        encoding="utf-8")
    self._handler.setFormatter(ScrubbingFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(self._handler)
    logging.getLogger(BEAM_DOFN_LOGGER).addFilter(self._filter)
    self._journal = journal.activate(self.run_dir)
    if self._journal is not None:
      self._journal.write(journal.RUN, run_id=self.run_id, argv=self._argv,
                          started_at=utc_now_iso(self._started))
    self.write_progress("running")
    self._thread = threading.Thread(target=self._progress_loop, name="progress-file", daemon=True)
    self._thread.start()
    return self

  def _progress_loop(self) -> None:
    while not self._stop.wait(PROGRESS_SECONDS):
      self.write_progress("running")

  def write_progress(self, status: str) -> None:
    """Rewrites progress.json from the live tally; a failure is logged, never raised."""
    counts = accounting.live_counts()
    value = {"run_id": self.run_id, "status": status,
             "stats": progress.seed_stats(counts, self._started, self._clock()),
             "progress": progress.progress_numbers(counts)}
    try:
      write_json_atomically(os.path.join(self.run_dir, PROGRESS_FILE), value)
    except OSError as exc:
      _LOG.warning("progress file not written: %s", exc)

  def close(self, status: str) -> None:
    """Stops the progress thread (last write: `status`), closes the journal and log file."""
    self._stop.set()
    if self._timer is not None:
      self._timer.cancel()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    self.write_progress(status)
    if self._journal is not None:
      self._journal.write(journal.END, status=status, reason=self.stop_reason)
    journal.deactivate()
    logging.getLogger(BEAM_DOFN_LOGGER).removeFilter(self._filter)
    if self._handler is not None:
      logging.getLogger().removeHandler(self._handler)
      self._handler.close()
      self._handler = None

  def stopped_summary(self, reason: str) -> Dict[str, Any]:
    """summary.json of a run that stopped: the reason and the counts so far (live tally)."""
    counts = accounting.live_counts()
    summary = accounting.summarise(counts)
    summary.update({"run_id": self.run_id, "counters": counts, "status": STOPPED,
                    "stop_reason": secret_values.scrub(reason),
                    "counts_note": "counted so far in the driver process; the outcomes are in "
                                   "journal/ (python -m pipeline.report reads it)"})
    summary["balanced"] = None  # a stopped run is not expected to add up
    return summary

  def stop(self, reason: str, add_facts: Callable[[Dict[str, Any]], None]) -> int:
    """The way out of a stopped run: calls abandoned, temp files removed, summary written.

    Args:
      reason: Why the run stopped (the StopRun message).
      add_facts: Adds the run's own facts (flags, times, files) to the summary.

    Returns:
      EXIT_STOPPED.
    """
    with self._finishing:
      self.stop_reason = self.stop_reason or reason
      shutdown_shared_loop(STOP_SECONDS)
      removed = remove_temp_files(self.run_dir)
      if removed:
        _LOG.info("removed %d temporary folder(s) of the stopped run", len(removed))
      summary = self.stopped_summary(reason)
      add_facts(summary)
      write_summary(self.run_dir, summary)
      self.close(STOPPED)
    return EXIT_STOPPED

  # -- signals --------------------------------------------------------------------------------

  def arm_signals(self) -> None:
    """SIGINT/SIGTERM stop the run from now on (main thread only)."""
    for sig in STOP_SIGNALS:
      self._old_handlers[sig] = signal.signal(sig, self._on_signal)

  def disarm_signals(self) -> None:
    for sig, old in self._old_handlers.items():
      signal.signal(sig, old)
    self._old_handlers = {}

  def _on_signal(self, signum, _frame) -> None:
    name = signal.Signals(signum).name
    if self.stop_reason is not None:  # a second signal: no more waiting
      self._force_exit("%s again while stopping" % name)
    self.stop_reason = "%s received" % name
    _LOG.warning("run %s: %s, stopping (at most %d s)", self.run_id, name, STOP_BOUND_SECONDS)
    self._timer = threading.Timer(STOP_BOUND_SECONDS, self._force_exit,
                                  args=("not stopped %d s after %s" % (STOP_BOUND_SECONDS, name),))
    self._timer.daemon = True
    self._timer.start()
    raise StopRun(self.stop_reason)

  def _force_exit(self, why: str) -> None:
    """Writes the stopped record and exits now (the run ignored the stop)."""
    if not self._finishing.acquire(timeout=STOP_SECONDS):
      os._exit(EXIT_STOPPED)  # the normal stop is writing the record
    reason = "%s (%s)" % (self.stop_reason or "stopped", why)
    _LOG.warning("run %s: %s: exiting now", self.run_id, why)
    try:
      remove_temp_files(self.run_dir)
      write_summary(self.run_dir, self.stopped_summary(reason))
      self.close(STOPPED)
    finally:
      logging.shutdown()
      os._exit(EXIT_STOPPED)


def write_summary(run_dir: str, summary: Dict[str, Any]) -> None:
  """summary.json of the run (local or remote folder)."""
  with FileSystems.create(FileSystems.join(run_dir, SUMMARY_FILE)) as f:
    f.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
