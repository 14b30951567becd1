"""A small, strict Nostr relay client (NIP-01, NIP-42) over websocket-client.

Reading: ``fetch_events`` pages a filter backwards with an inclusive ``until``
and de-duplicates by id. Writing: ``RelayPublisher`` keeps many events in flight
on one connection, matches OK messages by id, classifies them by prefix, retries
transient refusals with backoff, answers NIP-42 AUTH challenges, and reconnects
and resends whatever was unacknowledged when a relay goes away.

Nothing here opens a connection at import time, and a publisher is built where
it is used (a DoFn's ``setup()``), never pickled. Logs carry ids and counts only,
never event contents or keys. INFO and above: a read's start and end per relay, a
publisher's ready and done lines (with its counts), connection losses (WARNING, once
each, with the reason) and reconnects, connection failures, the first NOTICEs of a
relay; per-event outcomes are DEBUG.
"""

import collections
import dataclasses
import ipaddress
import json
import logging
import queue
import random
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set

import websocket

from transforms.concurrency import CappedLog, log_stage

_LOG = logging.getLogger(__name__)

OUTCOME_ACCEPTED = "accepted"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_PERMANENT = "permanent"
OUTCOME_TRANSIENT_EXHAUSTED = "transient_exhausted"

_TRANSIENT_PREFIXES = ("rate-limited", "error")
_AUTH_KIND = 22242
_AUTH_REFUSALS = 3  # AUTHs refused for a pubkey on one connection before its events fail
_AUTH_RETRIES = 8  # transient AUTH failures (and fresh-challenge draws) per pubkey
_FETCH_TRIES = 4
_NOTICES_LOGGED = 5  # NOTICEs per relay connection logged at INFO (then DEBUG)


class RelayError(RuntimeError):
  """A relay refused a subscription or could not be read after retries."""


def validate_relay_url(url: str, allow_loopback_ws: bool = True) -> str:
  """Checks a relay url: wss:// anywhere, ws:// only for loopback hosts.

  Args:
    url: the relay url.
    allow_loopback_ws: whether ws:// is allowed for 127.0.0.0/8, ::1 and localhost.

  Returns:
    The url, stripped of surrounding whitespace.

  Raises:
    ValueError: the url (named in the message) is not an acceptable relay url.
  """
  text = (url or "").strip() if isinstance(url, str) else ""
  if "@" in text:  # first, so that no message below repeats credentials
    raise ValueError("relay url must not carry credentials (user:password@)")
  try:
    parts = urllib.parse.urlsplit(text)
    host = parts.hostname
    _ = parts.port  # raises ValueError on a bad port
  except ValueError:
    raise ValueError("relay url %r is not a valid url" % (url,)) from None
  scheme = parts.scheme.lower()
  if not host:
    raise ValueError("relay url %r has no host" % (url,))
  if scheme == "wss":
    return text
  if scheme == "ws":
    if allow_loopback_ws and _is_loopback(host):
      return text
    raise ValueError("relay url %r must use wss:// (ws:// is only allowed for loopback)" % (url,))
  raise ValueError("relay url %r must start with wss://" % (url,))


def _is_loopback(host: str) -> bool:
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def backoff_delay(attempt: int, base: float, cap: float) -> float:
  """Exponential backoff with equal jitter: between half and all of base * 2**(attempt-1)."""
  delay = min(cap, base * (2 ** max(0, attempt - 1)))
  return delay * (0.5 + random.random() * 0.5)


def _prefix(message: str) -> str:
  head, sep, _ = message.partition(":")
  return head.strip().lower() if sep else ""


# ---------------------------------------------------------------------------
# Reading.


def decode_message(raw: Any) -> Optional[list]:
  try:
    msg = json.loads(raw)
  except (TypeError, ValueError):
    return None
  if isinstance(msg, list) and msg and isinstance(msg[0], str):
    return msg
  return None


