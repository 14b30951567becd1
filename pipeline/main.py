"""Entry point: parse, validate, run the migration, print the accounting.

    python -m pipeline.main --relays ws://127.0.0.1:7777 --rows rows.ndjson \\
        --migration-api http://127.0.0.1:8080 --cdn-base http://127.0.0.1:8080 \\
        --keys-db keys.db --output-dir out

Exit codes: 0 when the run finished and its accounting adds up; 1 when it does not
add up or the run failed; 2 for bad configuration (the message names the flag).
"""

import datetime
import json
import logging
import os
import sys
import uuid
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.graph import attach_bigquery_sinks, attach_local_sinks, build_graph
from pipeline.options import ConfigError, MigrationOptions, validate
from transforms import accounting
from transforms.concurrency import StopRun
from transforms.sinks import run_output_dir

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


def read_counters(result) -> Dict[str, int]:
  counters: Dict[str, int] = {}
  query = result.metrics().query(MetricsFilter().with_namespace(accounting.NAMESPACE))
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    name = counter.key.metric.name
    counters[name] = counters.get(name, 0) + int(value or 0)
  return counters


def format_summary(summary: Dict, counters: Dict[str, int], run_id: str, run_dir: str) -> str:
  lines = ["", "=== vine-migration run %s ===" % run_id,
           "vines in:        %d" % summary["vines_in"],
           "published:       %d" % summary["published"]]
  skipped = summary["skipped"]
  lines.append("skipped:         %d  %s" % (sum(skipped.values()), json.dumps(skipped)))
  dead = summary["dead_lettered"]
  lines.append("dead-lettered:   %d  %s" % (sum(dead.values()), json.dumps(dead)))
  lines.append("accounting:      %s (%d in = %d out)" % (
      "OK" if summary["balanced"] else "DOES NOT ADD UP", summary["vines_in"],
      summary["accounted"]))
  info = {k: v for k, v in sorted(counters.items())
          if not k.startswith((accounting.SKIPPED_PREFIX, accounting.DEAD_LETTER_PREFIX))}
  lines.append("counters:        %s" % json.dumps(info))
  lines.append("outputs:         %s" % run_dir)
  return "\n".join(lines)


def run(argv: Optional[List[str]] = None) -> int:
  """Runs one migration; returns the process exit code."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  options = PipelineOptions(argv)
  opts = options.view_as(MigrationOptions)
  try:
    validate(opts)
    configure_runner(options, opts.workers)
    if options.view_as(StandardOptions).streaming and not opts.dead_letter_table:
      raise ConfigError("--dead-letter-table: required with --streaming (dead letters go out "
                        "with streaming inserts; local files need a bounded run)")
  except ConfigError as exc:
    print("configuration error: %s" % exc, file=sys.stderr)
    return 2
  run_id = opts.run_id or new_run_id()
  run_dir = run_output_dir(opts.output_dir, run_id)
  if "://" not in run_dir:
    os.makedirs(run_dir, exist_ok=True)
  _LOG.info("run %s: outputs under %s", run_id, run_dir)

  accounting.reset_deferred()  # nothing left over from an earlier run in this process
  pipeline = beam.Pipeline(options=options)
  outputs = build_graph(pipeline, opts, run_id)
  streaming = options.view_as(StandardOptions).streaming
  if not streaming:  # local files are written once, at the end of a bounded run
    attach_local_sinks(outputs, run_dir)
  attach_bigquery_sinks(outputs, opts, run_dir, streaming=streaming)
  try:
    result = pipeline.run()
    if streaming:
      print("streaming job started (run %s); counters are on the runner's monitoring page"
            % run_id)
      result.wait_until_finish()
      return 0
    result.wait_until_finish()
  except Exception as exc:  # pylint: disable=broad-except
    stop = _find_stop(exc)
    if stop is not None:
      print("run stopped: %s" % stop, file=sys.stderr)
      return 1
    raise
  counters = read_counters(result)
  summary = accounting.summarise(counters)
  summary.update({"run_id": run_id, "counters": counters})
  with FileSystems.create(FileSystems.join(run_dir, "summary.json")) as f:
    f.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
  print(format_summary(summary, counters, run_id, run_dir))
  return 0 if summary["balanced"] else 1


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
