"""ReadStreamEvents: the streaming counterpart of ReadRelayEvents, and its unbounded source.

    SubscribeRelayEvents -> VerifyEvents -> KeepNewestPerAddress -> ExtractVineIds

Events arrive from live relay subscriptions (``SubscribeRelayEvents``, below),
de-duplicated by id and without the pipeline's own republished events. There is no
CoGroupByKey in streaming: metadata is looked up per event (row_lookup.py), so no
window ever waits for the other side of a join, and late data has nothing to be late
for: every event is processed whenever it arrives. What batch does with a combine
(keep the newest version per (pubkey, d)) streaming does with per-key state in the
global window: a version older than one already processed is skipped `superseded`.
That state expires: a processing-time timer, reset whenever a newer version is kept,
clears it `state_ttl_seconds` later (--stream-state-ttl-days, default 14), so state
holds only the addresses that changed lately instead of every address ever seen.

The source, in two layers over ``RelaySubscriptionClient``
(``transforms.clients.relay.subscription``: one relay, one websocket, reconnects):

* ``ReadRelaySubscriptionFn``: a splittable DoFn reading ``(relay url, since)``
  elements forever, in bounded bundles that end with ``defer_remainder`` so the
  runner can checkpoint (Dataflow streaming).
* ``SubscribeRelayEvents``: the composite; it also drops the pipeline's own
  republished events and de-duplicates by id across relays.

Restriction: ``OffsetRange(since * 1000, MAX_POSITION)`` over positions of
``POSITIONS_PER_SECOND`` per unix second. Before emitting an event the DoFn claims
``max(restriction start, highest created_at seen * 1000)`` (created_at capped at
wall-clock time), meaning "events up to that second were delivered"; the residual
of a checkpoint starts one position later, still inside the same second, and is
read with ``since = start // 1000 - overlap``. The sub-second positions only
number checkpoints, so the resume point does not drift ahead of the events (1,000
checkpoints within one second move it by one second, well inside the overlap).
Claims may repeat a position (many events share a second, and live events can be
older than ones already seen), so the tracker is an OffsetRestrictionTracker that
accepts non-decreasing claims and splits only for checkpoints.

Timestamps and watermark: every event is emitted with its *arrival* time (when
this DoFn read it from the relay), not its ``created_at``: ``created_at`` is set
by the publisher's clock, may lie 15 minutes in the future, and is old for every
event read from the ``since`` backlog, so using it would make most backlog
events late. The watermark is a ``ManualWatermarkEstimator`` set to
``arrival - watermark_lag`` after each event and to ``now - watermark_lag`` when
idle, so it advances with arrivals and with wall time while the relay is quiet.
An event is late only if a residual resumes on a worker whose clock is behind by
more than ``watermark_lag``. The raw event keeps ``created_at`` for anyone who
wants event time downstream.

Guarantees: within one subscription client every event is emitted once. After a
checkpoint that resumes on another worker (or a failed bundle) the overlap seconds
are re-read, so the source alone is at-least-once; the composite's
``DedupeByEventId`` (``DeduplicatePerKey`` with a processing-time TTL) makes it
once per TTL. Backdated events published during a disconnect are not re-read (see
the client).
"""

import collections
import hashlib
import json
import logging
import sys
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import core
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.clients.relay.common import validate_relay_url
from transforms.clients.relay.subscription import DEFAULT_OVERLAP_SECONDS, RelaySubscriptionClient
from transforms.core.records import VIDEO_KIND, migrated_uid
from transforms.io.relay_events import INVALID, ClassifyEventFn, InvalidEventFn, ValidateEventFn
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.logs import log_stage

_LOG = logging.getLogger(__name__)

OWN_EVENTS_IGNORED = "own_events_ignored"
STREAM_EVENTS_READ = "stream_events_read"
STREAM_RECONNECTS = "stream_relay_reconnects"
STREAM_BAD_RELAY_URLS = "stream_bad_relay_urls"
STREAM_STATE_EXPIRED = "stream_state_expired"  # newest-version states cleared by their timer
DEFAULT_STATE_TTL_SECONDS = 14 * 86400

MAX_POSITION = sys.maxsize
POSITIONS_PER_SECOND = 1000

SKIP_SUPERSEDED = "superseded"


# ---------------------------------------------------------------------------
# The splittable DoFn.


