"""Publishes events to a Nostr relay (NIP-01) over one persistent websocket-client connection.

``RelayPublisher`` keeps many events in flight on one connection, matches OK
messages by id, classifies them by prefix, retries transient refusals with
backoff, answers NIP-42 AUTH challenges (``Nip42Auth``, in
``transforms.clients.relay.auth``), and reconnects and resends whatever was
unacknowledged when a relay goes away. The events' bookkeeping (queues, resends,
results) is ``PendingEvents`` (``transforms.clients.relay.pending``); this module
holds the connection and the sender and reader threads.

A publisher is built where it is used (a DoFn's ``setup()``), never pickled. Logs
carry ids and counts only, never event contents or keys. INFO and above: a
publisher's ready and done lines (with its counts), connection losses (WARNING,
once each, with the reason) and reconnects, connection failures, the first NOTICEs
of a relay; per-event outcomes are DEBUG.
"""

import collections
import json
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import websocket

from transforms.clients.relay.auth import Nip42Auth
from transforms.clients.relay.common import (
  NOTICES_LOGGED,
  TRANSIENT_PREFIXES,
  close_quietly,
  message_prefix,
  parse_message,
  validate_relay_url,
)
from transforms.clients.relay.outcomes import (
  OUTCOME_ACCEPTED,
  OUTCOME_DUPLICATE,
  OUTCOME_PERMANENT,
  SENT,
  PublishResult,
)
from transforms.clients.relay.pending import PendingEvents
from transforms.core.backoff import exponential_backoff
from transforms.runtime.logs import log_stage

_LOG = logging.getLogger(__name__)


