"""The dry run (`--dry_run=True`): what a run would do, printed instead of running it.

Beam's own option decides: `--dry_run` is Beam's TestOptions flag, and DataflowRunner
builds the job and returns before it submits anything when it is set. pipeline/main.py
then prints `plan()` instead of reading counters (a dry run has none) and writes
nothing. The plan names flags and places, never a secret: the token is only said to
be set, and a --token-secret or --kek reference shows its kind only.
"""

from typing import List, Optional
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import (
  GoogleCloudOptions,
  PipelineOptions,
  StandardOptions,
  TestOptions,
)
from apache_beam.portability.api import beam_runner_api_pb2

from pipeline.options import MODE_REPLAY, MigrationOptions, split_relays
from transforms.clients import secrets as secret_values
from transforms.io import local_files

MODE_BATCH = "batch"
MODE_STREAMING = "streaming"


def is_dry_run(options: PipelineOptions) -> bool:
  """Whether Beam treats this run as a dry run.

  Beam declares `--dry_run` without a type and tests its truth, so any value given
  (even "False") is a dry run to DataflowRunner: the same test is used here.
  """
  return bool(options.view_as(TestOptions).dry_run)


def run_mode(options: PipelineOptions) -> str:
  """batch, streaming or replay: the shape pipeline/graph.py builds."""
  if options.view_as(StandardOptions).streaming:
    return MODE_STREAMING
  if options.view_as(MigrationOptions).mode == MODE_REPLAY:
    return MODE_REPLAY
  return MODE_BATCH


def top_level_steps(proto: beam_runner_api_pb2.Pipeline) -> List[str]:
  """The top-level step labels of a pipeline proto, in the order they were applied.

  Beam wraps the graph in one root transform without inputs or outputs (its name is
  generated): its parts are the steps.
  """
  transforms = proto.components.transforms
  steps: List[str] = []
  for root_id in proto.root_transform_ids:
    root = transforms[root_id]
    if root.subtransforms and not root.inputs and not root.outputs:
      steps.extend(transforms[part].unique_name for part in root.subtransforms)
    else:
      steps.append(root.unique_name)
  return steps


def _runner_name(options: PipelineOptions) -> str:
  runner = options.view_as(StandardOptions).runner
  if not runner:
    return "DirectRunner (default)"
  return runner if isinstance(runner, str) else type(runner).__name__


def _host(url: str) -> str:
  """The host (and port) of a URL: where calls would go, without path or query."""
  parts = urlsplit(url or "")
  return parts.netloc or "none"


def _reference(value: str) -> str:
  """A secret reference (a --kek or --token-secret): only whether it is set, and its kind."""
  if not value:
    return "none"
  kind = value.split(":", 1)[0] if ":" in value else ""
  known = ("env", "file", "gcp-secret", "gcp-kms")
  return "set (%s)" % kind if kind in known else "set"


def _local_files(opts: MigrationOptions, mode: str) -> List[str]:
  """The files a bounded run writes under its run directory."""
  if mode == MODE_STREAMING:
    return []
  names = [local_files.DEAD_LETTERS_FILE, local_files.SKIPPED_FILE,
           local_files.PUBLISHED_FILE, local_files.MONITOR_FILE, local_files.SUMMARY_FILE]
  if opts.dead_letter_table or opts.results_table:
    names.append(local_files.BIGQUERY_FAILED_ROWS_FILE)
  return names


def plan(options: PipelineOptions, steps: List[str], run_id: str, run_dir: str,
         job_name: Optional[str] = None) -> str:
  """The dry run's report: runner, job, mode, steps, the settings that matter, outputs.

  Args:
    options: The run's options (Beam's and MigrationOptions).
    steps: Top-level step labels in graph order (see `top_level_steps`).
    run_id: The run id the records would carry.
    run_dir: Where the run's files would go (<output-dir>/<run-id>).
    job_name: The name of the job the runner built; default: --job_name or "none".
  """
  opts = options.view_as(MigrationOptions)
  cloud = options.view_as(GoogleCloudOptions)
  mode = run_mode(options)
  relays = split_relays(opts.relays)
  lines = ["dry run: nothing was submitted, run or written",
           "runner: %s" % _runner_name(options),
           "job name: %s" % (job_name or cloud.job_name or "none")]
  if cloud.project:
    lines.append("project: %s" % cloud.project)
  if cloud.region:
    lines.append("region: %s" % cloud.region)
  lines += ["mode: %s" % mode,
            "event kind: %s" % opts.event_kind,
            "run id: %s" % run_id,
            "steps (%d): %s" % (len(steps), ", ".join(steps)),
            "settings:",
            "  relays: %d (%s)" % (len(relays), ", ".join(_host(r) for r in relays)),
            "  migration API host: %s" % _host(opts.migration_api),
            "  CDN host: %s" % _host(opts.cdn_base),
            "  migration API token: %s" % (
                "Secret Manager reference %s" % _reference(opts.token_secret)
                if opts.token_secret else "env %s (set)" % secret_values.TOKEN_ENV_VAR),
            "  --api-limit: %d migrate calls in flight, job-wide (%d keys)"
            % (opts.api_limit, opts.api_limit),
            "  --publish-limit: %d events in flight per relay, job-wide" % opts.publish_limit,
            "  --min-relays: %s" % (opts.min_relays or "every relay (%d)" % len(relays)),
            "  keys db: %s" % (opts.keys_db or "none"),
            "  --kek: %s" % _reference(opts.kek)]
  if mode == MODE_REPLAY:
    lines += ["  replay from: %s" % opts.replay_from,
              "  replay filter: %s" % (opts.replay_filter or "every dead letter")]
  if mode != MODE_REPLAY and opts.rows is not None:
    lines.append("  rows: %s" % opts.rows)
  elif mode != MODE_REPLAY:
    lines.append("  rows: BigQuery %s.%s (the seed's query)"
                 % (opts.bigquery_project, opts.bigquery_dataset))
  if opts.events_file:
    lines.append("  events file: %s" % opts.events_file)
  lines += ["  dead-letter table: %s" % (opts.dead_letter_table or "none"),
            "  results table: %s" % (opts.results_table or "none")]
  files = _local_files(opts, mode)
  lines.append("outputs:")
  if files:
    lines.append("  %s/: %s" % (run_dir.rstrip("/"), ", ".join(files)))
  else:
    lines.append("  no run files (streaming writes to the tables only)")
  for what, table in (("dead letters", opts.dead_letter_table),
                      ("results", opts.results_table)):
    if table:
      lines.append("  %s: BigQuery %s" % (what, table))
  return "\n".join(secret_values.scrub(line) for line in lines) + "\n"
