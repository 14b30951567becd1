"""LookupVineRows: per-event metadata lookups for streaming, batched across bundles and cached.

    KeyByLookupShard -> BatchLookups -> LookupRows

In streaming the whole BigQuery table cannot be re-read per window, and a side input
of a million rows refreshed periodically would hold hundreds of MB on every worker.
So vine ids are gathered into batches across bundles (`BatchByShardFn`, a
GroupIntoBatches-style state buffer keyed by one of `LOOKUP_SHARDS` shards: at most
`batch_size` events, and none waits longer than `max_wait_seconds` for its batch to
fill), each batch is looked up in one query, and rows are remembered in a bounded LRU
cache. Each event leaves with its own timestamp (its arrival time), as before. A streaming bundle is often one or two
events: a query per bundle was a full join per event. The BigQuery lookup runs the
seed's query restricted with a query parameter (`WHERE p.vineId IN UNNEST(@ids)`): ids
never enter the SQL text, and they are validated as Vine ids before that anyway. Its
query jobs run in (and are billed to) the job's project (`billing_project`), like the
batch read; the tables are named with --bigquery-project in the SQL. A missing row
means `metadata_missing`, as in batch. Locally (`--rows`) the same lookup reads the
NDJSON file.

Errors never stall the stream (an exception out of a streaming DoFn is retried by
Dataflow forever): a failed lookup is retried `LOOKUP_ATTEMPTS` times, then each of
its events is a `read_rows` dead letter of class `transient_exhausted` (replayable by
a batch run). A configuration error (access denied, table or dataset not found, bad
query: it will fail the same way every time) is logged once per worker process and
counted once (`row_lookup_config_errors`); from then on this process sends no more
queries and every event is a `read_rows` dead letter of class `config`, until the job
is drained and started again with the fix (docs/streaming.md).

Input: (vine_id, SourceEvent). Outputs: WorkItem (main) and dead letters.
"""

import collections
import json
import logging
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
  BagStateSpec,
  ReadModifyWriteStateSpec,
  TimerSpec,
  on_timer,
)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.core.backoff import exponential_backoff
from transforms.core.ids import is_vine_id
from transforms.core.records import BadInput, VineRow, WorkItem
from transforms.core.rows import parse_row
from transforms.io.vine_rows import seed_query
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.cap import shard_of
from transforms.runtime.outcomes import StopRun

_LOG = logging.getLogger(__name__)

CACHE_SIZE = 100_000
ROW_LOOKUPS = "row_lookups"  # counter: ids looked up (cache misses)
ROW_LOOKUP_FAILURES = "row_lookup_failures"  # counter: lookups that failed every attempt
ROW_LOOKUP_CONFIG_ERRORS = "row_lookup_config_errors"  # counter: once per worker process
LOOKUP_SHARDS = 16  # parallel batches; each fills up to batch_size or waits max_wait_seconds
LOOKUP_ATTEMPTS = 3
_RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS = 1.0, 8.0
# HTTP statuses of errors that repeat on every call: the configuration must change.
_CONFIG_STATUSES = (400, 401, 403, 404)
# BigQuery answers 403 for these too, but they pass: retry them.
_TRANSIENT_REASONS = ("rateLimitExceeded", "quotaExceeded", "backendError")
# The seed query has no WHERE of its own, so this suffix is its only filter.
LOOKUP_QUERY_SUFFIX = "\nWHERE p.vineId IN UNNEST(@ids)"


class FileRowLookup:
  """Rows from a local NDJSON file (the local stack's stand-in for BigQuery)."""

  def __init__(self, path: str):
    self._rows: Dict[str, Dict[str, Any]] = {}
    for match in FileSystems.match([path])[0].metadata_list:
      with FileSystems.open(match.path) as f:
        for line in f:
          line = line.strip()
          if line:
            try:
              raw = json.loads(line)
            except ValueError:
              continue
            if isinstance(raw, dict) and is_vine_id(raw.get("vineId")):
              self._rows.setdefault(raw["vineId"], raw)

  def lookup(self, vine_ids: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    return {v: self._rows[v] for v in vine_ids if v in self._rows}


class BigQueryRowLookup:
  """The seed's query for a batch of vine ids, as a parameterised BigQuery query."""

  def __init__(self, project: str, dataset: str, client=None,
               billing_project: Optional[str] = None):
    """The tables are read from `project`; the query jobs run in `billing_project` (or it)."""
    self._sql = seed_query(project, dataset) + LOOKUP_QUERY_SUFFIX
    if client is None:
      from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
      client = bigquery.Client(project=billing_project or project)
    self._client = client

  def lookup(self, vine_ids: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    ids = sorted(set(vine_ids))
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)])
    rows = self._client.query(self._sql, job_config=config).result()
    return {dict(r)["vineId"]: dict(r) for r in rows}


