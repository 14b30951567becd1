"""ReadRelayEvents: every kind 32222 event from the relays, verified, newest per (pubkey, d).

Output: (vine_id, SourceEvent) for events with a Vine id; tagged skips for events
without one (`no_vine_id`) and tagged dead letters for events whose id or signature
does not check (never republished). Events are read from each relay in pages of 500
going backwards (inclusive `until`), de-duplicated by id across relays, and reduced
to the version a relay keeps: highest created_at, then lowest id.
"""

import hashlib
import json
import logging
from functools import reduce
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms import accounting
from transforms import dead_letters as dl
from transforms.nostr_event import first_tag_value, validate_event
from transforms.records import SKIP_NO_VINE_ID, VIDEO_KIND, newer, to_source_event
from transforms.relay_client import fetch_events

_LOG = logging.getLogger(__name__)

INVALID = "invalid"


def _raw_id(event: Any) -> str:
  if isinstance(event, dict) and isinstance(event.get("id"), str):
    return event["id"][:128]
  return hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()


def _decode_line(line: str) -> Any:
  """An NDJSON line; a line that is not JSON is kept as text and fails validation."""
  try:
    return json.loads(line)
  except ValueError:
    return {"unparseable_line": line[:1000]}


class FetchRelayEventsFn(beam.DoFn):
  """relay URL -> raw event dicts (unverified)."""

  def __init__(self, page_size: int = 500, max_pages: Optional[int] = None,
               since: Optional[int] = None):
    super().__init__()
    self._page_size = page_size
    self._max_pages = max_pages
    self._since = since

  def process(self, relay_url: str) -> Iterator[Dict[str, Any]]:
    base_filter: Dict[str, Any] = {"kinds": [VIDEO_KIND]}
    if self._since is not None:
      base_filter["since"] = self._since
    count = 0
    for event in fetch_events(relay_url, base_filter, page_size=self._page_size,
                              max_pages=self._max_pages):
      count += 1
      yield event
    accounting.inc("events_read", count)
    _LOG.info("read %d events from %s", count, relay_url)


class ValidateEventFn(beam.DoFn):
  """raw event -> ((pubkey, d or id), event), or (id, (event, reason)) tagged INVALID."""

  def process(self, event: Any) -> Iterator[Any]:
    problem = validate_event(event)
    if problem is None and event.get("kind") != VIDEO_KIND:
      problem = "kind %r is not %d" % (event.get("kind"), VIDEO_KIND)
    if problem:
      yield TaggedOutput(INVALID, (_raw_id(event), (event, problem)))
      return
    d_value = first_tag_value(event["tags"], "d")
    key = (event["pubkey"], "d:" + d_value) if d_value is not None else (
        event["pubkey"], "id:" + event["id"])
    yield key, event


class ClassifyEventFn(beam.DoFn):
  """Newest event of a (pubkey, d) -> (vine_id, SourceEvent) or a tagged skip."""

  def process(self, keyed: Tuple[Tuple[str, str], Dict[str, Any]]) -> Iterator[Any]:
    _, event = keyed
    accounting.inc(accounting.EVENTS_CHECKED)
    source = to_source_event(event)
    if not source.vine_id:
      accounting.born()
      accounting.skipped(SKIP_NO_VINE_ID)
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_READ_EVENTS, SKIP_NO_VINE_ID, None,
                                                  event["id"]))
      return
    yield source.vine_id, source


class InvalidEventFn(beam.DoFn):
  """(id, [(event, reason)...]) -> one bad_input dead letter per distinct invalid event."""

  def __init__(self, run_id: str):
    super().__init__()
    self._run_id = run_id

  def process(self, keyed) -> Iterator[Dict[str, Any]]:
    event_id, entries = keyed
    event, reason = entries[0]
    accounting.born()
    accounting.dead_lettered(dl.STAGE_READ_EVENTS)
    vine_id = None
    if isinstance(event, dict) and isinstance(event.get("tags"), list):
      try:
        vine_id = first_tag_value(event["tags"], "d")
      except (TypeError, IndexError):
        vine_id = None
    yield dl.make_dead_letter(self._run_id, dl.STAGE_READ_EVENTS, dl.BAD_INPUT, reason,
                              vine_id=vine_id if isinstance(vine_id, str) else None,
                              event_id=event_id, payload={"event": event})


class ReadRelayEvents(beam.PTransform):
  """PBegin -> {main: (vine_id, SourceEvent), skipped, dead_letter}."""

  def __init__(self, relays: Sequence[str], run_id: str, page_size: int = 500,
               max_pages: Optional[int] = None, raw_events=None,
               events_file: Optional[str] = None):
    super().__init__()
    self._relays = list(relays)
    self._run_id = run_id
    self._page_size = page_size
    self._max_pages = max_pages
    self._raw_events = raw_events  # a PTransform producing raw events (tests, replay)
    self._events_file = events_file  # extra NDJSON events, e.g. a relay export

  def expand(self, pbegin):
    if self._raw_events is not None:
      raw = pbegin | "ReadRawEvents" >> self._raw_events
    else:
      raw = (pbegin
             | "ListRelays" >> beam.Create(self._relays)
             | "FetchEvents" >> beam.ParDo(FetchRelayEventsFn(self._page_size, self._max_pages)))
    if self._events_file:
      from_file = (pbegin
                   | "ReadEventsFile" >> beam.io.ReadFromText(self._events_file)
                   | "DecodeEventLines" >> beam.Map(_decode_line))
      raw = (raw, from_file) | "MergeEventSources" >> beam.Flatten()
    checked = raw | "VerifyEvents" >> beam.ParDo(ValidateEventFn()).with_outputs(
        INVALID, main="valid")
    newest = (checked.valid
              | "KeepNewestPerAddress" >> beam.CombinePerKey(lambda evs: reduce(newer, evs))
              | "ExtractVineIds" >> beam.ParDo(ClassifyEventFn()).with_outputs(
                  dl.SKIPPED, main="main"))
    invalid = (checked[INVALID]
               | "GroupInvalidById" >> beam.GroupByKey()
               | "DeadLetterInvalid" >> beam.ParDo(InvalidEventFn(self._run_id)))
    return {"main": newest.main, dl.SKIPPED: newest[dl.SKIPPED], dl.DEAD_LETTER: invalid}
