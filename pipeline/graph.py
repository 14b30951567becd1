"""Builds the migration graph from options and an I/O set; never runs it.

Three shapes share the stages: batch (below), --streaming (ReadStreamEvents and
per-event LookupVineRows instead of the two reads and the join) and --mode replay
(dead letters entering at the stage that failed).

    ReadVineRows ─┐
                  ├─ JoinOnVineId ─ MigrateVideo ─ ComputeBlurhash ─ BuildVideoEvent
ReadRelayEvents ──┘                                                       │
                                  PublishEvents ─ SignEvent ─────────────┘

Every stage's dead letters, skips and monitor lines are flattened into one
collection each; `attach_local_sinks` writes them under the run's output dir.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from pipeline.options import MODE_REPLAY, MigrationOptions, split_relays
from transforms.clients.migration_contract import RetryPolicy
from transforms.core.records import KIND_32222, KIND_BOTH, SHORT_VIDEO_KIND, VIDEO_KIND
from transforms.io import local_files
from transforms.io.bigquery_tables import WriteDeadLettersToBigQuery, WriteResultsToBigQuery
from transforms.io.dead_letters import ReadDeadLetters
from transforms.io.relay_events import VIDEOS, ReadRelayEvents
from transforms.io.relay_stream import ReadStreamEvents
from transforms.io.row_lookup import LookupVineRows
from transforms.io.vine_rows import ReadVineRows
from transforms.runtime import outcomes as dl
from transforms.runtime.cap import CapInFlight
from transforms.stages import replay
from transforms.stages.blurhash import ComputeBlurhashFn
from transforms.stages.build import BuildVideoEventFn
from transforms.stages.join import JoinOnVineId
from transforms.stages.migrate import MigrateVideoFn
from transforms.stages.publish import PublishEventsFn
from transforms.stages.sign import SignEventFn
from transforms.stages.verify import VerifyUrlsFn

PUBLISHED = "published"
DEAD_LETTERS = "dead_letters"
SKIPPED = "skipped"
MONITOR = "monitor"


@dataclasses.dataclass
class IOSet:
  """The graph's seams: None means the real source (relays, NDJSON file or BigQuery)."""
  raw_rows: Optional[beam.PTransform] = None
  raw_events: Optional[beam.PTransform] = None
  raw_dead_letters: Optional[beam.PTransform] = None
  row_lookup_factory: Optional[Callable[[], Any]] = None  # streaming metadata lookups


def read_kinds(opts: MigrationOptions) -> Tuple[int, ...]:
  """Kinds read from the relays: 32222 (the inputs), and 34236 when it is published."""
  if opts.event_kind == KIND_32222:
    return (VIDEO_KIND,)
  return (VIDEO_KIND, SHORT_VIDEO_KIND)


def _retry_policy(opts: MigrationOptions) -> RetryPolicy:
  return RetryPolicy(max_attempts=opts.retry_attempts, base_delay=opts.retry_base_delay,
                     max_delay=opts.retry_base_delay * 16, timeout=opts.api_timeout)


def build_graph(p: beam.Pipeline, opts: MigrationOptions, run_id: str,
                io: Optional[IOSet] = None) -> Dict[str, beam.PCollection]:
  """Adds the whole migration (or a replay, with --mode replay) to `p`; returns its outputs."""
  io = io or IOSet()
  relays = split_relays(opts.relays)
  if opts.view_as(StandardOptions).streaming:
    return _streaming(p, opts, run_id, io)
  events = p | "ReadRelayEvents" >> ReadRelayEvents(
      relays, run_id, page_size=opts.page_size, max_pages=1 if opts.test_mode else None,
      raw_events=io.raw_events, events_file=opts.events_file, kinds=read_kinds(opts))
  if opts.mode == MODE_REPLAY:
    return _replay(p, opts, run_id, io, events)
  rows = p | "ReadVineRows" >> ReadVineRows(
      run_id, rows_path=opts.rows, project=opts.bigquery_project,
      dataset=opts.bigquery_dataset, raw_rows=io.raw_rows,
      temp_dataset=opts.bigquery_temp_dataset)
  joined = ((rows["main"], events["main"], events[VIDEOS])
            | "JoinOnVineId" >> JoinOnVineId(only_read_events=opts.test_mode))
  return apply_stages({dl.STAGE_MIGRATE: joined["main"]}, opts, run_id,
                      dead=[rows[dl.DEAD_LETTER], events[dl.DEAD_LETTER]],
                      skipped=[events[dl.SKIPPED], joined[dl.SKIPPED]])