def is_config_error(exc: BaseException) -> bool:
  """Whether a lookup error will repeat until the configuration changes (never retried).

  StopRun, and HTTP 400/401/403/404 answers (google.api_core errors carry `.code`),
  except BigQuery's 403s for rate limits and quotas.
  """
  if isinstance(exc, StopRun):
    return True
  if getattr(exc, "code", None) not in _CONFIG_STATUSES:
    return False
  reasons = [e.get("reason") for e in getattr(exc, "errors", None) or () if isinstance(e, dict)]
  return not any(reason in _TRANSIENT_REASONS for reason in reasons)


CONFIG_LATCH = dl.ConfigLatch("LookupVineRows", "every event is a read_rows dead letter (class "
                               "config)", ROW_LOOKUP_CONFIG_ERRORS)


class BatchByShardFn(beam.DoFn):
  """(shard, (vine_id, SourceEvent)) -> (shard, [(vine_id, SourceEvent, timestamp micros)]).

  Like GroupIntoBatches: a batch leaves when it holds `batch_size` events, or when its
  first event has waited `max_wait_seconds`, by two timers: processing time (wall
  clock, what bounds the wait on a runner) and event time (the event's arrival time
  plus the wait, passed by the source's watermark as wall time goes by; it is also what
  a TestStream can drive, whose processing-time clock starts at zero). Whichever fires
  first sends the batch and clears the other. Unlike GroupIntoBatches, every event
  keeps its timestamp (GroupIntoBatches stamps a batch with its flush time).
  """

  EVENTS = BagStateSpec("events", coders.FastPrimitivesCoder())
  COUNT = ReadModifyWriteStateSpec("count", coders.VarIntCoder())
  WAIT_WALL = TimerSpec("wait_wall", TimeDomain.REAL_TIME)
  WAIT_EVENT = TimerSpec("wait_event", TimeDomain.WATERMARK)

  def __init__(self, batch_size: int, max_wait_seconds: float):
    super().__init__()
    self._batch_size = max(1, batch_size)
    self._wait = Duration(max_wait_seconds)

  def process(self, element, timestamp=beam.DoFn.TimestampParam,
              events=beam.DoFn.StateParam(EVENTS), count=beam.DoFn.StateParam(COUNT),
              wait_wall=beam.DoFn.TimerParam(WAIT_WALL),
              wait_event=beam.DoFn.TimerParam(WAIT_EVENT)) -> Iterator[Any]:
    shard, (vine_id, source) = element
    events.add((vine_id, source, timestamp.micros))
    n = (count.read() or 0) + 1
    count.write(n)
    if n == 1:
      wait_wall.set(Timestamp.now() + self._wait)
      wait_event.set(timestamp + self._wait)
    if n >= self._batch_size:
      yield from self._flush(shard, events, count, wait_wall, wait_event)

  @on_timer(WAIT_WALL)
  def on_wait_wall(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                   count=beam.DoFn.StateParam(COUNT), wait_wall=beam.DoFn.TimerParam(WAIT_WALL),
                   wait_event=beam.DoFn.TimerParam(WAIT_EVENT)) -> Iterator[Any]:
    yield from self._flush(key, events, count, wait_wall, wait_event)

  @on_timer(WAIT_EVENT)
  def on_wait_event(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                    count=beam.DoFn.StateParam(COUNT), wait_wall=beam.DoFn.TimerParam(WAIT_WALL),
                    wait_event=beam.DoFn.TimerParam(WAIT_EVENT)) -> Iterator[Any]:
    yield from self._flush(key, events, count, wait_wall, wait_event)

  @staticmethod
  def _flush(shard, events, count, wait_wall, wait_event) -> Iterator[Any]:
    batch = list(events.read())
    events.clear()
    count.clear()
    wait_wall.clear()
    wait_event.clear()
    if batch:
      yield shard, batch


