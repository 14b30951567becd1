"""Publishes events to a Nostr relay (NIP-01) over one persistent websocket-client connection.

``RelayPublisher`` keeps many events in flight on one connection, matches OK
messages by id, classifies them by prefix, retries transient refusals with
backoff, answers NIP-42 AUTH challenges (``transforms.clients.relay.auth``), and
reconnects and resends whatever was unacknowledged when a relay goes away.

A publisher is built where it is used (a DoFn's ``setup()``), never pickled. Logs
carry ids and counts only, never event contents or keys. INFO and above: a
publisher's ready and done lines (with its counts), connection losses (WARNING,
once each, with the reason) and reconnects, connection failures, the first NOTICEs
of a relay; per-event outcomes are DEBUG.
"""

import collections
import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set

import websocket

from transforms.runtime.logs import CappedLog, log_stage
from transforms.clients.relay.auth import Nip42Mixin
from transforms.clients.relay.common import (
    TRANSIENT_PREFIXES,
    backoff_delay,
    close_quietly,
    decode_message,
    message_prefix,
    validate_relay_url,
)
from transforms.clients.relay.outcomes import (
    AUTH_WAIT,
    OUTCOME_ACCEPTED,
    OUTCOME_DUPLICATE,
    OUTCOME_PERMANENT,
    OUTCOME_TRANSIENT_EXHAUSTED,
    READY,
    SCHEDULED,
    SENT,
    PendingEvent,
    PublishResult,
)

_LOG = logging.getLogger(__name__)

_NOTICES_LOGGED = 5  # NOTICEs per relay connection logged at INFO (then DEBUG)


