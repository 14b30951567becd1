"""A live subscription to one Nostr relay (NIP-01) that survives disconnects: websocket-client.

``RelaySubscriptionClient`` sends ``["REQ", sub, {**filter, "since": since}]``,
keeps the subscription open after EOSE, pages backwards over what the relay held
before EOSE (relays cap the stored events one REQ returns), and when the
connection drops reconnects with backoff and re-subscribes from ``max created_at
seen - overlap``. ``since`` is inclusive and clocks differ, so the overlap
re-reads a few seconds; a bounded set of recent ids drops what was already
delivered. Pull-style: ``poll()``.

Within one client every event is delivered once. An event published during a
disconnect with a ``created_at`` older than ``max created_at seen - overlap`` (a
backdated event) is not re-read after reconnect: ``since`` cannot express
"published after".

The streaming source of the pipeline (``transforms.io.relay_stream``) wraps it in a
splittable DoFn; it counts on the Beam side what the client only tallies
(``received``, ``duplicates``, ``reconnects``). Logs: one line per subscription
and per lost connection (with the reason), the first NOTICEs of a connection.
"""

import collections
import json
import logging
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import websocket

from transforms.clients.relay.common import (
  NOTICES_LOGGED,
  TRANSIENT_PREFIXES,
  close_quietly,
  is_event_shape,
  matches_filter,
  parse_message,
  validate_relay_url,
)
from transforms.core.backoff import exponential_backoff

_LOG = logging.getLogger(__name__)

DEFAULT_OVERLAP_SECONDS = 5


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
    dropped: relay messages dropped (oversized, too deeply nested, malformed, or an
      EVENT without a string id and integer created_at).
    outside_filter: events dropped because they do not match the filter asked for.
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
      url: relay url (see validate_relay_url).
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
    self.dropped = 0
    self.outside_filter = 0
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
    delay = self._backoff_cap if permanent else exponential_backoff(
        self._failures, self._backoff_base, self._backoff_cap)
    self._next_attempt = self._monotonic() + delay
    # One line per lost connection (or failed attempt), with the reason.
    _LOG.warning("relay %s: %s; resubscribing since %d in %.2f s", self.url, reason,
                 self.resume_since(), delay)

  # -- messages --------------------------------------------------------------

  def _handle(self, raw: Any) -> Optional[Dict[str, Any]]:
    msg, why = parse_message(raw)
    if msg is None:
      self.dropped += 1
      _LOG.debug("dropping a relay message from %s (%s)", self.url, why)
      return None
    if len(msg) < 2:
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
      # The reason's first word, colon or not: a bare "error" is worth retrying too.
      head = reason.partition(":")[0].strip().lower()
      self._disconnect("subscription closed: %.100s" % reason,
                       permanent=head not in TRANSIENT_PREFIXES)
    elif kind == "NOTICE":
      self._notices += 1
      level = logging.INFO if self._notices <= NOTICES_LOGGED else logging.DEBUG
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
    if not is_event_shape(event):
      self.dropped += 1
      _LOG.debug("skipping a malformed EVENT from %s", self.url)
      return None
    if not matches_filter(event, self._filter) or event["created_at"] < (
        self._sub_since if self._sub_since is not None else self.since):
      self.outside_filter += 1
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