class SubscriptionTracker(OffsetRestrictionTracker):
  """An OffsetRestrictionTracker over since positions (see the module docstring).

  Claims may repeat the last position (many events share a second); after a
  checkpoint every claim fails. Only checkpoints split the restriction (fraction
  0): one relay subscription cannot be read in parallel.
  """

  def try_claim(self, position: int) -> bool:
    if self._checkpointed:
      return False
    if self._last_claim_attempt is not None and position < self._last_claim_attempt:
      raise ValueError("claimed positions must not decrease: %d after %d"
                       % (position, self._last_claim_attempt))
    if position < self._range.start:
      raise ValueError("position %d is before the restriction start %d"
                       % (position, self._range.start))
    self._last_claim_attempt = position
    if position < self._range.stop:
      self._current_position = position
      return True
    return False

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder != 0:
      return None
    return super().try_split(0)

  def is_bounded(self) -> bool:
    return False


class SubscriptionRestrictionProvider(core.RestrictionProvider):
  """(url, since) -> OffsetRange(since * 1000, MAX_POSITION); ends on drain (truncate -> None)."""

  def initial_restriction(self, element: Tuple[str, int]) -> OffsetRange:
    return OffsetRange(int(element[1]) * POSITIONS_PER_SECOND, MAX_POSITION)

  def create_tracker(self, restriction: OffsetRange) -> SubscriptionTracker:
    return SubscriptionTracker(restriction)

  def restriction_size(self, element, restriction) -> int:
    # Not splittable: the size only weighs this restriction against others.
    return 1

  def truncate(self, element, restriction):
    return None


class ReadRelaySubscriptionFn(beam.DoFn):
  """(relay url, since) -> raw event dicts (unverified), timestamped with arrival time.

  Each call reads for at most ``max_bundle_seconds`` or ``max_bundle_events``,
  or until nothing arrived for ``idle_seconds``, then defers the remainder
  (after ``resume_delay_seconds`` when idle, at once otherwise). The open
  subscription is kept in the DoFn instance between calls and reused when the
  next restriction continues where the last one stopped; otherwise (another
  worker, a retried bundle) a new one starts at ``restriction.start // 1000 - overlap``.
  """

  def __init__(self, kinds: Sequence[int] = (VIDEO_KIND,),
               overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
               max_bundle_seconds: float = 10.0, max_bundle_events: int = 1000,
               idle_seconds: float = 1.0, resume_delay_seconds: float = 1.0,
               watermark_lag_seconds: float = 2.0, backoff_cap: float = 30.0):
    super().__init__()
    self._kinds = [int(k) for k in kinds]
    self._overlap = int(overlap_seconds)
    self._max_seconds = max_bundle_seconds
    self._max_events = max_bundle_events
    self._idle = idle_seconds
    self._resume_delay = resume_delay_seconds
    self._lag = Duration(watermark_lag_seconds)
    self._backoff_cap = backoff_cap
    self._clients: Dict[Tuple[str, int], Tuple[RelaySubscriptionClient, int]] = {}

  def setup(self) -> None:
    self._clients = {}
    self._read = collections.Counter()  # events emitted per relay by this instance
    self._reconnects = collections.Counter()
    log_stage(_LOG, "ReadRelaySubscription", "ready", kinds=self._kinds,
              overlap_s=self._overlap, bundle_s=float(self._max_seconds),
              bundle_events=self._max_events)

  def teardown(self) -> None:
    for client, _ in self._clients.values():
      client.close()
    self._clients = {}
    per_relay = ", ".join("%s %d" % (url, n) for url, n in sorted(self._read.items()))
    log_stage(_LOG, "ReadRelaySubscription", "done", events=sum(self._read.values()),
              reconnects=sum(self._reconnects.values()), per_relay=per_relay or "none")

  def _client_for(self, url: str, since: int, start: int) -> RelaySubscriptionClient:
    key = (url, since)
    cached = self._clients.pop(key, None)
    if cached is not None:
      client, next_start = cached
      if next_start == start:
        return client
      client.close()
    start_second = start // POSITIONS_PER_SECOND
    resume = since if start_second <= since else max(since, start_second - self._overlap)
    return RelaySubscriptionClient(
        url, {"kinds": self._kinds}, resume, overlap_seconds=self._overlap,
        backoff_cap=self._backoff_cap)

  def _advance_watermark(self, estimator, arrival: Timestamp) -> None:
    mark = arrival - self._lag
    current = estimator.current_watermark()
    if current is None or mark > current:
      estimator.set_watermark(mark)

  @beam.DoFn.unbounded_per_element()
  def process(
      self,
      element: Tuple[str, int],
      tracker=beam.DoFn.RestrictionParam(SubscriptionRestrictionProvider()),
      watermark_estimator=beam.DoFn.WatermarkEstimatorParam(
          ManualWatermarkEstimator.default_provider())):
    """Reads one bounded slice of the subscription; see the class docstring."""
    url, since = element[0], int(element[1])
    start = tracker.current_restriction().start
    try:
      client = self._client_for(url, since, start)
    except ValueError as exc:
      # A bad url never becomes good: end this restriction instead of failing forever.
      _LOG.error("not subscribing: %s", exc)
      accounting.inc(STREAM_BAD_RELAY_URLS)
      tracker.try_claim(MAX_POSITION)
      return
    reconnects, dropped, outside = client.reconnects, client.dropped, client.outside_filter
    deadline = time.monotonic() + self._max_seconds
    position: Optional[int] = None
    emitted = 0
    idle = False
    while emitted < self._max_events:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        break
      event = client.poll(min(remaining, self._idle))
      if event is None:
        idle = True
        break
      seen = client.max_created_at
      claim = max(start, position if position is not None else start,
                  seen * POSITIONS_PER_SECOND if seen is not None else start)
      if not tracker.try_claim(claim):
        # The runner checkpointed this restriction: the residual re-reads from its start.
        client.close()
        return
      position = claim
      arrival = Timestamp.now()
      self._advance_watermark(watermark_estimator, arrival)
      emitted += 1
      yield TimestampedValue(event, arrival)
    if emitted:
      accounting.inc(STREAM_EVENTS_READ, emitted)
      self._read[url] += emitted
    if client.reconnects > reconnects:
      accounting.inc(STREAM_RECONNECTS, client.reconnects - reconnects)
      self._reconnects[url] += client.reconnects - reconnects
    for name, n in ((accounting.RELAY_MESSAGES_DROPPED, client.dropped - dropped),
                    (accounting.EVENTS_OUTSIDE_FILTER, client.outside_filter - outside)):
      if n:
        accounting.inc(name, n)
    self._clients[(url, since)] = (client, position + 1 if position is not None else start)
    self._advance_watermark(watermark_estimator, Timestamp.now())
    tracker.defer_remainder(Duration(self._resume_delay) if idle else None)