class LookupVineRowsFn(beam.DoFn):
  """(shard, [(vine_id, SourceEvent, timestamp micros), ...]) -> WorkItem with its row (or `metadata_missing`).

  A failed lookup makes dead letters instead (see the module docstring).
  """

  OUTPUTS = (dl.DEAD_LETTER,)

  def __init__(self, run_id: str = "", rows_path: Optional[str] = None,
               project: Optional[str] = None, dataset: Optional[str] = None,
               lookup_factory=None, billing_project: Optional[str] = None,
               attempts: int = LOOKUP_ATTEMPTS, retry_base_seconds: float = _RETRY_BASE_SECONDS):
    super().__init__()
    self._run_id = run_id
    self._rows_path = rows_path
    self._project = project
    self._dataset = dataset
    self._billing_project = billing_project
    self._attempts = max(1, attempts)
    self._retry_base = retry_base_seconds
    self._lookup_factory = lookup_factory  # tests inject a fake client this way

  def setup(self):
    self._lookup = None
    self._cache: "collections.OrderedDict[str, Optional[VineRow]]" = collections.OrderedDict()

  def _client(self):
    # Made at the first lookup, not in setup(): a client that cannot be made is a
    # configuration error like any other, reported once and dead-lettered.
    if self._lookup is None:
      if self._lookup_factory is not None:
        self._lookup = self._lookup_factory()
      elif self._rows_path:
        self._lookup = FileRowLookup(self._rows_path)
      else:
        self._lookup = BigQueryRowLookup(self._project, self._dataset,
                                         billing_project=self._billing_project)
    return self._lookup

  def process(self, batch: Tuple[int, Iterable[Any]]) -> Iterator[Any]:
    events = list(batch[1])
    missing = sorted({event[0] for event in events if event[0] not in self._cache})
    failure = None
    if missing:
      failure = self._look_up(missing)
    for vine_id, source, micros in events:
      at = Timestamp(micros=micros)
      accounting.born()
      item = WorkItem(vine_id=vine_id, source=source, row=self._cache.get(vine_id),
                      openvine_id=source.openvine_ids[0] if source.openvine_ids else None)
      if failure is not None and vine_id not in self._cache:
        error_class, error, attempts = failure
        yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, TimestampedValue(dl.dead_letter_for_item(
            self._run_id, dl.STAGE_READ_ROWS, error_class, error, item, attempts=attempts), at))
        continue
      if item.row is None:
        accounting.inc(accounting.METADATA_MISSING)
        item = item.with_note(accounting.METADATA_MISSING)
      yield TimestampedValue(item, at)

  def _look_up(self, missing: List[str]) -> Optional[Tuple[str, str, int]]:
    """Fills the cache for `missing`; returns (error class, error, attempts) when it cannot."""
    if CONFIG_LATCH.reason is not None:
      return dl.CONFIG, "row lookup stopped: %s" % CONFIG_LATCH.reason, 0
    for attempt in range(1, self._attempts + 1):
      try:
        found = self._client().lookup(missing)
        break
      except Exception as exc:  # pylint: disable=broad-except
        if is_config_error(exc):
          return dl.CONFIG, "row lookup: %s" % CONFIG_LATCH.trip(exc), attempt
        if attempt == self._attempts:
          accounting.inc(ROW_LOOKUP_FAILURES)
          _LOG.warning("LookupVineRows: %d ids not looked up after %d attempts (%s)",
                       len(missing), attempt, type(exc).__name__)
          return (dl.TRANSIENT_EXHAUSTED, "row lookup failed after %d attempts: %s: %s"
                  % (attempt, type(exc).__name__, (str(exc).splitlines() or [""])[0][:300]),
                  attempt)
        time.sleep(exponential_backoff(attempt, self._retry_base, _RETRY_CAP_SECONDS))
    accounting.inc(ROW_LOOKUPS, len(missing))
    for vine_id in missing:
      raw = found.get(vine_id)
      try:
        row = parse_row(raw) if raw is not None else None
      except BadInput:
        row = None
      self._remember(vine_id, row)
    return None

  def _remember(self, vine_id: str, row: Optional[VineRow]) -> None:
    self._cache[vine_id] = row
    self._cache.move_to_end(vine_id)
    while len(self._cache) > CACHE_SIZE:
      self._cache.popitem(last=False)


class LookupVineRows(beam.PTransform):
  """(vine_id, SourceEvent) -> {"main": WorkItem, "dead_letter": dead letters}, unbounded."""

  def __init__(self, run_id: str, rows_path: Optional[str] = None,
               project: Optional[str] = None, dataset: Optional[str] = None,
               billing_project: Optional[str] = None, batch_size: int = 200,
               max_wait_seconds: float = 5.0, lookup_factory=None,
               retry_base_seconds: float = _RETRY_BASE_SECONDS):
    super().__init__()
    self._batch_size = batch_size
    self._max_wait = max_wait_seconds
    self._fn = LookupVineRowsFn(run_id, rows_path=rows_path, project=project, dataset=dataset,
                                lookup_factory=lookup_factory, billing_project=billing_project,
                                retry_base_seconds=retry_base_seconds)

  def expand(self, keyed):
    looked_up = (
        keyed
        | "KeyByLookupShard" >> beam.Map(lambda kv: (shard_of(kv[0], LOOKUP_SHARDS), kv)).with_output_types(
            Tuple[int, Any])
        | "BatchLookups" >> beam.ParDo(BatchByShardFn(self._batch_size, self._max_wait))
        | "LookupRows" >> dl.tagged(self._fn))
    return {"main": looked_up.main, dl.DEAD_LETTER: looked_up[dl.DEAD_LETTER]}