def _streaming(p, opts, run_id, io) -> Dict[str, beam.PCollection]:
  """New and changed events as they reach the relays; metadata looked up per event."""
  since = opts.since or int(time.time()) - DEFAULT_STREAM_LOOKBACK
  events = p | "ReadStreamEvents" >> ReadStreamEvents(
      split_relays(opts.relays), run_id, since, raw_events=io.raw_events,
      state_ttl_seconds=opts.stream_state_ttl_days * 86400)
  # Query jobs bill the job's project (as the batch read does); --bigquery-project without one.
  billing = opts.view_as(GoogleCloudOptions).project or opts.bigquery_project
  items = events["main"] | "LookupVineRows" >> LookupVineRows(
      run_id, rows_path=opts.rows, project=opts.bigquery_project,
      dataset=opts.bigquery_dataset, billing_project=billing,
      batch_size=opts.lookup_batch_size, max_wait_seconds=opts.lookup_max_wait,
      lookup_factory=io.row_lookup_factory)
  return apply_stages({dl.STAGE_MIGRATE: items["main"]}, opts, run_id,
                      dead=[events[dl.DEAD_LETTER], items[dl.DEAD_LETTER]],
                      skipped=[events[dl.SKIPPED]])


def _replay(p, opts, run_id, io, events) -> Dict[str, beam.PCollection]:
  """Dead letters -> items entering at the stage that failed, refreshed from the relays."""
  items = (p
           | "ReadDeadLetters" >> ReadDeadLetters(opts.replay_from, raw=io.raw_dead_letters)
           | "ToReplayItems" >> dl.tagged(replay.ToReplayItemFn(
               replay.parse_replay_filter(opts.replay_filter))))
  entries = ({"replay": items.main, "events": events["main"], "videos": events[VIDEOS]}
             | "JoinWithRelayState" >> beam.CoGroupByKey()
             | "RefreshFromRelays" >> beam.ParDo(replay.RefreshFromRelaysFn()).with_outputs(
                 *replay.ENTRY_STAGES))
  # The relays' (and --events-file's) bad events and events without a vine id are
  # counted as they are read: their records are written too, so files match the summary.
  outputs = apply_stages({stage: entries[stage] for stage in replay.ENTRY_STAGES}, opts, run_id,
                         dead=[events[dl.DEAD_LETTER]],
                         skipped=[items[dl.SKIPPED], events[dl.SKIPPED]])
  outputs[DEAD_LETTERS] = outputs[DEAD_LETTERS] | "LinkReplayedDeadLetters" >> beam.Map(
      replay.link_replay)
  return outputs


DEFAULT_STREAM_LOOKBACK = 3600


def _enter(label: str, previous, entries, stage):
  """A stage's input: the previous stage's output plus items entering here (replay)."""
  if stage not in entries:
    return previous
  if previous is None:
    return entries[stage]
  return (previous, entries[stage]) | label >> beam.Flatten()