# ---------------------------------------------------------------------------
# Own events, de-duplication and the composite.


def is_own_event(event: Any) -> bool:
  """Whether an event carries this migration's tags (the pipeline published it).

  True when a ``["migration", "openvine-to-stream", <uid>]`` tag has a matching
  ``stream_uid`` tag (records.migrated_uid). Malformed tags are not ours: the
  validation stage dead-letters them.
  """
  tags = event.get("tags") if isinstance(event, dict) else None
  if not isinstance(tags, list):
    return False
  try:
    return migrated_uid(tags) is not None
  except (TypeError, AttributeError, IndexError):
    return False


def event_key(event: Any) -> str:
  """The id of a raw event, or a digest of the whole thing when it has none."""
  if isinstance(event, dict) and isinstance(event.get("id"), str):
    return event["id"][:128]
  return hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()


class IgnoreOwnEventsFn(beam.DoFn):
  """raw event -> the same event, unless the pipeline published it (counted, dropped)."""

  def process(self, event: Any) -> Iterator[Any]:
    if is_own_event(event):
      accounting.inc(OWN_EVENTS_IGNORED)
      return
    yield event


class SubscribeRelayEvents(beam.PTransform):
  """PBegin -> PCollection of raw event dicts (unverified), unbounded, each id once per TTL.

  Subscribes to every relay from ``since`` (inclusive unix seconds), ignores the
  pipeline's own republished events, and de-duplicates by id across relays and
  reconnects with ``DeduplicatePerKey`` (state per id, cleared by a
  processing-time timer after ``dedupe_ttl_seconds``). Elements are in the
  global window, timestamped with their arrival time (see the module docstring).
  """

  def __init__(self, relays: Sequence[str], since: int, kinds: Sequence[int] = (VIDEO_KIND,),
               dedupe_ttl_seconds: float = 3600.0, raw_events: Optional[beam.PTransform] = None,
               **read_options):
    """Checks the relay urls.

    Args:
      relays: relay urls (wss://, or ws:// on loopback).
      since: unix seconds to start from (e.g. the backfill's start, minus a margin).
      kinds: event kinds to subscribe to.
      dedupe_ttl_seconds: how long an id is remembered across relays and reconnects.
      raw_events: a PTransform producing raw events instead of the relays (TestStream in tests).
      **read_options: passed to ReadRelaySubscriptionFn (bundle budget, overlap, lag).

    Raises:
      ValueError: a relay url (named in the message) is not acceptable.
    """
    super().__init__()
    self._relays = [validate_relay_url(url) for url in relays]
    self._since = int(since)
    self._kinds = tuple(kinds)
    self._ttl = dedupe_ttl_seconds
    self._raw_events = raw_events
    self._read_options = read_options

  def expand(self, pbegin):
    if self._raw_events is not None:
      raw = pbegin | "ReadRawEvents" >> self._raw_events
    else:
      raw = (pbegin
             | "ListRelaySubscriptions" >> beam.Create([(url, self._since) for url in self._relays])
             | "SubscribeRelays" >> beam.ParDo(
                 ReadRelaySubscriptionFn(self._kinds, **self._read_options)))
    return (raw
            | "IgnoreOwnEvents" >> beam.ParDo(IgnoreOwnEventsFn())
            | "KeyByEventId" >> beam.Map(lambda event: (event_key(event), event)).with_output_types(
                Tuple[str, Any])
            | "DedupeByEventId" >> DeduplicatePerKey(processing_time_duration=Duration(self._ttl))
            | "DropEventIds" >> beam.Values())


