"""Reads events from a Nostr relay (NIP-01): ``fetch_events`` pages a filter backwards.

Each page is one REQ, read until EOSE and then CLOSEd; pages go backwards with an
inclusive ``until`` and events are de-duplicated by id. A lost connection is
reopened, with backoff, a few times per page. Logs carry ids and counts only: a
read's start and end per relay at INFO, connection losses at WARNING.
"""

import json
import logging
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Set

import websocket

from transforms.clients.relay.common import (
  TRANSIENT_PREFIXES,
  RelayError,
  close_quietly,
  decode_message,
  is_event_shape,
  message_prefix,
  validate_relay_url,
)
from transforms.core.backoff import exponential_backoff

_LOG = logging.getLogger(__name__)

_FETCH_TRIES = 4


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
      if is_event_shape(event):
        events.append(event)
      else:
        _LOG.debug("skipping a malformed EVENT message on %s", sub_id)
    elif kind == "EOSE":
      ws.send(json.dumps(["CLOSE", sub_id]))
      return events
    elif kind == "CLOSED":
      reason = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else ""
      if message_prefix(reason) in TRANSIENT_PREFIXES:
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
          close_quietly(ws)
          ws = None
          if attempt == _FETCH_TRIES:
            raise RelayError("reading %s failed after %d tries: %s"
                             % (url, attempt, type(exc).__name__)) from exc
          reconnects += 1
          _LOG.warning("reading %s: connection lost (%s); reconnecting (try %d of %d)", url,
                       type(exc).__name__, attempt + 1, _FETCH_TRIES)
          time.sleep(exponential_backoff(attempt, 0.5, 5.0))
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
    close_quietly(ws)