def apply_stages(entries: Dict[str, beam.PCollection], opts: MigrationOptions, run_id: str,
                 dead: List[beam.PCollection],
                 skipped: List[beam.PCollection]) -> Dict[str, beam.PCollection]:
  """MigrateVideo -> ComputeBlurhash -> BuildVideoEvent -> SignEvent -> PublishEvents.

  Each stage's DoFn declares its tagged outputs (`OUTPUTS`); its dead letters, skips
  and monitor lines are gathered from whatever it declares.

  Args:
    entries: WorkItems entering at a stage ("migrate" in a normal run; any stage
      in a replay).
    dead, skipped: dead letters and skips of the stages before these.
  """
  relays = split_relays(opts.relays)
  streaming = opts.view_as(StandardOptions).streaming
  stages = []

  def stage(label: str, items: beam.PCollection, fn: beam.DoFn):
    result = items | label >> dl.tagged(fn)
    stages.append((result, fn.OUTPUTS))
    return result

  # The caps are the number of keys (transforms/runtime/cap.py); the groups and the
  # Reshuffle are checkpoints: a retried bundle never calls the API or signs again.
  to_migrate = entries[dl.STAGE_MIGRATE] | "CapMigrateCalls" >> CapInFlight(
      opts.api_limit, streaming)
  migrated = stage("MigrateVideo", to_migrate, MigrateVideoFn(
      opts.migration_api, opts.cdn_base, run_id, max_in_flight=opts.api_limit,
      policy=_retry_policy(opts), force_remigrate=opts.force_remigrate,
      token_secret=opts.token_secret, stop_on_config=not streaming).takes_groups())
  checkpoint = migrated.main | "CheckpointMigrated" >> beam.Reshuffle()
  hashed = stage("ComputeBlurhash", _enter("EnterAtBlurhash", checkpoint, entries,
                                           dl.STAGE_BLURHASH),
                 ComputeBlurhashFn(opts.cdn_base, run_id, require_blurhash=opts.require_blurhash))
  # Last before the builders, so every URL an event carries is checked (after the blurhash,
  # which fetches only from --cdn-base and decodes real images only, a placeholder fails).
  verified = stage("VerifyUrls", _enter("EnterAtVerify", hashed.main, entries, dl.STAGE_VERIFY),
                   VerifyUrlsFn(opts.cdn_base, run_id, enabled=not opts.no_verify_urls))
  built = stage("BuildVideoEvent", _enter("EnterAtBuild", verified.main, entries, dl.STAGE_BUILD),
                BuildVideoEventFn(run_id, force_republish=opts.force_republish,
                                  event_kind=opts.event_kind))
  signed = stage("SignEvent", built.main, SignEventFn(opts.keys_db, run_id, kek_spec=opts.kek))
  publish_groups = max(1, opts.publish_limit // (2 if opts.event_kind == KIND_BOTH else 1))
  to_publish = (_enter("EnterAtPublish", signed.main, entries, dl.STAGE_PUBLISH)
                | "CapPublishes" >> CapInFlight(publish_groups, streaming))
  published = stage("PublishEvents", to_publish,
                    PublishEventsFn(relays, run_id, keys_db=opts.keys_db, kek_spec=opts.kek,
                                    min_relays=opts.min_relays or None,
                                    max_in_flight=opts.publish_limit).takes_groups())

  def gathered(tag: str) -> tuple:
    return tuple(result[tag] for result, outputs in stages if tag in outputs)

  dead_all = (tuple(dead) + gathered(dl.DEAD_LETTER)) | "FlattenDeadLetters" >> beam.Flatten()
  skipped_all = (tuple(skipped) + gathered(dl.SKIPPED)) | "FlattenSkips" >> beam.Flatten()
  failed = dead_all | "FormatFailedLines" >> beam.Map(dl.monitor_failed)  # one per dead letter
  monitor = (gathered(dl.MONITOR) + (failed,)) | "FlattenMonitorLines" >> beam.Flatten()
  return {PUBLISHED: published.main, DEAD_LETTERS: dead_all, SKIPPED: skipped_all,
          MONITOR: monitor}


def attach_local_sinks(outputs: Dict[str, beam.PCollection], run_dir: str) -> None:
  """Writes every output as one file under run_dir."""
  outputs[DEAD_LETTERS] | "WriteDeadLetters" >> local_files.WriteNdjson(
      os.path.join(run_dir, local_files.DEAD_LETTERS_FILE))
  outputs[SKIPPED] | "WriteSkips" >> local_files.WriteNdjson(
      os.path.join(run_dir, local_files.SKIPPED_FILE))
  outputs[PUBLISHED] | "WriteResults" >> local_files.WriteNdjson(
      os.path.join(run_dir, local_files.PUBLISHED_FILE))
  outputs[MONITOR] | "WriteMonitorLog" >> local_files.WriteLines(
      os.path.join(run_dir, local_files.MONITOR_FILE))


def attach_bigquery_sinks(outputs: Dict[str, beam.PCollection], opts: MigrationOptions,
                          run_dir: str, streaming: bool = False, test_client=None) -> None:
  """Dead letters and results to their BigQuery tables when configured.

  Rows BigQuery refuses come back as values and go to a local NDJSON file: never lost.
  """
  failed = []
  if opts.dead_letter_table:
    failed.append(outputs[DEAD_LETTERS] | "WriteDeadLettersToBigQuery" >> WriteDeadLettersToBigQuery(
        opts.dead_letter_table, streaming, test_client=test_client))
  if opts.results_table:
    failed.append(outputs[PUBLISHED] | "WriteResultsToBigQuery" >> WriteResultsToBigQuery(
        opts.results_table, streaming, test_client=test_client))
  if failed and not streaming:  # the writers log and count refused rows; batch also keeps them
    (tuple(failed) | "FlattenBigQueryFailures" >> beam.Flatten()
     | "WriteBigQueryFailures" >> local_files.WriteNdjson(
         os.path.join(run_dir, local_files.BIGQUERY_FAILED_ROWS_FILE)))
