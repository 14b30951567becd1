"""Reads events from a Nostr relay (NIP-01): ``fetch_events`` pages a filter backwards.

Each page is one REQ, read until EOSE and then CLOSEd; pages go backwards with an
inclusive ``until`` and events are de-duplicated by id. A lost connection is
reopened, with backoff, a few times per page. Logs carry ids and counts only: a
read's start and end per relay at INFO, connection losses, incomplete seconds and
misbehaving relays at WARNING.

Completeness. NIP-01 makes a REQ with ``limit: n`` return the newest n events, so a
page that holds an event older than its ``until`` second holds all of that second.
A page made only of its ``until`` second may be truncated (more events in one second
than the relay returns at once): that second is asked again with a larger limit (x4,
up to MAX_SECOND_LIMIT). Paging ends when a page is short: fewer events than asked
and fewer than the relay has already shown it returns at once (its cap is never
below that). A second that a larger limit did not complete is whole only if the relay
can return more events than it did there: the read shows that (a larger page) or a
probe asks for one more event than that of those already read. When it cannot be
shown, the second is reported in ``ReadReport.seconds_incomplete`` (WARNING) and
paging goes on below it. (One case cannot be told apart: a relay whose only matching
events all share one second, returned at once in fewer than asked; it is taken as
whole.)

Bounds. A read stops with ``RelayMisbehaving`` (a ``RelayError``) when the relay
sends events newer than the ``until`` asked, serves the oldest events first, sends
far more than the ``limit`` asked, or the read passes ``max_requests`` REQs or
``max_seconds``. Messages that are oversized, too deeply nested or malformed, and
events outside the filter asked for, are dropped and tallied in the ``ReadReport``.
"""

import collections
import dataclasses
import json
import logging
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import websocket

from transforms.clients.relay.common import (
  TRANSIENT_PREFIXES,
  RelayError,
  RelayMisbehaving,
  close_quietly,
  is_event_shape,
  matches_filter,
  message_prefix,
  parse_message,
  validate_relay_url,
)
from transforms.core.backoff import exponential_backoff

_LOG = logging.getLogger(__name__)

_FETCH_TRIES = 4

# Largest ``limit`` asked when a second holds more events than a page (see the module
# docstring); the page size when that is larger.
MAX_SECOND_LIMIT = 5000
SECOND_LIMIT_GROWTH = 4
# Default bounds of one relay read: the events a read may need (a ceiling on the corpus,
# with room) give the REQs, and the time follows from them: an hour, or 5 s per REQ
# allowed when that is more (a slow honest relay serving a million events must not be
# taken for one that never ends: the REQ bound already stops those).
READ_EVENTS_CEILING = 2_000_000
MIN_READ_SECONDS = 3600.0
READ_SECONDS_PER_REQUEST = 5.0
# A page may hold this many times its limit before the relay counts as ignoring limit.
_LIMIT_SLACK = 2


@dataclasses.dataclass
class ReadReport:
  """What one fetch_events read dropped or could not complete (the caller counts it).

  Attributes:
    requests: REQs sent (pages, larger-limit re-reads and capacity probes).
    dropped: messages dropped by reason (common.DROP_*), plus "event_shape" for EVENT
      messages whose payload lacks a string id or integer created_at.
    outside_filter: events the relay sent that do not match the filter asked for.
    seconds_incomplete: created_at seconds the relay held more events at than it
      would return; their remaining events were not read.
  """
  requests: int = 0
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  outside_filter: int = 0
  seconds_incomplete: List[int] = dataclasses.field(default_factory=list)


def default_max_requests(page_size: int) -> int:
  """REQs allowed in one read: enough pages for READ_EVENTS_CEILING events, and room."""
  return READ_EVENTS_CEILING // max(1, page_size) + 100


