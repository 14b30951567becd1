"""Entry point: parse, validate, run the migration, print the accounting.

    python -m pipeline.main --relays ws://127.0.0.1:7777 --rows rows.ndjson \\
        --migration-api http://127.0.0.1:8080 --cdn-base http://127.0.0.1:8080 \\
        --keys-db keys.db --output-dir out

Exit codes: 0 when the run finished and its accounting adds up; 1 when it does not
add up or the run failed; 2 for bad configuration (the message names the flag); 3 when
the run stopped before the end (SIGINT, SIGTERM, or a configuration error found while
running, such as a refused API token): summary.json says `stopped` and why
(pipeline/run_record.py).
With --dry_run=True the graph is built (and, on DataflowRunner, the job translated
offline), the plan is printed (pipeline/dry_run.py) and nothing runs or is written: 0.
"""

import datetime
import logging
import os
import sys
import time
import uuid
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import dry_run, notify, preflight, progress, run_record
from pipeline.graph import attach_bigquery_sinks, attach_local_sinks, build_graph
from pipeline.keys import pin_secret_versions
from pipeline.options import MODE_REPLAY, ConfigError, MigrationOptions, help_text, validate
from transforms.clients import secrets as secret_values
from transforms.core.text import utc_now_iso
from transforms.io.local_files import SUMMARY_FILE, run_output_dir
from transforms.runtime import accounting
from transforms.runtime.outcomes import StopRun

_LOG = logging.getLogger("vine_migration")


def new_run_id() -> str:
  now = datetime.datetime.now(datetime.timezone.utc)
  return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def configure_runner(options: PipelineOptions, workers: int) -> None:
  """Local runs: never the multi_threading mode (it corrupts CoGroupByKey data here)."""
  direct = options.view_as(DirectOptions)
  if direct.direct_running_mode == "multi_threading":
    raise ConfigError("--direct_running_mode=multi_threading corrupts CoGroupByKey data on "
                      "this Beam version; use in_memory or multi_processing")
  if workers > 1:
    direct.direct_running_mode = "multi_processing"
    direct.direct_num_workers = workers
  standard = options.view_as(StandardOptions)
  if not standard.runner and not standard.streaming:
    # The DirectRunner first tries to fetch and start Prism and, offline, falls back
    # to the FnApiRunner after about a second: start there.
    standard.runner = "FnApiRunner"


def pin_local_paths(opts: MigrationOptions) -> None:
  """Local paths made absolute: workers (a PortableRunner's worker pool, say) run in another
  working directory, where a relative path names another file or none."""
  for name in ("output_dir", "rows", "keys_db", "events_file"):
    value = getattr(opts, name, None)
    if value and "://" not in value:
      setattr(opts, name, os.path.abspath(value))


def read_counters(result) -> Dict[str, int]:
  counters: Dict[str, int] = {}
  query = result.metrics().query(MetricsFilter().with_namespace(accounting.NAMESPACE))
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    name = counter.key.metric.name
    counters[name] = counters.get(name, 0) + int(value or 0)
  return counters


def is_local_runner(options: PipelineOptions) -> bool:
  """Whether the runner works in this process's machine (its counters can be watched live)."""
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
  return not name or name in progress.LOCAL_RUNNERS


def local_workers(options: PipelineOptions, workers: int) -> int:
  """Worker processes of a local run: 1 for the in-process runner (its counts are ours).

  multi_processing mode runs every bundle in child processes, even with one worker.
  """
  direct = options.view_as(DirectOptions)
  if direct.direct_running_mode == "multi_processing":
    return max(2, workers, direct.direct_num_workers or 1)
  return 1


def output_files(run_dir: str) -> List[str]:
  """Names of the files in the run directory (local or remote), summary.json included."""
  names = {SUMMARY_FILE}
  try:
    for match in FileSystems.match([FileSystems.join(run_dir, "*")])[0].metadata_list:
      names.add(match.path.rstrip("/").rsplit("/", 1)[-1])
  except Exception:  # pylint: disable=broad-except
    _LOG.warning("could not list %s", run_dir)
  return sorted(names)


def run_facts(argv: List[str], opts: MigrationOptions, started: float, finished: float,
              events_published: int, files: List[str]) -> Dict:
  """What summary.json says about the run itself (pipeline/report.py reads these keys)."""
  seconds = max(0.0, finished - started)
  return {
      "argv": [secret_values.scrub(str(a)) for a in argv],
      "started_at": utc_now_iso(started),
      "finished_at": utc_now_iso(finished),
      "seconds": round(seconds, 3),
      "events_per_second": round(events_published / seconds, 2) if seconds > 0 else 0.0,
      "event_kind": opts.event_kind,
      "output_files": files,
  }


