"""The unbounded relay source of streaming mode: live subscriptions to kind 32222 events.

Three layers:

* ``RelaySubscriptionClient``: one relay, one websocket (websocket-client). Sends
  ``["REQ", sub, {**filter, "since": since}]``, keeps the subscription open after
  EOSE, pages backwards over what the relay held before EOSE (relays cap the
  stored events one REQ returns), and when the connection drops reconnects with
  backoff and re-subscribes from ``max created_at seen - overlap``. ``since`` is
  inclusive and clocks differ, so the overlap re-reads a few seconds; a bounded
  set of recent ids drops what was already delivered. Pull-style: ``poll()``.
* ``ReadRelaySubscriptionFn``: a splittable DoFn reading ``(relay url, since)``
  elements forever, in bounded bundles that end with ``defer_remainder`` so the
  runner can checkpoint (Dataflow streaming).
* ``SubscribeRelayEvents``: the composite the graph uses; it also drops the
  pipeline's own republished events and de-duplicates by id across relays.

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

Guarantees and limits: within one subscription client every event is emitted
once. After a checkpoint that resumes on another worker (or a failed bundle) the
overlap seconds are re-read, so the source alone is at-least-once; the
composite's ``DedupeByEventId`` (``DeduplicatePerKey`` with a processing-time
TTL) makes it once per TTL. An event published during a disconnect with a
``created_at`` older than ``max created_at seen - overlap`` (a backdated event)
is not re-read after reconnect: ``since`` cannot express "published after".
"""

import collections
import hashlib
import json
import logging
import sys
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
import websocket
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms import core
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.runtime import accounting
from transforms.runtime.logs import log_stage
from transforms.core.records import VIDEO_KIND, migrated_uid
from transforms.clients.relay.common import backoff_delay, close_quietly, decode_message, \
  validate_relay_url

_LOG = logging.getLogger(__name__)
_NOTICES_LOGGED = 5  # NOTICEs per connection logged at INFO (then DEBUG)

OWN_EVENTS_IGNORED = "own_events_ignored"
STREAM_EVENTS_READ = "stream_events_read"
STREAM_RECONNECTS = "stream_relay_reconnects"
STREAM_BAD_RELAY_URLS = "stream_bad_relay_urls"

MAX_POSITION = sys.maxsize
POSITIONS_PER_SECOND = 1000
DEFAULT_OVERLAP_SECONDS = 5
_TRANSIENT_CLOSED = ("rate-limited", "error")


def _is_event_shape(event: Any) -> bool:
  created_at = event.get("created_at") if isinstance(event, dict) else None
  return (isinstance(event, dict) and isinstance(event.get("id"), str)
          and isinstance(created_at, int) and not isinstance(created_at, bool))