def _read_page(ws, url: str, flt: Dict[str, Any], timeout: float,
               report: ReadReport) -> List[dict]:
  """Sends one REQ and collects its events (in the order sent) until EOSE; CLOSEs it.

  Raises:
    RelayMisbehaving: an event newer than the filter's until, or far more than its limit.
  """
  sub_id = "f" + uuid.uuid4().hex[:15]
  ws.send(json.dumps(["REQ", sub_id, flt]))
  report.requests += 1
  deadline = time.monotonic() + timeout
  events = []
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise websocket.WebSocketTimeoutException("no EOSE within %.1f s" % timeout)
    ws.settimeout(remaining)
    msg, why = parse_message(ws.recv())
    if msg is None:
      report.dropped[why] += 1
      continue
    kind = msg[0]
    if len(msg) < 2 or msg[1] != sub_id:
      continue
    if kind == "EVENT":
      event = msg[2] if len(msg) > 2 else None
      if not is_event_shape(event):
        report.dropped["event_shape"] += 1
      elif flt.get("until") is not None and event["created_at"] > flt["until"]:
        raise RelayMisbehaving("relay %s sent an event of %d for until=%d: it ignores until"
                               % (url, event["created_at"], flt["until"]))
      elif not matches_filter(event, flt):
        report.outside_filter += 1
      else:
        events.append(event)
        if len(events) > _LIMIT_SLACK * flt["limit"]:
          raise RelayMisbehaving("relay %s sent more than %d events for limit %d"
                                 % (url, len(events) - 1, flt["limit"]))
    elif kind == "EOSE":
      ws.send(json.dumps(["CLOSE", sub_id]))
      return events
    elif kind == "CLOSED":
      reason = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else ""
      if message_prefix(reason) in TRANSIENT_PREFIXES:
        raise websocket.WebSocketException("subscription closed: %s" % reason)
      raise RelayError("relay closed the subscription: %s" % reason)


def _ascending(page: List[dict], limit: int) -> bool:
  """Whether a full page came oldest first (ascending created_at, as sent). A relay may
  pick the newest events and send them so; one that picked the oldest would hide the
  newer ones (see _Read.newer_than)."""
  times = [e["created_at"] for e in page]
  return (len(page) >= limit and times[0] < times[-1]
          and all(a <= b for a, b in zip(times, times[1:])))


class _Read:
  """The state of one fetch_events read: connection, bounds, ids seen, relay capacity."""

  def __init__(self, url, base_filter, page_size, timeout, max_requests, max_seconds, report):
    self.url = url
    self.base = dict(base_filter)
    self.page_size = max(1, page_size)
    self.timeout = timeout
    self.max_requests = max_requests
    self.deadline = time.monotonic() + max_seconds
    self.max_seconds = max_seconds
    self.report = report
    self.seen: Set[str] = set()
    self.newest: Optional[int] = None  # newest created_at read
    self.capacity = 0  # the most events the relay returned to one REQ
    self.reconnects = 0
    self.ws = None

  def request(self, until: Optional[int], limit: int, since: Optional[int] = None
              ) -> List[dict]:
    """One REQ (with reconnects); returns its events, as sent."""
    if self.report.requests >= self.max_requests:
      raise RelayMisbehaving("reading %s did not end within %d requests"
                             % (self.url, self.max_requests))
    if time.monotonic() > self.deadline:
      raise RelayMisbehaving("reading %s did not end within %.0f s" % (self.url, self.max_seconds))
    flt = dict(self.base)
    flt["limit"] = limit
    if until is not None:
      flt["until"] = until
    if since is not None:
      flt["since"] = max(since, flt.get("since", since))
    for attempt in range(1, _FETCH_TRIES + 1):
      try:
        if self.ws is None:
          # websocket-client checks UTF-8 in pure Python (about 1 ms per event read);
          # recv() decodes strictly and json.loads refuses bad text anyway.
          self.ws = websocket.create_connection(self.url, timeout=self.timeout,
                                                skip_utf8_validation=True)
        return _read_page(self.ws, self.url, flt, self.timeout, self.report)
      except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
        close_quietly(self.ws)
        self.ws = None
        if attempt == _FETCH_TRIES:
          raise RelayError("reading %s failed after %d tries: %s"
                           % (self.url, attempt, type(exc).__name__)) from exc
        self.reconnects += 1
        _LOG.warning("reading %s: connection lost (%s); reconnecting (try %d of %d)", self.url,
                     type(exc).__name__, attempt + 1, _FETCH_TRIES)
        time.sleep(exponential_backoff(attempt, 0.5, 5.0))
    raise AssertionError("unreachable")

  def take_new(self, page: List[dict]) -> List[dict]:
    """The page's events not read before (each id once), remembered as read."""
    new = []
    for event in page:
      if event["id"] not in self.seen:
        self.seen.add(event["id"])
        new.append(event)
        if self.newest is None or event["created_at"] > self.newest:
          self.newest = event["created_at"]
    return new

  def newer_than(self, page: List[dict], until: Optional[int]) -> bool:
    """Whether the relay holds an event newer than a page's newest, up to until: it
    then served the oldest events instead of the newest."""
    return bool(self.request(until, 1, since=max(e["created_at"] for e in page) + 1))

  def can_return_more_than(self, count: int) -> Optional[List[dict]]:
    """Probes whether the relay returns more than count events to one REQ.

    Asks for count + 1 events it is known to hold (it has sent more than count
    already); returns the probe's events when it answered more than count, else None.
    Without count + 1 known events there is nothing to ask: returns [] (taken as yes:
    the relay holds nothing beyond those events, so nothing can be shown missing).
    """
    if len(self.seen) <= count:
      return []
    page = self.request(self.newest, count + 1)
    self.capacity = max(self.capacity, len(page))
    return page if len(page) > count else None