def _read_page(ws, flt: Dict[str, Any], timeout: float) -> List[dict]:
  """Sends one REQ and collects its events until EOSE; CLOSEs the subscription."""
  sub_id = "f" + uuid.uuid4().hex[:15]
  ws.send(json.dumps(["REQ", sub_id, flt]))
  deadline = time.monotonic() + timeout
  events = []
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise websocket.WebSocketTimeoutException("no EOSE within %.1f s" % timeout)
    ws.settimeout(remaining)
    msg = decode_message(ws.recv())
    if msg is None:
      _LOG.debug("skipping a malformed relay message")
      continue
    kind = msg[0]
    if len(msg) < 2 or msg[1] != sub_id:
      continue
    if kind == "EVENT":
      event = msg[2] if len(msg) > 2 else None
      if (isinstance(event, dict) and isinstance(event.get("id"), str)
          and isinstance(event.get("created_at"), int)
          and not isinstance(event.get("created_at"), bool)):
        events.append(event)
      else:
        _LOG.debug("skipping a malformed EVENT message on %s", sub_id)
    elif kind == "EOSE":
      ws.send(json.dumps(["CLOSE", sub_id]))
      return events
    elif kind == "CLOSED":
      reason = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else ""
      if _prefix(reason) in _TRANSIENT_PREFIXES:
        raise websocket.WebSocketException("subscription closed: %s" % reason)
      raise RelayError("relay closed the subscription: %s" % reason)


def fetch_events(url: str, base_filter: Dict[str, Any], page_size: int = 500,
                 timeout: float = 30.0, max_pages: Optional[int] = None) -> Iterator[dict]:
  """Yields every event a relay holds for a filter, newest first, each id once.

  Pages backwards with ``until`` = the oldest created_at seen (inclusive, so that
  second is read again and de-duplicated) and stops when a page adds nothing
  new. Events are yielded raw: the caller validates them.

  Args:
    url: relay url (see validate_relay_url).
    base_filter: a NIP-01 filter; its own ``until`` is the starting point.
    page_size: the ``limit`` of each REQ.
    timeout: seconds to wait for one page's EOSE (and to connect).
    max_pages: stop after this many pages (None: no bound).

  Yields:
    Event dicts as the relay sent them.

  Raises:
    RelayError: the relay refused the subscription or could not be read after retries.
  """
  url = validate_relay_url(url)
  seen: Set[str] = set()
  until = base_filter.get("until")
  largest_page = 0
  pages = 0
  reconnects = 0
  ws = None
  _LOG.info("reading %s: start (kinds %s, page size %d%s)", url, base_filter.get("kinds"),
            page_size, "" if max_pages is None else ", at most %d pages" % max_pages)
  try:
    while max_pages is None or pages < max_pages:
      flt = dict(base_filter)
      flt["limit"] = page_size
      if until is not None:
        flt["until"] = until
      for attempt in range(1, _FETCH_TRIES + 1):
        try:
          if ws is None:
            # websocket-client checks UTF-8 in pure Python (about 1 ms per event read);
            # recv() decodes strictly and json.loads refuses bad text anyway.
            ws = websocket.create_connection(url, timeout=timeout, skip_utf8_validation=True)
          page = _read_page(ws, flt, timeout)
          break
        except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
          _close_quietly(ws)
          ws = None
          if attempt == _FETCH_TRIES:
            raise RelayError("reading %s failed after %d tries: %s"
                             % (url, attempt, type(exc).__name__)) from exc
          reconnects += 1
          _LOG.warning("reading %s: connection lost (%s); reconnecting (try %d of %d)", url,
                       type(exc).__name__, attempt + 1, _FETCH_TRIES)
          time.sleep(backoff_delay(attempt, 0.5, 5.0))
      pages += 1
      new = [e for e in page if e["id"] not in seen]
      if not new:
        # A full page (by our limit, or by the largest page the relay has returned,
        # which reveals its own cap) of one second's events may hide more of them.
        # A page as large as our limit is certainly full: WARNING. One as large as the
        # largest page seen may be a relay cap, or simply all there is (a small relay
        # whose events share one second): INFO.
        if len(page) >= page_size or (largest_page > 1 and len(page) >= largest_page):
          _LOG.log(logging.WARNING if len(page) >= page_size else logging.INFO,
                   "relay %s returned a full page of %d already-seen events at until=%s: it "
                   "may hold more events at that second than one page can return", url,
                   len(page), until)
        break
      largest_page = max(largest_page, len(page))
      for event in new:
        seen.add(event["id"])
      until = min(e["created_at"] for e in page)
      yield from new
    _LOG.info("reading %s: done (%d events in %d pages, %d reconnects)", url, len(seen), pages,
              reconnects)
  finally:
    _close_quietly(ws)