# ---------------------------------------------------------------------------
# The streaming read composite.


class KeepNewestPerAddressFn(beam.DoFn):
  """((pubkey, d), event) -> the same, unless a newer version was already processed.

  The newest (created_at, id) per address is kept `ttl_seconds` (processing time) after
  it was last replaced, then cleared: a version older than a forgotten one is processed
  again like a new one (docs/streaming.md, "State expiry", says why that is rare).
  """

  NEWEST = ReadModifyWriteStateSpec("newest", coders.TupleCoder(
      (coders.VarIntCoder(), coders.StrUtf8Coder())))
  EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

  def __init__(self, ttl_seconds: float = DEFAULT_STATE_TTL_SECONDS):
    super().__init__()
    self._ttl = Duration(ttl_seconds)

  def process(self, keyed, newest=beam.DoFn.StateParam(NEWEST),
              expiry=beam.DoFn.TimerParam(EXPIRY)) -> Iterator[Any]:
    _, event = keyed
    seen = newest.read()
    mine = (event["created_at"], event["id"])
    # A relay keeps the highest created_at, then the lowest id.
    if seen is not None and (seen[0] > mine[0] or (seen[0] == mine[0] and seen[1] <= mine[1])):
      accounting.born()
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_READ_EVENTS, SKIP_SUPERSEDED, None,
                                                  event["id"]))
      return
    newest.write(mine)
    expiry.set(Timestamp.now() + self._ttl)  # a later newer version moves it
    yield keyed

  @on_timer(EXPIRY)
  def expire(self, newest=beam.DoFn.StateParam(NEWEST)) -> None:
    newest.clear()
    accounting.inc(STREAM_STATE_EXPIRED)


class ReadStreamEvents(beam.PTransform):
  """PBegin -> {main: (vine_id, SourceEvent), skipped, dead_letter}, unbounded."""

  def __init__(self, relays: Sequence[str], run_id: str, since: int,
               raw_events: Optional[beam.PTransform] = None,
               state_ttl_seconds: float = DEFAULT_STATE_TTL_SECONDS):
    super().__init__()
    self._state_ttl = state_ttl_seconds
    self._relays = list(relays)
    self._run_id = run_id
    self._since = since
    self._raw_events = raw_events

  def expand(self, pbegin):
    raw = pbegin | "SubscribeRelayEvents" >> SubscribeRelayEvents(
        self._relays, self._since, raw_events=self._raw_events)
    checked = raw | "VerifyEvents" >> beam.ParDo(ValidateEventFn()).with_outputs(
        INVALID, main="valid")
    invalid = (checked[INVALID]
               | "ListInvalid" >> beam.Map(lambda kv: (kv[0], [kv[1]]))
               | "DeadLetterInvalid" >> beam.ParDo(InvalidEventFn(self._run_id)))
    newest = checked.valid | "KeepNewestPerAddress" >> beam.ParDo(
        KeepNewestPerAddressFn(self._state_ttl)).with_outputs(dl.SKIPPED, main="main")
    classified = newest.main | "ExtractVineIds" >> beam.ParDo(ClassifyEventFn(
        self._run_id, reject_future=True)).with_outputs(dl.SKIPPED, dl.DEAD_LETTER, main="main")
    skipped = ((newest[dl.SKIPPED], classified[dl.SKIPPED])
               | "FlattenStreamSkips" >> beam.Flatten())
    dead = ((invalid, classified[dl.DEAD_LETTER])
            | "FlattenStreamEventDeadLetters" >> beam.Flatten())
    return {"main": classified.main, dl.SKIPPED: skipped, dl.DEAD_LETTER: dead}
