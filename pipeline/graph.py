"""Builds the migration graph from options and an I/O set; never runs it.

    ReadVineRows ─┐
                  ├─ JoinOnVineId ─ MigrateVideo ─ ComputeBlurhash ─ BuildVideoEvent
ReadRelayEvents ──┘                                                       │
                                  PublishEvents ─ SignEvent ─────────────┘

Every stage's dead letters, skips and monitor lines are flattened into one
collection each; `attach_local_sinks` writes them under the run's output dir.
"""

import dataclasses
import os
from typing import Dict, Optional

import apache_beam as beam

from pipeline.options import MigrationOptions, split_relays
from transforms import dead_letters as dl
from transforms import sinks
from transforms.bigquery_source import ReadVineRows
from transforms.blurhash_stage import ComputeBlurhashFn
from transforms.join import JoinOnVineId
from transforms.migrate import MigrateVideoFn
from transforms.migration_api import RetryPolicy
from transforms.publish import PublishEventsFn
from transforms.relay_source import ReadRelayEvents
from transforms.signing import BuildVideoEventFn, SignEventFn

PUBLISHED = "published"
DEAD_LETTERS = "dead_letters"
SKIPPED = "skipped"
MONITOR = "monitor"


@dataclasses.dataclass
class IOSet:
  """The graph's seams: None means the real source (relays, NDJSON file or BigQuery)."""
  raw_rows: Optional[beam.PTransform] = None
  raw_events: Optional[beam.PTransform] = None


def _retry_policy(opts: MigrationOptions) -> RetryPolicy:
  return RetryPolicy(max_attempts=opts.retry_attempts, base_delay=opts.retry_base_delay,
                     max_delay=opts.retry_base_delay * 16, timeout=opts.api_timeout)


def build_graph(p: beam.Pipeline, opts: MigrationOptions, run_id: str,
                io: Optional[IOSet] = None) -> Dict[str, beam.PCollection]:
  """Adds the whole migration to `p`; returns its named outputs."""
  io = io or IOSet()
  relays = split_relays(opts.relays)
  rows = p | "ReadVineRows" >> ReadVineRows(
      run_id, rows_path=opts.rows, project=os.environ.get("BIGQUERY_PROJECT_ID"),
      dataset=os.environ.get("BIGQUERY_DATASET_ID"), raw_rows=io.raw_rows)
  events = p | "ReadRelayEvents" >> ReadRelayEvents(
      relays, run_id, page_size=opts.page_size, max_pages=1 if opts.test_mode else None,
      raw_events=io.raw_events, events_file=opts.events_file)
  joined = (rows["main"], events["main"]) | "JoinOnVineId" >> JoinOnVineId()

  migrated = joined["main"] | "MigrateVideo" >> beam.ParDo(MigrateVideoFn(
      opts.migration_api, opts.cdn_base, run_id, max_in_flight=opts.api_limit,
      policy=_retry_policy(opts), force_remigrate=opts.force_remigrate)).with_outputs(
          dl.DEAD_LETTER, dl.SKIPPED, dl.MONITOR, main="main")
  hashed = migrated.main | "ComputeBlurhash" >> beam.ParDo(ComputeBlurhashFn(
      opts.cdn_base, run_id, require_blurhash=opts.require_blurhash)).with_outputs(
          dl.DEAD_LETTER, main="main")
  built = hashed.main | "BuildVideoEvent" >> beam.ParDo(BuildVideoEventFn(
      run_id, force_republish=opts.force_republish)).with_outputs(
          dl.DEAD_LETTER, dl.SKIPPED, main="main")
  signed = built.main | "SignEvent" >> beam.ParDo(SignEventFn(
      opts.keys_db, run_id, kek_spec=opts.kek)).with_outputs(dl.DEAD_LETTER, main="main")
  published = signed.main | "PublishEvents" >> beam.ParDo(PublishEventsFn(
      relays, run_id, keys_db=opts.keys_db, kek_spec=opts.kek, min_relays=opts.min_relays or None,
      max_in_flight=opts.publish_limit)).with_outputs(dl.DEAD_LETTER, dl.MONITOR, main="main")

  dead = ((rows[dl.DEAD_LETTER], events[dl.DEAD_LETTER], migrated[dl.DEAD_LETTER],
           hashed[dl.DEAD_LETTER], built[dl.DEAD_LETTER], signed[dl.DEAD_LETTER],
           published[dl.DEAD_LETTER])
          | "FlattenDeadLetters" >> beam.Flatten())
  skipped = ((events[dl.SKIPPED], joined[dl.SKIPPED], migrated[dl.SKIPPED], built[dl.SKIPPED])
             | "FlattenSkips" >> beam.Flatten())
  monitor = ((migrated[dl.MONITOR], published[dl.MONITOR])
             | "FlattenMonitorLines" >> beam.Flatten())
  return {PUBLISHED: published.main, DEAD_LETTERS: dead, SKIPPED: skipped, MONITOR: monitor}


def attach_local_sinks(outputs: Dict[str, beam.PCollection], run_dir: str) -> None:
  """Writes every output as one file under run_dir."""
  outputs[DEAD_LETTERS] | "WriteDeadLetters" >> sinks.WriteNdjson(
      os.path.join(run_dir, sinks.DEAD_LETTERS_FILE))
  outputs[SKIPPED] | "WriteSkips" >> sinks.WriteNdjson(os.path.join(run_dir, sinks.SKIPPED_FILE))
  outputs[PUBLISHED] | "WriteResults" >> sinks.WriteNdjson(
      os.path.join(run_dir, sinks.PUBLISHED_FILE))
  outputs[MONITOR] | "WriteMonitorLog" >> sinks.WriteLines(
      os.path.join(run_dir, sinks.MONITOR_FILE))