def _close_quietly(ws) -> None:
  if ws is not None:
    try:
      ws.close()
    except Exception:  # pylint: disable=broad-except
      pass


# ---------------------------------------------------------------------------
# Writing.


@dataclasses.dataclass
class PublishResult:
  """The final result of publishing one event to one relay."""

  token: Any
  event_id: str
  relay: str
  accepted: bool
  outcome: str
  message: str
  attempts: int


_READY, _SENT, _SCHEDULED, _AUTH_WAIT = "ready", "sent", "scheduled", "auth_wait"


@dataclasses.dataclass
class _Entry:
  event: dict
  frame: str
  tokens: List[Any]
  state: str = _READY
  attempts: int = 0
  sent_at: float = 0.0
  message: str = ""


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
    self._auth_signer = auth_signer
    self._sleep = sleep
    self._clock = clock
    self._lock = threading.Lock()
    self._cond = threading.Condition(self._lock)
    self._pending: Dict[str, _Entry] = {}
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
      self._pending[event_id] = _Entry(event=event, frame=frame, tokens=[token])
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
    _close_quietly(ws)
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
      entry.state = _SCHEDULED
      wait = backoff_delay(entry.attempts, self.backoff_base, self.backoff_cap)
      self._retry_queue.put((self._clock() + wait, wait, event_id))
    else:
      entry.state = _READY
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
        if entry is not None and entry.state == _SCHEDULED:
          entry.state = _READY
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
      if entry is None or entry.state != _READY:
        continue
      if entry.attempts >= self.max_attempts:
        self._finish_locked(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                            entry.message or "no final answer")
        continue
      entry.state = _SENT
      entry.attempts += 1
      entry.sent_at = now
      frames.append(entry.frame)
      self._counts["sent"] += 1
    return frames, self._ws, self._gen

  def _next_wait_locked(self) -> float:
    now = self._clock()
    deadlines = [e.sent_at + self.ack_timeout for e in self._pending.values() if e.state == _SENT]
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
               if e.state == _SENT and now - e.sent_at >= self.ack_timeout]
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
    threading.Thread(target=_close_quietly, args=(ws,), daemon=True).start()

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
        _close_quietly(ws)
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
    unanswered = [i for i, e in self._pending.items() if e.state in (_SENT, _AUTH_WAIT)]
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
    _close_quietly(ws)

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
    prefix = _prefix(message)
    if self._auth_waiting:
      self._cond.notify_all()  # one answer less in flight: the AUTH round may go on
    if accepted or prefix == "duplicate":
      outcome = OUTCOME_DUPLICATE if prefix == "duplicate" else OUTCOME_ACCEPTED
      self._finish_locked(event_id, True, outcome, message)
      if gen == self._gen and entry.event.get("pubkey") in self._auth_waiting:
        # The relay takes this pubkey's events now: its waiting ones need no AUTH.
        self._release_auth_waiting_locked(entry.event["pubkey"])
      return
    if entry.state != _SENT:
      return  # a refusal of an earlier send: the current one is still coming
    if prefix in _TRANSIENT_PREFIXES:
      self._retry_locked(event_id, message, delay=True)
    elif prefix == "auth-required" and gen == self._gen:
      self._need_auth_locked(event_id, entry, message)
    elif prefix == "auth-required":
      self._retry_locked(event_id, message, delay=False)
    else:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, message)

  # -- NIP-42 ----------------------------------------------------------------
  #
  # One AUTH round at a time per connection. An event refused with auth-required
  # waits (_AUTH_WAIT, listed by pubkey in _auth_waiting) and, while any event waits,
  # no new event is sent: each refusal would bring a new challenge, and relays keep
  # only a few (nostr-sdk's LocalRelay forgets them all past 20), each good once.
  # Once no event is in flight the sender answers the newest challenge as the first
  # waiting pubkey (_auth_step_locked). When the relay accepts, the waiting events are
  # resent: all of them, unless this connection has shown that one pubkey's AUTH does
  # not let others write (then only that pubkey's, and the round goes on with the
  # next pubkey). A challenge the relay no longer holds, a rate-limited or unanswered
  # AUTH are transient: retried on a fresh challenge (drawn by resending one waiting
  # event, or by reconnecting when that brings none), after a backoff for the rate
  # limits, at most _AUTH_RETRIES times per pubkey. Other AUTH refusals fail the
  # pubkey's events after _AUTH_REFUSALS.

  def _need_auth_locked(self, event_id: str, entry: _Entry, message: str) -> None:
    pubkey = entry.event.get("pubkey")
    if self._signer_for(pubkey) is None:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, "auth-required: no key")
      return
    entry.message = message
    refusals, refusal = self._auth_failures.get(pubkey, (0, ""))
    if refusals >= _AUTH_REFUSALS:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, "auth failed: " + refusal)
      return
    if pubkey in self._authed:
      # Authenticated yet refused: let the attempt bound end it.
      self._retry_locked(event_id, message, delay=True)
      return
    if self._authed:
      self._unlocks_all = False  # another pubkey's AUTH did not let this one write
    # A refusal that only asks for an AUTH does not use up one of the event's attempts
    # (the AUTH round has its own bounds).
    entry.attempts = max(0, entry.attempts - 1)
    entry.state = _AUTH_WAIT
    waiting = self._auth_waiting.setdefault(pubkey, [])
    if event_id not in waiting:
      waiting.append(event_id)
    self._cond.notify_all()

  def _signer_for(self, pubkey: Any):
    if self._auth_signer is None or not isinstance(pubkey, str):
      return None
    try:
      return self._auth_signer(pubkey)
    except Exception:  # pylint: disable=broad-except
      _LOG.warning("auth_signer failed for pubkey %s", pubkey)
      return None

  def _auth_step_locked(self) -> None:
    """Moves the AUTH round on: answers the newest challenge, or draws a fresh one."""
    if not self._auth_waiting or self._auth_inflight or self._ws is None:
      return
    if self._clock() < self._auth_not_before:
      return
    if any(e.state == _SENT for e in self._pending.values()):
      return  # their answers may bring newer challenges
    for pubkey in list(self._auth_waiting):
      ids = [i for i in self._auth_waiting[pubkey]
             if i in self._pending and self._pending[i].state == _AUTH_WAIT]
      if ids:
        self._auth_waiting[pubkey] = ids
        break
      del self._auth_waiting[pubkey]
    else:
      return  # nothing waits any more: the round is over
    usable = self._challenge is not None and self._challenge != self._stale_challenge and not (
        self._challenge == self._used_challenge and self._reusable is False)
    if usable:
      signer = self._signer_for(pubkey)
      if signer is None:
        self._fail_auth_waiting_locked(pubkey, OUTCOME_PERMANENT, "auth-required: no key")
        return
      auth = signer.sign({
          "created_at": int(time.time()), "kind": _AUTH_KIND, "content": "",
          "tags": [["relay", self.url], ["challenge", self._challenge]]})
      self._auth_inflight[auth["id"]] = (pubkey, self._clock(), self._challenge)
      self._outbox.append(json.dumps(["AUTH", auth]))
      _LOG.debug("authenticating to %s as %s", self.url, pubkey)
      return
    # No challenge the relay still holds.
    if self._probed:
      # Resending an event brought none: a new connection may (many relays send one
      # on connect). The waiting events go back to the ready queue.
      self._drop_connection_locked("no fresh AUTH challenge", level=logging.INFO)
      return
    if not self._count_auth_retry_locked(pubkey, "no fresh AUTH challenge"):
      return
    # Resend one waiting event: its refusal brings a fresh challenge.
    self._probed = True
    self._auth_waiting[pubkey] = ids[1:]  # the key stays: the round is not over
    self._pending[ids[0]].state = _READY
    self._priority.append(ids[0])

  def _on_auth_ok_locked(self, auth_id: str, accepted: bool, message: str, gen: int) -> None:
    pubkey, _, challenge = self._auth_inflight.pop(auth_id)
    if gen != self._gen:
      return
    self._cond.notify_all()
    if accepted:
      self._authed.add(pubkey)
      self._auth_retries.pop(pubkey, None)
      if challenge == self._used_challenge:
        self._reusable = True
      self._used_challenge = challenge
      _LOG.debug("authenticated to %s as %s", self.url, pubkey)
      for key in ([pubkey] if self._unlocks_all is False else list(self._auth_waiting)):
        self._release_auth_waiting_locked(key)
      return
    self._auth_refusals.log("AUTH as %s refused by %s: %.200s", pubkey, self.url, message)
    if _prefix(message) in _TRANSIENT_PREFIXES:  # rate-limited: back off, then the newest
      self._auth_transient_locked(pubkey, message, backoff=True)
    elif "challenge" in message.lower():
      # A challenge the relay no longer holds (too old, already used, forgotten).
      self._stale_challenge = challenge
      if challenge == self._used_challenge:
        self._reusable = False  # single-use challenges: wait for a fresh one next time
      self._auth_transient_locked(pubkey, message, backoff=False)
    else:
      self._stale_challenge = challenge  # it may have been used up
      refusals = self._auth_failures.get(pubkey, (0, ""))[0] + 1
      self._auth_failures[pubkey] = (refusals, message)
      if refusals >= _AUTH_REFUSALS:
        self._fail_auth_waiting_locked(pubkey, OUTCOME_PERMANENT, "auth failed: " + message)

  def _auth_transient_locked(self, pubkey: str, message: str, backoff: bool) -> None:
    if self._count_auth_retry_locked(pubkey, message) and backoff:
      self._auth_not_before = self._clock() + backoff_delay(
          self._auth_retries[pubkey], self.backoff_base, self.backoff_cap)

  def _count_auth_retry_locked(self, pubkey: str, message: str) -> bool:
    """Counts one transient AUTH failure; False (events failed) past _AUTH_RETRIES."""
    retries = self._auth_retries.get(pubkey, 0) + 1
    self._auth_retries[pubkey] = retries
    if retries <= _AUTH_RETRIES:
      return True
    self._fail_auth_waiting_locked(pubkey, OUTCOME_TRANSIENT_EXHAUSTED,
                                   "auth failed after %d tries: %s" % (retries - 1, message))
    return False

  def _release_auth_waiting_locked(self, pubkey: str) -> None:
    """Resends a pubkey's waiting events, ahead of the events held during the round."""
    for event_id in self._auth_waiting.pop(pubkey, []):
      entry = self._pending.get(event_id)
      if entry is not None and entry.state == _AUTH_WAIT:
        entry.state = _READY
        self._priority.append(event_id)
    self._cond.notify_all()

  def _fail_auth_waiting_locked(self, pubkey: str, outcome: str, message: str) -> None:
    for event_id in self._auth_waiting.pop(pubkey, []):
      entry = self._pending.get(event_id)
      if entry is not None and entry.state == _AUTH_WAIT:
        self._finish_locked(event_id, False, outcome, message)
    self._cond.notify_all()