class RelaySubscriptionClient:
  """A live subscription to one relay that survives disconnects; pull events with poll().

  Not thread-safe: one caller polls. Nothing connects before the first poll().

  Attributes:
    url: the relay url.
    since: the lower bound of the subscription (never re-read below it).
    max_created_at: the highest created_at delivered, capped at the wall-clock
      time it arrived (a future-dated event must not push ``since`` past events
      still to come); None before the first event.
    received: events delivered by poll().
    duplicates: events dropped because their id was delivered before.
    reconnects: connections opened after the first one.
  """

  def __init__(self, url: str, base_filter: Dict[str, Any], since: int,
               overlap_seconds: int = DEFAULT_OVERLAP_SECONDS, max_recent_ids: int = 50000,
               page_size: int = 500, connect_timeout: float = 10.0, ping_interval: float = 30.0,
               backoff_base: float = 0.5, backoff_cap: float = 30.0,
               clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    """Stores the configuration.

    Args:
      url: relay url (see relay_client.validate_relay_url).
      base_filter: a NIP-01 filter (e.g. ``{"kinds": [32222]}``); its ``since``,
        ``until`` and ``limit`` are ignored.
      since: unix seconds; events with created_at >= since are delivered (inclusive).
      overlap_seconds: how far below the highest created_at seen a re-subscription starts.
      max_recent_ids: how many recent ids are remembered to drop re-deliveries.
      page_size: ``limit`` of the backward pages over the stored events.
      connect_timeout: seconds for the websocket handshake.
      ping_interval: seconds of silence after which a ping probes the connection.
      backoff_base: first reconnect delay in seconds (doubles per failure, with jitter).
      backoff_cap: largest reconnect delay in seconds.
      clock: wall clock (unix seconds).
      monotonic: monotonic clock for deadlines.
      sleep: used for every wait while disconnected (tests may pass a fake).
    """
    self.url = validate_relay_url(url)
    self._filter = {k: v for k, v in base_filter.items() if k not in ("since", "until", "limit")}
    self.since = int(since)
    self.overlap_seconds = max(0, int(overlap_seconds))
    self._max_recent = max(1, max_recent_ids)
    self._page_size = page_size
    self._connect_timeout = connect_timeout
    self._ping_interval = ping_interval
    self._backoff_base = backoff_base
    self._backoff_cap = backoff_cap
    self._clock = clock
    self._monotonic = monotonic
    self._sleep = sleep
    self._recent: "collections.OrderedDict[str, None]" = collections.OrderedDict()
    self.max_created_at: Optional[int] = None
    self.received = 0
    self.duplicates = 0
    self.reconnects = 0
    self._notices = 0
    self._connections = 0
    self._failures = 0
    self._next_attempt = 0.0
    self._closed = False
    self._ws = None
    self._reset_subscription_state()

  def _reset_subscription_state(self) -> None:
    self._sub_id: Optional[str] = None
    self._sub_since: Optional[int] = None
    self._eose = False
    self._stored = 0
    self._stored_oldest: Optional[int] = None
    self._gap_id: Optional[str] = None
    self._gap_new = 0
    self._gap_oldest: Optional[int] = None
    self._last_recv = self._monotonic()
    self._last_ping = self._last_recv

  # -- public API ------------------------------------------------------------

  @property
  def connected(self) -> bool:
    return self._ws is not None

  def resume_since(self) -> int:
    """The ``since`` of the next (re)subscription: max created_at seen - overlap, or since."""
    if self.max_created_at is None:
      return self.since
    return max(self.since, self.max_created_at - self.overlap_seconds)

  def poll(self, timeout: float) -> Optional[Dict[str, Any]]:
    """Returns the next event not delivered before, or None if none came within timeout.

    Connects, reconnects (after a backoff) and re-subscribes as needed; never
    raises for relay or network failures.
    """
    deadline = self._monotonic() + max(0.0, timeout)
    while not self._closed:
      now = self._monotonic()
      remaining = deadline - now
      if self._ws is None:
        wait = self._next_attempt - now
        if wait >= remaining:
          if remaining > 0:
            self._sleep(remaining)
          return None
        if wait > 0:
          self._sleep(wait)
        self._connect()
        continue
      if remaining <= 0:
        return None
      if (now - self._last_recv >= self._ping_interval
          and now - self._last_ping >= self._ping_interval):
        self._last_ping = now
        try:
          self._ws.ping()
        except (websocket.WebSocketException, OSError) as exc:
          self._disconnect("ping failed: %s" % type(exc).__name__)
          continue
      try:
        self._ws.settimeout(max(0.001, min(remaining, self._ping_interval)))
        raw = self._ws.recv()
      except websocket.WebSocketTimeoutException:
        continue
      except (websocket.WebSocketException, OSError) as exc:
        self._disconnect(type(exc).__name__)
        continue
      if not raw and not self._ws.connected:
        self._disconnect("closed by relay")
        continue
      self._last_recv = self._monotonic()
      event = self._handle(raw)
      if event is not None:
        return event
    return None

  def events(self, max_seconds: float, idle_seconds: Optional[float] = None
             ) -> Iterator[Dict[str, Any]]:
    """Yields new events for at most max_seconds, or until none came for idle_seconds."""
    deadline = self._monotonic() + max_seconds
    while True:
      remaining = deadline - self._monotonic()
      if remaining <= 0:
        return
      event = self.poll(remaining if idle_seconds is None else min(remaining, idle_seconds))
      if event is None:
        if idle_seconds is not None:
          return
        continue
      yield event

  def close(self) -> None:
    """Closes the connection; poll() returns None afterwards."""
    self._closed = True
    ws, self._ws = self._ws, None
    close_quietly(ws)

  def __enter__(self) -> "RelaySubscriptionClient":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- connection ------------------------------------------------------------

  def _connect(self) -> None:
    since = self.resume_since()
    try:
      ws = websocket.create_connection(self.url, timeout=self._connect_timeout)
    except Exception as exc:  # pylint: disable=broad-except
      self._schedule_retry("connect failed: %s" % type(exc).__name__, permanent=False)
      return
    self._ws = ws
    self._reset_subscription_state()
    if self._connections:
      self.reconnects += 1
    self._connections += 1
    self._sub_id = "v" + uuid.uuid4().hex[:15]
    self._sub_since = since
    flt = dict(self._filter)
    flt["since"] = since
    self._notices = 0
    if self._send(["REQ", self._sub_id, flt]):
      _LOG.info("subscribed to %s since %d (connection %d)", self.url, since, self._connections)

  def _send(self, message: list) -> bool:
    try:
      self._ws.send(json.dumps(message))
      return True
    except (websocket.WebSocketException, OSError) as exc:
      self._disconnect("send failed: %s" % type(exc).__name__)
      return False

  def _disconnect(self, reason: str, permanent: bool = False) -> None:
    ws, self._ws = self._ws, None
    close_quietly(ws)
    self._reset_subscription_state()
    self._schedule_retry(reason, permanent)

  def _schedule_retry(self, reason: str, permanent: bool) -> None:
    self._failures += 1
    delay = self._backoff_cap if permanent else backoff_delay(
        self._failures, self._backoff_base, self._backoff_cap)
    self._next_attempt = self._monotonic() + delay
    # One line per lost connection (or failed attempt), with the reason.
    _LOG.warning("relay %s: %s; resubscribing since %d in %.2f s", self.url, reason,
                 self.resume_since(), delay)

  # -- messages --------------------------------------------------------------

  def _handle(self, raw: Any) -> Optional[Dict[str, Any]]:
    msg = decode_message(raw)
    if msg is None or len(msg) < 2:
      return None
    kind, sub = msg[0], msg[1]
    if kind == "EVENT" and len(msg) >= 3 and sub in (self._sub_id, self._gap_id):
      return self._on_event(sub, msg[2])
    if kind == "EOSE" and sub == self._sub_id and not self._eose:
      self._eose = True
      self._failures = 0  # the relay answered a whole REQ: this connection works
      if self._stored:
        self._request_page(self._stored_oldest)
    elif kind == "EOSE" and sub is not None and sub == self._gap_id:
      self._send(["CLOSE", self._gap_id])
      if self._ws is not None and self._gap_new and self._gap_oldest is not None:
        self._request_page(self._gap_oldest)
      else:
        self._gap_id = None
    elif kind == "CLOSED" and sub is not None and sub in (self._sub_id, self._gap_id):
      reason = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else ""
      head = reason.partition(":")[0].strip().lower()
      self._disconnect("subscription closed: %.100s" % reason,
                       permanent=head not in _TRANSIENT_CLOSED)
    elif kind == "NOTICE":
      self._notices += 1
      level = logging.INFO if self._notices <= _NOTICES_LOGGED else logging.DEBUG
      _LOG.log(level, "NOTICE from %s: %.200s", self.url, sub)
    return None

  def _request_page(self, until: Optional[int]) -> None:
    """Asks for the stored events at or before until (inclusive), newest first."""
    self._gap_id = "g" + uuid.uuid4().hex[:15]
    self._gap_new = 0
    self._gap_oldest = None
    flt = dict(self._filter)
    flt.update({"since": self._sub_since if self._sub_since is not None else self.since,
                "until": until, "limit": self._page_size})
    self._send(["REQ", self._gap_id, flt])

  def _on_event(self, sub: str, event: Any) -> Optional[Dict[str, Any]]:
    if not _is_event_shape(event):
      _LOG.debug("skipping a malformed EVENT from %s", self.url)
      return None
    created_at = event["created_at"]
    if sub == self._sub_id and not self._eose:
      self._stored += 1
      self._stored_oldest = created_at if self._stored_oldest is None else min(
          self._stored_oldest, created_at)
    elif sub == self._gap_id:
      self._gap_oldest = created_at if self._gap_oldest is None else min(
          self._gap_oldest, created_at)
    event_id = event["id"]
    if event_id in self._recent:
      self.duplicates += 1
      return None
    if sub == self._gap_id:
      self._gap_new += 1
    self._recent[event_id] = None
    if len(self._recent) > self._max_recent:
      self._recent.popitem(last=False)
    capped = min(created_at, int(self._clock()))
    if self.max_created_at is None or capped > self.max_created_at:
      self.max_created_at = capped
    self.received += 1
    return event


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
    reconnects = client.reconnects
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