def run(argv: Optional[List[str]] = None) -> int:
  """Runs one migration; returns the process exit code."""
  logging.basicConfig(level=logging.INFO, format=run_record.LOG_FORMAT)
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv:
    print(help_text(), end="")
    return 0
  started = time.time()
  options = PipelineOptions(argv)
  opts = options.view_as(MigrationOptions)
  try:
    validate(opts)
    pin_local_paths(opts)
    configure_runner(options, opts.workers)
    if options.view_as(StandardOptions).streaming and not opts.dead_letter_table:
      raise ConfigError("--dead-letter-table: required with --streaming (dead letters go out "
                        "with streaming inserts; local files need a bounded run)")
    if not dry_run.is_dry_run(options):  # secret versions as numbers; a dry run stays offline
      for line in pin_secret_versions(opts):
        _LOG.info("secret version pinned for the workers: %s", line)
    preflight.check(opts, options, opts.run_id)  # what the flags point to; the lock
  except ConfigError as exc:
    print("configuration error: %s" % exc, file=sys.stderr)
    notify.config_error(opts, str(exc))
    return 2
  run_id = opts.run_id or new_run_id()
  run_dir = run_output_dir(opts.output_dir, run_id)
  dry = dry_run.is_dry_run(options)
  if not dry and "://" not in run_dir:
    os.makedirs(run_dir, exist_ok=True)
  _LOG.info("run %s: outputs under %s%s", run_id, run_dir, " (dry run)" if dry else "")

  accounting.reset_deferred()  # nothing left over from an earlier run in this process
  accounting.reset_live()
  pipeline = beam.Pipeline(options=options)
  outputs = build_graph(pipeline, opts, run_id)
  streaming = options.view_as(StandardOptions).streaming
  if not streaming:  # local files are written once, at the end of a bounded run
    attach_local_sinks(outputs, run_dir)
  attach_bigquery_sinks(outputs, opts, run_dir, streaming=streaming)
  if dry:
    return _dry_run(pipeline, options, run_id, run_dir)
  display = progress.for_run(no_progress=opts.no_progress, streaming=streaming,
                             workers=local_workers(options, opts.workers),
                             local=is_local_runner(options), replay=opts.mode == MODE_REPLAY)
  record = None  # the journal, progress file, log file and clean stop of a local bounded run
  if not dry and not streaming and "://" not in run_dir:
    record = run_record.RunRecord(run_dir, run_id, argv).start()
  finished_ok = False
  watch = notify.watch_dead_letters(opts, run_id, is_local_runner(options) and not streaming
                                    and local_workers(options, opts.workers) == 1)
  try:
    if display is not None:
      display.start()
    if record is not None:
      record.arm_signals()
    result = pipeline.run()
    if streaming:
      print("streaming job started (run %s); counters are on the runner's monitoring page"
            % run_id)
      result.wait_until_finish()
      return 0
    result.wait_until_finish()
    finished_ok = True
  except Exception as exc:  # pylint: disable=broad-except
    stop = _find_stop(exc)
    if stop is not None:
      if display is not None:
        display.stop(ok=False)
        display = None
      signalled = record is not None and record.stop_reason is not None
      (_LOG.warning if signalled else _LOG.error)("run %s stopped: %s", run_id, stop)
      print("run stopped: %s" % stop, file=sys.stderr)
      if record is None:
        code = run_record.EXIT_STOPPED
      else:
        code = record.stop(stop, lambda summary: summary.update(run_facts(
            argv, opts, started, time.time(),
            summary["counters"].get(accounting.EVENTS_PUBLISHED, 0), output_files(run_dir))))
      notify.run_stopped(opts, run_id, run_dir, stop, code)
      return code
    if record is not None:
      record.close("failed")
    raise
  finally:
    if record is not None:
      record.disarm_signals()
    watch.stop()
    preflight.release_lock()
    if display is not None:
      display.stop(ok=finished_ok)
  finished = time.time()
  counters = read_counters(result)
  summary = accounting.summarise(counters)
  summary.update({"run_id": run_id, "counters": counters, "status": run_record.FINISHED})
  # Events, not vines: with --event-kind both a vine publishes two.
  events = counters.get(accounting.EVENTS_PUBLISHED, summary["published"])
  summary.update(run_facts(argv, opts, started, finished, events,
                           output_files(run_dir)))
  run_record.write_summary(run_dir, summary)
  if record is not None:
    record.close(run_record.FINISHED)
  tables = [(what, name) for what, name in (("dead letters", opts.dead_letter_table),
                                            ("results", opts.results_table)) if name]
  progress.print_summary(summary, run_dir, tables)
  code = 0 if summary["balanced"] else 1
  notify.run_finished(opts, run_id, run_dir, code)  # bounded; never changes the code
  return code


def _dry_run(pipeline: beam.Pipeline, options: PipelineOptions, run_id: str,
             run_dir: str) -> int:
  """Prints what would run; nothing runs, so no counters, summary or accounting check.

  DataflowRunner's dry run translates the job (overrides, proto, Job) offline and
  returns before submitting: its proto and job name are the ones shown. Other
  runners ignore --dry_run and would really run: for them the graph is only translated.
  """
  job = None
  if "DataflowRunner" in str(options.view_as(StandardOptions).runner or ""):
    job = getattr(pipeline.run(), "job", None)
  proto = job.proto_pipeline if job is not None else pipeline.to_runner_api()
  job_name = job.proto.name if job is not None else None
  print(dry_run.plan(options, dry_run.top_level_steps(proto), run_id, run_dir, job_name),
        end="")
  return 0


def _find_stop(exc: BaseException) -> Optional[str]:
  """The StopRun message inside a runner's wrapped exception, if any."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, StopRun):
      return str(exc)
    text = str(exc)
    if "StopRun" in text:
      tail = text[text.rfind("StopRun"):]
      return tail.split("\n")[0].replace("StopRun: ", "").strip()
    exc = exc.__cause__ or exc.__context__
  return None


def main():
  sys.exit(run())


if __name__ == "__main__":
  main()