class RelayPublisher:
  """Publishes events to one relay over one persistent connection, many in flight.

  ``submit`` queues an event (blocking while ``max_in_flight`` are
  unacknowledged), a sender thread writes it, a reader thread matches OKs by id.
  Every submitted event ends with exactly one ``PublishResult`` per submit,
  collected with ``poll`` or ``drain``.
  """

  def __init__(self, url: str, max_in_flight: int = 200, ack_timeout: float = 10.0,
               max_attempts: int = 5, backoff_base: float = 0.5, backoff_cap: float = 30.0,
               connect_timeout: float = 10.0, down_retry_interval: float = 10.0,
               auth_signer: Optional[Callable[[str], Any]] = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic):
    """Starts the sender and retry threads; the connection opens on the first submit.

    Args:
      url: relay url (see validate_relay_url).
      max_in_flight: submitted events without a final result before submit blocks.
      ack_timeout: seconds to wait for an OK before resending.
      max_attempts: sends per event before giving up on transient failures.
      backoff_base: first backoff delay in seconds (doubles per attempt, with jitter).
      backoff_cap: largest backoff delay in seconds.
      connect_timeout: seconds for the websocket handshake.
      down_retry_interval: after max_attempts failed connection attempts the relay is
        treated as down: events submitted in the next this many seconds fail at once
        (instead of each waiting out its own round of attempts), then it is tried again.
      auth_signer: pubkey -> Signer (or None) used to answer NIP-42 challenges.
      sleep: used for every backoff delay (tests pass a fake).
      clock: monotonic clock for ack deadlines.
    """
    self.url = validate_relay_url(url)
    self.max_in_flight = max(1, max_in_flight)
    self.ack_timeout = ack_timeout
    self.max_attempts = max(1, max_attempts)
    self.backoff_base = backoff_base
    self.backoff_cap = backoff_cap
    self.connect_timeout = connect_timeout
    self.down_retry_interval = down_retry_interval
    self._sleep = sleep
    self._clock = clock
    self._lock = threading.Lock()
    self._cond = threading.Condition(self._lock)
    self._counts = collections.Counter()  # events, frames sent, outcomes, reconnects
    self._events = PendingEvents(self.url, self._cond, self._counts, self.max_attempts,
                                 backoff_base, backoff_cap, clock, sleep)
    self._auth = Nip42Auth(self.url, auth_signer, self._events, self._cond.notify_all,
                           self._drop_connection_locked, clock, backoff_base, backoff_cap)
    self._closed = False
    # Connection state, all reset on reconnect.
    self._ws = None
    self._gen = 0
    self._last_recv = 0.0
    self._connect_failures = 0
    self._down_until = float("-inf")
    self._down_message = ""
    self._flaps = 0  # connections in a row that ended before the relay said anything
    self._connected_at = 0.0
    self._lost_reason = ""  # why the previous connection ended, for the reconnect line
    self._notices = 0
    self._sender = threading.Thread(target=self._send_loop, name="relay-sender", daemon=True)
    self._retrier = threading.Thread(target=self._events.run_retries, name="relay-retry",
                                     daemon=True)
    self._sender.start()
    self._retrier.start()
    log_stage(_LOG, "RelayPublisher " + self.url, "ready", max_in_flight=self.max_in_flight,
              ack_timeout_s=float(ack_timeout), attempts=self.max_attempts,
              nip42=auth_signer is not None)

  def stats(self) -> Dict[str, int]:
    """Counts so far: events (distinct submitted), sent (frames, resends included),
    accepted, duplicate, refused (permanent), failed (transient_exhausted), resent,
    connections, reconnects, dropped_messages (relay messages dropped as oversized, too
    deeply nested or malformed), auth_refusals."""
    with self._lock:
      counts = dict(self._counts)
    keys = ("events", "sent", "accepted", "duplicate", "refused", "failed", "resent",
            "connections", "reconnects", "dropped_messages")
    out = {k: counts.get(k, 0) for k in keys}
    out["auth_refusals"] = self._auth.refusals
    return out

  # -- public API ------------------------------------------------------------

  def submit(self, event: dict, token: Any = None) -> None:
    """Queues one signed event; blocks while max_in_flight events are unacknowledged.

    Raises:
      ValueError: the event has no string id or cannot be sent as UTF-8 JSON.
      RuntimeError: the publisher is closed.
    """
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
      raise ValueError("event must be a dict with a string id")
    event_id = event["id"]
    try:
      # Serialised once, and checked here: a frame that cannot be sent would break
      # the connection for every other event in flight.
      frame = json.dumps(["EVENT", event], ensure_ascii=False)
      frame.encode("utf-8")
    except (TypeError, ValueError):
      raise ValueError("event %s cannot be sent as UTF-8 JSON" % event_id) from None
    with self._cond:
      while not self._closed and len(self._events) >= self.max_in_flight:
        self._cond.wait()
      if self._closed:
        raise RuntimeError("publisher for %s is closed" % self.url)
      self._events.add(event, frame, token)

  def poll(self) -> List[PublishResult]:
    """Returns the results completed since the last poll or drain; never blocks."""
    with self._lock:
      return self._events.take_results()

  def wait_results(self, timeout: float) -> List[PublishResult]:
    """Waits up to `timeout` for a new result (while events are unresolved); returns new results."""
    with self._cond:
      if not self._events.has_results() and self._events and not self._closed:
        self._cond.wait(timeout)
      return self._events.take_results()

  def unresolved(self) -> int:
    """Events submitted and still without a final result."""
    with self._lock:
      return len(self._events)

  def drain(self, timeout: Optional[float] = None) -> List[PublishResult]:
    """Waits until every submitted event has a final result and returns the new results.

    Events still unresolved when the timeout ends get a transient_exhausted result.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._cond:
      while self._events and not self._closed:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
          _LOG.warning("drain timed out with %d events unresolved on %s",
                       len(self._events), self.url)
          self._events.fail_all("drain timed out: ", with_last_answer=True)
          break
        self._cond.wait(remaining if remaining is None else min(remaining, 1.0))
    return self.poll()

  def close(self) -> None:
    """Closes the connection and stops the threads; unresolved events are dropped."""
    with self._cond:
      if self._closed:
        return
      self._closed = True
      if self._events:
        _LOG.warning("closing publisher for %s with %d events unresolved",
                     self.url, len(self._events))
      ws, self._ws = self._ws, None
      self._events.stop()
      self._cond.notify_all()
    close_quietly(ws)
    self._sender.join(2.0)
    log_stage(_LOG, "RelayPublisher " + self.url, "done", **self.stats())

  def __enter__(self) -> "RelayPublisher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- the sender thread -----------------------------------------------------

  def _send_loop(self) -> None:
    while True:
      with self._cond:
        while not self._closed and not self._events:
          self._cond.wait()
        if self._closed:
          return
        connected = self._ws is not None
      if not connected:
        with self._cond:
          if self._clock() < self._down_until:
            self._events.fail_all(self._down_message)
            continue
          flaps = self._flaps
        if flaps:
          # A relay (or a proxy in front of one) that accepts and at once drops the
          # connection: back off as for a refused connection, so that resends do not
          # burn every attempt within milliseconds.
          self._sleep(exponential_backoff(flaps, self.backoff_base, self.backoff_cap))
        self._connect()
        continue
      with self._cond:
        if self._closed:
          return
        if self._ws is None:
          continue
        self._expire_locked()
        if self._ws is None:
          continue  # _expire_locked dropped a silent connection
        frames, ws, gen = self._take_frames_locked()
        if not frames:
          if self._ws is not None:
            self._cond.wait(self._next_wait_locked())
          continue
      for frame in frames:
        try:
          ws.send(frame)
        except Exception as exc:  # pylint: disable=broad-except
          self._connection_lost(gen, "send failed: %s" % type(exc).__name__)
          break

  def _take_frames_locked(self):
    """The frames to send now (an AUTH first), the connection and its number."""
    auth = self._auth.step()
    if self._ws is None:
      return [], None, self._gen  # the AUTH round dropped the connection
    # While an AUTH round is in progress only its own resends go out: every event
    # refused meanwhile would bring a new challenge and make the relay forget older ones.
    frames = self._events.take_frames([auth] if auth else [], self._auth.round_open,
                                      self._clock())
    return frames, self._ws, self._gen

  def _next_wait_locked(self) -> float:
    now = self._clock()
    deadlines = (self._events.sent_deadlines(self.ack_timeout)
                 + self._auth.deadlines(now, self.ack_timeout))
    if not deadlines:
      return 1.0
    return min(1.0, max(0.01, min(deadlines) - now))

  def _expire_locked(self) -> None:
    """Resends events (and retries AUTHs) that got no answer within ack_timeout."""
    now = self._clock()
    self._auth.expire(now, self.ack_timeout)
    # Events waiting for an AUTH round are bounded by the round's own limits.
    expired = self._events.expired(now, self.ack_timeout)
    if not expired:
      return
    _LOG.info("%d events without an answer from %s within %.1f s; resending",
              len(expired), self.url, self.ack_timeout)
    for event_id in expired:
      self._events.retry(event_id, "no answer within %.1f s" % self.ack_timeout, delay=False)
    # A connection that has been silent the whole time is probably dead.
    if self._ws is not None and now - self._last_recv >= self.ack_timeout:
      self._drop_connection_locked("silent for %.1f s" % (now - self._last_recv))

  def _drop_connection_locked(self, reason: str, level: int = logging.WARNING) -> None:
    """Abandons the connection (closed in the background); the sender reconnects."""
    ws, self._ws = self._ws, None
    self._log_lost_locked(reason, self._reset_connection_locked(), level)
    self._cond.notify_all()
    threading.Thread(target=close_quietly, args=(ws,), daemon=True).start()

  def _log_lost_locked(self, reason: str, unanswered: int, level: int = logging.WARNING) -> None:
    """The one line per lost connection: relay, connection number, reason, events to resend."""
    self._lost_reason = reason
    _LOG.log(level, "relay %s: connection %d lost (%s); reconnecting, %d unanswered events "
             "will be resent", self.url, self._gen, reason, unanswered)

  # -- connection ------------------------------------------------------------

  def _connect(self) -> None:
    try:
      ws = websocket.create_connection(self.url, timeout=self.connect_timeout,
                                       enable_multithread=True, skip_utf8_validation=True)
      ws.settimeout(None)
    except Exception as exc:  # pylint: disable=broad-except
      self._connect_failed(exc)
      return
    with self._cond:
      if self._closed:
        close_quietly(ws)
        return
      self._connect_failures = 0
      self._gen += 1
      self._ws = ws
      self._clear_auth_state_locked()  # the previous connection's reader may have set some
      self._last_recv = self._clock()
      self._connected_at = self._last_recv
      gen = self._gen
      self._counts["connections"] += 1
      if gen > 1:
        self._counts["reconnects"] += 1
      self._notices = 0
      self._cond.notify_all()
    if gen > 1:
      _LOG.info("relay %s: reconnected (connection %d; the previous one: %s)", self.url, gen,
                self._lost_reason or "closed")
    else:
      _LOG.debug("connected to %s (connection %d)", self.url, gen)
    threading.Thread(target=self._read_loop, args=(ws, gen), name="relay-reader",
                     daemon=True).start()

  def _connect_failed(self, exc: Exception) -> None:
    with self._cond:
      self._connect_failures += 1
      failures = self._connect_failures
      if failures >= self.max_attempts:
        message = "could not connect after %d tries: %s" % (failures, type(exc).__name__)
        _LOG.warning("%s: %s; failing %d events, and those of the next %.0f s",
                     self.url, message, len(self._events), self.down_retry_interval)
        self._events.fail_all(message)
        self._connect_failures = 0
        self._down_until = self._clock() + self.down_retry_interval
        self._down_message = message
        return
    delay = exponential_backoff(failures, self.backoff_base, self.backoff_cap)
    _LOG.info("cannot connect to %s (%s); retrying in %.2f s", self.url,
              type(exc).__name__, delay)
    self._sleep(delay)

  def _clear_auth_state_locked(self) -> None:
    """Forgets the connection's AUTH state; the events its round prioritised join the ready
    queue again."""
    self._auth.reset()
    self._events.requeue_priority()

  def _reset_connection_locked(self) -> int:
    """Forgets per-connection state; unanswered events go back to the ready queue.

    Returns:
      How many events were unanswered (to be resent).
    """
    self._clear_auth_state_locked()
    return self._events.resend_unanswered()

  def _connection_lost(self, gen: int, reason: str) -> None:
    with self._cond:
      if gen != self._gen or self._ws is None:
        return
      ws, self._ws = self._ws, None
      if self._last_recv <= self._connected_at:
        self._flaps = min(self._flaps + 1, 10)
      self._log_lost_locked(reason, self._reset_connection_locked())
      self._cond.notify_all()
    close_quietly(ws)

  # -- the reader thread -----------------------------------------------------

  def _read_loop(self, ws, gen: int) -> None:
    while True:
      try:
        raw = ws.recv()
      except Exception as exc:  # pylint: disable=broad-except
        self._connection_lost(gen, type(exc).__name__)
        return
      if not raw and not ws.connected:
        self._connection_lost(gen, "closed")
        return
      msg, why = parse_message(raw)
      if msg is None:
        with self._cond:
          self._counts["dropped_messages"] += 1
        _LOG.debug("dropping a relay message from %s (%s)", self.url, why)
        continue
      try:
        self._on_message(msg, gen)
      except Exception:  # pylint: disable=broad-except
        # A message no branch foresaw must not end the thread that matches every OK.
        with self._cond:
          self._counts["dropped_messages"] += 1
        _LOG.warning("dropping a relay message from %s that could not be handled", self.url,
                     exc_info=True)

  def _on_message(self, msg: list, gen: int) -> None:
    with self._cond:
      if gen == self._gen:
        self._last_recv = self._clock()
      if msg[0] == "OK" and len(msg) >= 3:
        self._on_ok_locked(msg, gen)
      elif msg[0] == "AUTH" and len(msg) >= 2 and isinstance(msg[1], str):
        if gen == self._gen:
          self._auth.on_challenge(msg[1])
      elif msg[0] == "NOTICE":
        self._notices += 1
        level = logging.INFO if self._notices <= NOTICES_LOGGED else logging.DEBUG
        _LOG.log(level, "NOTICE from %s: %.200s", self.url, msg[1] if len(msg) > 1 else "")

  def _on_ok_locked(self, msg: list, gen: int) -> None:
    event_id, accepted = msg[1], msg[2]
    message = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
    if not isinstance(event_id, str) or not isinstance(accepted, bool):
      _LOG.debug("skipping a malformed OK from %s", self.url)
      return
    if self._auth.is_answer(event_id):
      self._auth.on_answer(event_id, accepted, message, current=gen == self._gen)
      return
    if gen == self._gen:
      self._flaps = 0
    entry = self._events.get(event_id)
    if entry is None:
      return  # a late answer to an event already resolved
    prefix = message_prefix(message)
    if self._auth.round_open:
      self._cond.notify_all()  # one answer less in flight: the AUTH round may go on
    if accepted or prefix == "duplicate":
      outcome = OUTCOME_DUPLICATE if prefix == "duplicate" else OUTCOME_ACCEPTED
      self._events.finish(event_id, True, outcome, message)
      if gen == self._gen:
        self._auth.on_accepted(entry.event.get("pubkey"))
      return
    if entry.state != SENT:
      return  # a refusal of an earlier send: the current one is still coming
    if prefix in TRANSIENT_PREFIXES:
      self._events.retry(event_id, message, delay=True)
    elif prefix == "auth-required" and gen == self._gen:
      self._auth.on_auth_required(event_id, entry, message)
    elif prefix == "auth-required":
      self._events.retry(event_id, message, delay=False)
    else:
      self._events.finish(event_id, False, OUTCOME_PERMANENT, message)