def _incomplete(url: str, second: int, count: int, report: ReadReport) -> None:
  report.seconds_incomplete.append(second)
  _LOG.warning("relay %s holds more events at created_at %d than it returns at once (%d): "
               "the rest of that second is not read", url, second, count)


def fetch_events(url: str, base_filter: Dict[str, Any], page_size: int = 500,
                 timeout: float = 30.0, max_pages: Optional[int] = None,
                 report: Optional[ReadReport] = None, max_requests: Optional[int] = None,
                 max_seconds: Optional[float] = None) -> Iterator[dict]:
  """Yields every event a relay holds for a filter, newest first, each id once.

  Pages backwards with ``until`` = the oldest created_at seen (inclusive); a second
  that fills a page is re-read with a larger limit (see the module docstring).
  Events are yielded raw (only their id, created_at and the filter are checked):
  the caller validates them.

  Args:
    url: relay url (see validate_relay_url).
    base_filter: a NIP-01 filter; its own ``until`` is the starting point.
    page_size: the ``limit`` of each page.
    timeout: seconds to wait for one page's EOSE (and to connect).
    max_pages: stop (quietly: a chosen partial read) after this many pages (None: no bound).
    report: filled with what was dropped or left incomplete (see ReadReport).
    max_requests: REQs after which the relay counts as misbehaving (None: from page_size).
    max_seconds: seconds after which the relay counts as misbehaving (None: from the
      REQ bound, at least MIN_READ_SECONDS).

  Yields:
    Event dicts as the relay sent them.

  Raises:
    RelayMisbehaving: the relay broke NIP-01 so that the read cannot be trusted or end.
    RelayError: the relay refused the subscription or could not be read after retries.
  """
  url = validate_relay_url(url)
  report = report if report is not None else ReadReport()
  max_requests = max_requests or default_max_requests(page_size)
  if max_seconds is None:
    max_seconds = max(MIN_READ_SECONDS, READ_SECONDS_PER_REQUEST * max_requests)
  read = _Read(url, base_filter, page_size, timeout, max_requests, max_seconds, report)
  until = base_filter.get("until")
  limit = read.page_size
  pages = 0
  suspects: List[Tuple[int, int]] = []  # (second, events read at it) the relay may cap
  _LOG.info("reading %s: start (kinds %s, page size %d%s)", url, base_filter.get("kinds"),
            read.page_size, "" if max_pages is None else ", at most %d pages" % max_pages)
  try:
    while max_pages is None or pages < max_pages:
      page = read.request(until, limit)
      pages += 1
      if _ascending(page, limit) and read.newer_than(page, until):
        raise RelayMisbehaving("relay %s served the oldest events first" % url)
      yield from read.take_new(page)
      shown, read.capacity = read.capacity, max(read.capacity, len(page))
      if not page:
        break
      oldest = min(e["created_at"] for e in page)
      if len(page) < limit and len(page) < shown:
        break  # the relay could return more and did not: nothing older is left
      if until is None or oldest < until:
        until, limit = oldest, read.page_size
        continue
      # Every event of the page is of the second `until`: it may hold more.
      top = max(MAX_SECOND_LIMIT, read.page_size)
      if len(page) >= limit and limit < top:
        limit = min(limit * SECOND_LIMIT_GROWTH, top)
        continue
      if len(page) >= limit:
        _incomplete(url, until, len(page), report)
      else:
        suspects.append((until, len(page)))  # whole unless the relay caps at len(page)
      until, limit = until - 1, read.page_size
    for second, count in suspects:
      if read.capacity > count:
        continue
      probe = read.can_return_more_than(count)
      if probe is None:
        _incomplete(url, second, count, report)
      else:
        yield from read.take_new(probe)
    _LOG.info("reading %s: done (%d events in %d pages, %d requests, %d reconnects%s)", url,
              len(read.seen), pages, report.requests, read.reconnects,
              "; %d seconds incomplete" % len(report.seconds_incomplete)
              if report.seconds_incomplete else "")
  finally:
    close_quietly(read.ws)