class RelayPublisher(Nip42Mixin):
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
    self._auth_signer = auth_signer
    self._sleep = sleep
    self._clock = clock
    self._lock = threading.Lock()
    self._cond = threading.Condition(self._lock)
    self._pending: Dict[str, PendingEvent] = {}
    self._ready: Deque[str] = collections.deque()
    self._results: List[PublishResult] = []
    self._closed = False
    # Connection state, all reset on reconnect.
    self._ws = None
    self._gen = 0
    self._last_recv = 0.0
    self._challenge: Optional[str] = None  # the newest challenge the relay sent
    self._stale_challenge: Optional[str] = None  # one the relay refused an AUTH on
    self._used_challenge: Optional[str] = None  # the one the last accepted AUTH used
    self._reusable: Optional[bool] = None  # is a challenge good for more than one AUTH?
    self._probed = False  # an event was resent to draw a challenge; none came yet
    self._authed: Set[str] = set()
    self._unlocks_all: Optional[bool] = None  # does one AUTH let every pubkey write?
    self._auth_inflight: Dict[str, tuple] = {}  # auth id -> (pubkey, sent_at, challenge)
    # pubkey -> event ids refused with auth-required, in arrival order. While it is not
    # empty an AUTH round is in progress and new events are held back (see
    # _take_frames_locked).
    self._auth_waiting: Dict[str, List[str]] = {}
    self._auth_failures: Dict[str, int] = {}
    self._auth_not_before = float("-inf")
    self._outbox: Deque[str] = collections.deque()  # AUTH frames to send
    self._priority: Deque[str] = collections.deque()  # sent even during an AUTH round
    # Transient AUTH failures per pubkey; kept across reconnects so that they stay bounded.
    self._auth_retries: Dict[str, int] = {}
    self._connect_failures = 0
    self._down_until = float("-inf")
    self._down_message = ""
    self._flaps = 0  # connections in a row that ended before the relay said anything
    self._connected_at = 0.0
    self._lost_reason = ""  # why the previous connection ended, for the reconnect line
    self._counts = collections.Counter()  # events, frames sent, outcomes, reconnects
    self._notices = 0
    self._auth_refusals = CappedLog(_LOG, "AUTH refusals", limit=5, level=logging.INFO)
    self._retry_queue: "queue.Queue" = queue.Queue()
    self._sender = threading.Thread(target=self._send_loop, name="relay-sender", daemon=True)
    self._retrier = threading.Thread(target=self._retry_loop, name="relay-retry", daemon=True)
    self._sender.start()
    self._retrier.start()
    log_stage(_LOG, "RelayPublisher " + self.url, "ready", max_in_flight=self.max_in_flight,
              ack_timeout_s=float(ack_timeout), attempts=self.max_attempts,
              nip42=auth_signer is not None)

  def stats(self) -> Dict[str, int]:
    """Counts so far: events (distinct submitted), sent (frames, resends included),
    accepted, duplicate, refused (permanent), failed (transient_exhausted), resent,
    connections, reconnects, auth_refusals."""
    with self._lock:
      counts = dict(self._counts)
    keys = ("events", "sent", "accepted", "duplicate", "refused", "failed", "resent",
            "connections", "reconnects")
    out = {k: counts.get(k, 0) for k in keys}
    out["auth_refusals"] = self._auth_refusals.count
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
      while not self._closed and len(self._pending) >= self.max_in_flight:
        self._cond.wait()
      if self._closed:
        raise RuntimeError("publisher for %s is closed" % self.url)
      entry = self._pending.get(event_id)
      if entry is not None:
        entry.tokens.append(token)
        return
      self._pending[event_id] = PendingEvent(event=event, frame=frame, tokens=[token])
      self._counts["events"] += 1
      self._ready.append(event_id)
      self._cond.notify_all()

  def poll(self) -> List[PublishResult]:
    """Returns the results completed since the last poll or drain; never blocks."""
    with self._lock:
      results, self._results = self._results, []
    return results

  def drain(self, timeout: Optional[float] = None) -> List[PublishResult]:
    """Waits until every submitted event has a final result and returns the new results.

    Events still unresolved when the timeout ends get a transient_exhausted result.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._cond:
      while self._pending and not self._closed:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
          _LOG.warning("drain timed out with %d events unresolved on %s",
                       len(self._pending), self.url)
          for event_id in list(self._pending):
            self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                                "drain timed out: " + self._pending[event_id].message)
          break
        self._cond.wait(remaining if remaining is None else min(remaining, 1.0))
    return self.poll()

  def close(self) -> None:
    """Closes the connection and stops the threads; unresolved events are dropped."""
    with self._cond:
      if self._closed:
        return
      self._closed = True
      if self._pending:
        _LOG.warning("closing publisher for %s with %d events unresolved",
                     self.url, len(self._pending))
      ws, self._ws = self._ws, None
      self._cond.notify_all()
    self._retry_queue.put(None)
    close_quietly(ws)
    self._sender.join(2.0)
    log_stage(_LOG, "RelayPublisher " + self.url, "done", **self.stats())

  def __enter__(self) -> "RelayPublisher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- results and retries (call with the lock held) -------------------------

  def _finish_locked(self, event_id: str, accepted: bool, outcome: str, message: str) -> None:
    entry = self._pending.pop(event_id, None)
    if entry is None:
      return
    for token in entry.tokens:
      self._results.append(PublishResult(
          token=token, event_id=event_id, relay=self.url, accepted=accepted, outcome=outcome,
          message=message, attempts=entry.attempts))
    self._counts[{OUTCOME_ACCEPTED: "accepted", OUTCOME_DUPLICATE: "duplicate",
                  OUTCOME_PERMANENT: "refused"}.get(outcome, "failed")] += 1
    if outcome in (OUTCOME_PERMANENT, OUTCOME_TRANSIENT_EXHAUSTED):
      # Per event: the publishing DoFn, which knows the vine, reports failures.
      _LOG.debug("event %s on %s: %s after %d attempts: %.200s", event_id, self.url, outcome,
                 entry.attempts, message)
    self._cond.notify_all()

  def _retry_locked(self, event_id: str, message: str, delay: bool) -> None:
    """Resends an event (after a backoff if delay) unless it has used every attempt."""
    entry = self._pending.get(event_id)
    if entry is None:
      return
    entry.message = message
    if entry.attempts >= self.max_attempts:
      self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED, message)
      return
    self._counts["resent"] += 1
    if delay:
      entry.state = SCHEDULED
      wait = backoff_delay(entry.attempts, self.backoff_base, self.backoff_cap)
      self._retry_queue.put((self._clock() + wait, wait, event_id))
    else:
      entry.state = READY
      self._ready.append(event_id)
      self._cond.notify_all()

  def _retry_loop(self) -> None:
    """Moves scheduled resends to the ready queue when their backoff has passed."""
    while True:
      item = self._retry_queue.get()
      if item is None:
        return
      due, wait, event_id = item
      remaining = min(wait, due - self._clock())
      if remaining > 0:
        self._sleep(remaining)
      with self._cond:
        if self._closed:
          return
        entry = self._pending.get(event_id)
        if entry is not None and entry.state == SCHEDULED:
          entry.state = READY
          self._ready.append(event_id)
          self._cond.notify_all()

  # -- the sender thread -----------------------------------------------------

  def _send_loop(self) -> None:
    while True:
      with self._cond:
        while not self._closed and not self._pending:
          self._cond.wait()
        if self._closed:
          return
        connected = self._ws is not None
      if not connected:
        with self._cond:
          if self._clock() < self._down_until:
            for event_id in list(self._pending):
              self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                                  self._down_message)
            continue
          flaps = self._flaps
        if flaps:
          # A relay (or a proxy in front of one) that accepts and at once drops the
          # connection: back off as for a refused connection, so that resends do not
          # burn every attempt within milliseconds.
          self._sleep(backoff_delay(flaps, self.backoff_base, self.backoff_cap))
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
    self._auth_step_locked()
    if self._ws is None:
      return [], None, self._gen  # the AUTH round dropped the connection
    frames = list(self._outbox)
    self._outbox.clear()
    now = self._clock()
    while len(frames) < 500:
      # While an AUTH round is in progress only its own resends go out: every event
      # refused meanwhile would bring a new challenge and make the relay forget older ones.
      if self._priority:
        event_id = self._priority.popleft()
      elif self._ready and not self._auth_waiting:
        event_id = self._ready.popleft()
      else:
        break
      entry = self._pending.get(event_id)
      if entry is None or entry.state != READY:
        continue
      if entry.attempts >= self.max_attempts:
        self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                            entry.message or "no final answer")
        continue
      entry.state = SENT
      entry.attempts += 1
      entry.sent_at = now
      frames.append(entry.frame)
      self._counts["sent"] += 1
    return frames, self._ws, self._gen

  def _next_wait_locked(self) -> float:
    now = self._clock()
    deadlines = [e.sent_at + self.ack_timeout for e in self._pending.values() if e.state == SENT]
    deadlines += [sent + self.ack_timeout for _, sent, _ in self._auth_inflight.values()]
    if self._auth_waiting and self._auth_not_before > now:
      deadlines.append(self._auth_not_before)
    if not deadlines:
      return 1.0
    return min(1.0, max(0.01, min(deadlines) - now))

  def _expire_locked(self) -> None:
    """Resends events (and retries AUTHs) that got no answer within ack_timeout."""
    now = self._clock()
    for auth_id, (pubkey, sent, challenge) in list(self._auth_inflight.items()):
      if now - sent >= self.ack_timeout:
        del self._auth_inflight[auth_id]
        self._stale_challenge = challenge
        self._auth_transient_locked(pubkey, "no answer to AUTH within %.1f s" % self.ack_timeout,
                                    backoff=True)
    # Events waiting for an AUTH round are bounded by the round's own limits.
    expired = [event_id for event_id, e in self._pending.items()
               if e.state == SENT and now - e.sent_at >= self.ack_timeout]
    if not expired:
      return
    _LOG.info("%d events without an answer from %s within %.1f s; resending",
              len(expired), self.url, self.ack_timeout)
    for event_id in expired:
      self._retry_locked(event_id, "no answer within %.1f s" % self.ack_timeout, delay=False)
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
                     self.url, message, len(self._pending), self.down_retry_interval)
        for event_id in list(self._pending):
          self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED, message)
        self._connect_failures = 0
        self._down_until = self._clock() + self.down_retry_interval
        self._down_message = message
        return
    delay = backoff_delay(failures, self.backoff_base, self.backoff_cap)
    _LOG.info("cannot connect to %s (%s); retrying in %.2f s", self.url,
              type(exc).__name__, delay)
    self._sleep(delay)

  def _clear_auth_state_locked(self) -> None:
    self._challenge = None
    self._stale_challenge = None
    self._used_challenge = None
    self._reusable = None
    self._probed = False
    self._authed.clear()
    self._unlocks_all = None
    self._auth_inflight.clear()
    self._auth_failures.clear()
    self._auth_waiting.clear()
    self._auth_not_before = float("-inf")
    self._outbox.clear()
    self._ready.extend(self._priority)
    self._priority.clear()

  def _reset_connection_locked(self) -> int:
    """Forgets per-connection state; unanswered events go back to the ready queue.

    Returns:
      How many events were unanswered (to be resent).
    """
    self._clear_auth_state_locked()
    unanswered = [i for i, e in self._pending.items() if e.state in (SENT, AUTH_WAIT)]
    for event_id in unanswered:
      self._retry_locked(event_id, "connection lost", delay=False)
    return len(unanswered)

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
      msg = decode_message(raw)
      if msg is None:
        _LOG.debug("skipping a malformed message from %s", self.url)
        continue
      with self._cond:
        if gen == self._gen:
          self._last_recv = self._clock()
        if msg[0] == "OK" and len(msg) >= 3:
          self._on_ok_locked(msg, gen)
        elif msg[0] == "AUTH" and len(msg) >= 2 and isinstance(msg[1], str):
          if gen == self._gen:
            # Answered by the sender thread (_auth_step_locked), once the answers in
            # flight have arrived: only the newest challenge is worth answering.
            self._challenge = msg[1]
            self._probed = False
            self._cond.notify_all()
        elif msg[0] == "NOTICE":
          self._notices += 1
          level = logging.INFO if self._notices <= _NOTICES_LOGGED else logging.DEBUG
          _LOG.log(level, "NOTICE from %s: %.200s", self.url, msg[1] if len(msg) > 1 else "")

  def _on_ok_locked(self, msg: list, gen: int) -> None:
    event_id, accepted = msg[1], msg[2]
    message = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
    if not isinstance(event_id, str) or not isinstance(accepted, bool):
      _LOG.debug("skipping a malformed OK from %s", self.url)
      return
    if event_id in self._auth_inflight:
      self._on_auth_ok_locked(event_id, accepted, message, gen)
      return
    if gen == self._gen:
      self._flaps = 0
    entry = self._pending.get(event_id)
    if entry is None:
      return  # a late answer to an event already resolved
    prefix = message_prefix(message)
    if self._auth_waiting:
      self._cond.notify_all()  # one answer less in flight: the AUTH round may go on
    if accepted or prefix == "duplicate":
      outcome = OUTCOME_DUPLICATE if prefix == "duplicate" else OUTCOME_ACCEPTED
      self._finish_locked(event_id, True, outcome, message)
      if gen == self._gen and entry.event.get("pubkey") in self._auth_waiting:
        # The relay takes this pubkey's events now: its waiting ones need no AUTH.
        self._release_auth_waiting_locked(entry.event["pubkey"])
      return
    if entry.state != SENT:
      return  # a refusal of an earlier send: the current one is still coming
    if prefix in TRANSIENT_PREFIXES:
      self._retry_locked(event_id, message, delay=True)
    elif prefix == "auth-required" and gen == self._gen:
      self._need_auth_locked(event_id, entry, message)
    elif prefix == "auth-required":
      self._retry_locked(event_id, message, delay=False)
    else:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, message)
