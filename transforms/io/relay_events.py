"""ReadRelayEvents: every kind 32222 event from the relays, verified, newest per (pubkey, d).

With kinds (32222, 34236) it also reads the authors' NIP-71 kind 34236 events: not
inputs, but the current versions of the addresses --event-kind 34236|both replaces.

Output: (vine_id, SourceEvent) for events with a Vine id; tagged skips for events
without one (`no_vine_id`) and tagged dead letters for events whose id or signature
does not check (never republished) or whose created_at is so far in the future that
no relay would take a replacement. Events are read from each relay in pages of 500
going backwards (inclusive `until`), de-duplicated by id across relays, and reduced
to the version a relay keeps: highest created_at, then lowest id.

Relays are read concurrently. A relay that cannot be read (down, refusing, misbehaving:
`relays_misbehaving`) is logged, counted `relays_unreadable`, and the run goes on with
the others (publishing will try it again). One holding more events in a second than it
returns (`relay_seconds_incomplete`, `relays_incomplete`) gives its events but is not read
in full. With no relay read in full the run stops (StopRun). Dropped relay messages and
events outside the filter (never inputs) are counted: see the constants below.

Each kept version records which of the relays read do not hold it
(`SourceEvent.missing_on`, counted `relays_behind`): a relay that refused or missed
an earlier run's publish, so that a re-run can bring it up to date.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.pvalue import TaggedOutput

from transforms.clients.relay.common import RelayError, RelayMisbehaving
from transforms.clients.relay.reader import ReadReport, fetch_events
from transforms.core.ids import HEX64_RE, HEX128_RE, is_vine_id
from transforms.core.records import (
  SHORT_VIDEO_KIND,
  SKIP_NO_VINE_ID,
  VIDEO_KIND,
  newer,
  to_source_event,
)
from transforms.core.text import has_surrogate, json_safe
from transforms.nostr.event import first_tag_value, validate_event
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.outcomes import StopRun

_LOG = logging.getLogger(__name__)

INVALID = "invalid"
READABLE = "readable"
# Output of the authors' current kind 34236 events (--event-kind 34236|both).
VIDEOS = "videos"
RELAYS_UNREADABLE = "relays_unreadable"
RELAYS_MISBEHAVING = "relays_misbehaving"
RELAY_SECONDS_INCOMPLETE = "relay_seconds_incomplete"
RELAYS_INCOMPLETE = "relays_incomplete"
RELAYS_BEHIND = "relays_behind"
VIDEO_EVENTS_READ = "video_events_read"
VIDEO_EVENTS_IGNORED = "video_events_ignored"
# A replacement needs created_at > the old one; relays (strfry: 900 s) refuse events
# dated further ahead than this, so an event beyond it cannot be replaced.
MAX_FUTURE_SECONDS = 900
# `\Z`: nostr_event's checks use `$`, which lets a trailing newline through.
_DONE = object()
# Marks an event that held lone surrogates (see _quarantine).
UNSAFE_TEXT = "__lone_surrogate_in__"


def _raw_id(event: Any) -> str:
  if isinstance(event, dict) and isinstance(event.get("id"), str):
    return event["id"][:128]
  return hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()


def _surrogate_where(event: Any) -> str:
  if isinstance(event, dict):
    if has_surrogate(event.get("content")):
      return "content"
    tags = event.get("tags")
    if isinstance(tags, list):
      for tag in tags:
        if has_surrogate(tag):
          name = tag[0] if isinstance(tag, list) and tag and isinstance(tag[0], str) else "?"
          return "tag %r" % json_safe(name)[:32]
  return "the event"


def _quarantine(event: Any) -> Any:
  """The event, or, when it holds lone surrogates, a marked copy that can be encoded.

  A JSON escape like "\\ud800" decodes to a lone surrogate, which Beam's coders
  cannot encode: the element would crash the step that emits it. Such an event
  cannot be verified either (serialisers disagree on it), so it travels marked,
  its text escaped, to a bad_input dead letter.
  """
  if not has_surrogate(event):
    return event
  return {UNSAFE_TEXT: _surrogate_where(event), "event": json_safe(event)}


def _decode_line(line: Any) -> Any:
  """An NDJSON line (bytes); one that is not UTF-8 JSON is kept as text and fails validation."""
  if isinstance(line, bytes):
    try:
      line = line.decode("utf-8")
    except UnicodeDecodeError:
      return {"unparseable_line": line[:1000].decode("utf-8", "backslashreplace"),
              "reason": "not UTF-8"}
  try:
    return _quarantine(json.loads(line))
  except ValueError:
    return {"unparseable_line": json_safe(line[:1000]), "reason": "not JSON"}


def event_problem(event: Any, kinds: Sequence[int] = (VIDEO_KIND,)) -> Optional[str]:
  """Why an event read is not a verified event of one of `kinds`, or None when it is."""
  problem = validate_event(event)
  if problem is None and not (HEX64_RE.match(event["id"]) and HEX64_RE.match(event["pubkey"])
                              and HEX128_RE.match(event["sig"])):
    problem = "id, pubkey or sig is not exactly lowercase hex"
  if problem is None and event.get("kind") not in kinds:
    problem = "kind %r is not %s" % (event.get("kind"), " or ".join(map(str, kinds)))
  return problem


def _put(out: "queue.Queue", item: Any, stop: threading.Event) -> bool:
  """Puts item unless stop is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      out.put(item, timeout=0.2)
      return True
    except queue.Full:
      continue
  return False


class FetchRelayEventsFn(beam.DoFn):
  """[relay URLs] -> raw event dicts (unverified), every relay read concurrently.

  One element holds all the relays, so that this DoFn alone knows whether at least
  one could be read.
  """

  def __init__(self, page_size: int = 500, max_pages: Optional[int] = None,
               since: Optional[int] = None, fetch: Optional[Callable] = None,
               kinds: Sequence[int] = (VIDEO_KIND,)):
    super().__init__()
    self._kinds = list(kinds)
    self._page_size = page_size
    self._max_pages = max_pages
    self._since = since
    self._fetch = fetch  # tests inject a fake; None means relay_reader.fetch_events

  def _read_one(self, url: str, out: "queue.Queue", stop: threading.Event,
                report: ReadReport) -> int:
    base_filter: Dict[str, Any] = {"kinds": list(self._kinds)}
    if self._since is not None:
      base_filter["since"] = self._since
    count = 0
    fetch = self._fetch or fetch_events
    for event in fetch(url, base_filter, page_size=self._page_size, max_pages=self._max_pages,
                       report=report):
      if not _put(out, (_quarantine(event), (url,)), stop):
        break  # the consumer went away: closing the generator closes the connection
      count += 1
    return count

  def process(self, relay_urls: List[str]) -> Iterator[Any]:
    """Yields (raw event, (relay url,)), and each relay read in full tagged READABLE."""
    urls = list(relay_urls)
    out: "queue.Queue" = queue.Queue(maxsize=10000)
    stop = threading.Event()
    failures: Dict[str, str] = {}
    incomplete: List[str] = []
    reports = {url: ReadReport() for url in urls}
    with concurrent.futures.ThreadPoolExecutor(max(1, len(urls)),
                                               thread_name_prefix="relay-read") as pool:
      futures = {}
      try:
        for url in urls:
          future = pool.submit(self._read_one, url, out, stop, reports[url])
          future.add_done_callback(lambda _f: _put(out, _DONE, stop))
          futures[future] = url
        finished = 0
        while finished < len(urls):
          item = out.get()
          if item is _DONE:
            finished += 1
          else:
            yield item
      finally:
        stop.set()  # lets blocked readers return if this generator is abandoned
      for future, url in futures.items():
        _count_report(reports[url])
        exc = future.exception()
        if exc is None:
          accounting.inc(accounting.EVENTS_READ, future.result())
          _LOG.debug("read %d events from %s", future.result(), url)
          if reports[url].seconds_incomplete:
            incomplete.append(url)
          else:
            yield TaggedOutput(READABLE, url)
          continue
        if not isinstance(exc, (RelayError, OSError)):
          raise exc
        if isinstance(exc, RelayMisbehaving):
          accounting.inc(RELAYS_MISBEHAVING)
        failures[url] = "%s: %s" % (type(exc).__name__, exc)
    for url, why in sorted(failures.items()):
      _LOG.warning("relay %s could not be read (%s); going on with the others", url, why)
    if failures:
      accounting.inc(RELAYS_UNREADABLE, len(failures))
    for url in incomplete:
      accounting.inc(RELAYS_INCOMPLETE)
      _LOG.warning("relay %s was read incompletely (%d seconds held more events than it "
                   "returns): its events are used, it is not taken as read in full", url,
                   len(reports[url].seconds_incomplete))
    if urls and len(failures) == len(urls):
      raise StopRun("no relay could be read: %s" % "; ".join(
          "%s (%s)" % (url, why[:200]) for url, why in sorted(failures.items())))
    if urls and len(failures) + len(incomplete) == len(urls):
      raise StopRun("no relay could be read in full (incomplete: %s; unreadable: %s)"
                    % (", ".join(incomplete), ", ".join(sorted(failures)) or "none"))


def _count_report(report: ReadReport) -> None:
  """Counts what one relay read dropped, ignored or left incomplete."""
  for name, n in ((accounting.RELAY_MESSAGES_DROPPED, sum(report.dropped.values())),
                  (accounting.EVENTS_OUTSIDE_FILTER, report.outside_filter),
                  (RELAY_SECONDS_INCOMPLETE, len(report.seconds_incomplete))):
    if n:
      accounting.inc(name, n)


class ValidateEventFn(beam.DoFn):
  """raw event -> ((pubkey, d or id), event), or (id, (event, reason)) tagged INVALID.

  With with_relays, elements and outputs carry the relays the event was read from:
  (raw event, relays) -> ((pubkey, d or id), (event, relays)).
  """

  def __init__(self, with_relays: bool = False, kinds: Sequence[int] = (VIDEO_KIND,)):
    super().__init__()
    self._with_relays = with_relays
    self._kinds = tuple(kinds)

  def process(self, element: Any) -> Iterator[Any]:
    event, relays = element if self._with_relays else (element, ())
    if isinstance(event, dict) and UNSAFE_TEXT in event:
      where, event = event[UNSAFE_TEXT], event["event"]
      yield TaggedOutput(INVALID, (_raw_id(event), (event, "%s holds a lone surrogate" % where)))
      return
    if isinstance(event, dict) and set(event) == {"unparseable_line", "reason"}:
      yield TaggedOutput(INVALID, (_raw_id(event), (event, "events file line is %s"
                                                    % event["reason"])))
      return
    problem = event_problem(event, self._kinds)
    if problem:
      yield TaggedOutput(INVALID, (_raw_id(event), (event, problem)))
      return
    d_value = first_tag_value(event["tags"], "d")
    key = (event["pubkey"], "d:" + d_value) if d_value is not None else (
        event["pubkey"], "id:" + event["id"])
    if event["kind"] != VIDEO_KIND:  # another kind: another address
      key = (key[0], "%d:%s" % (event["kind"], key[1]))
    yield key, ((event, tuple(relays)) if self._with_relays else event)


class NewestWithHoldersFn(beam.CombineFn):
  """(event, relays)... of one address -> (the version a relay keeps, the relays holding it)."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, element):
    event, relays = element
    if acc is None:
      return (event, set(relays))
    kept, holders = acc
    if event["id"] == kept["id"]:
      holders.update(relays)
      return acc
    if newer(kept, event) is event:
      return (event, set(relays))
    return acc

  def merge_accumulators(self, accumulators):
    merged = None
    for acc in accumulators:
      if acc is not None:
        merged = self.add_input(merged, (acc[0], acc[1]))
    return merged

  def extract_output(self, acc):
    return acc[0], tuple(sorted(acc[1]))


class ClassifyEventFn(beam.DoFn):
  """Newest event of a (pubkey, d) -> (vine_id, SourceEvent), a tagged skip or dead letter.

  The value is the event, or (event, relays holding it) with `readable` (side input:
  the relays read in full) to find the relays behind. With reject_future, an event
  dated too far ahead to be replaced is a tagged dead letter (declare dl.DEAD_LETTER).
  """

  def __init__(self, run_id: str = "", clock: Callable[[], float] = time.time,
               reject_future: bool = False):
    super().__init__()
    self._run_id = run_id
    self._clock = clock
    self._reject_future = reject_future

  def process(self, keyed: Tuple[Tuple[str, str], Any], readable=()) -> Iterator[Any]:
    _, value = keyed
    event, holders = value if isinstance(value, tuple) else (value, ())
    source = to_source_event(event)
    missing_on = tuple(sorted(set(readable) - set(holders)))
    if event["kind"] == SHORT_VIDEO_KIND:
      yield from self._video(source, missing_on)
      return
    accounting.inc(accounting.EVENTS_CHECKED)
    if missing_on and source.vine_id:  # events without a vine id are skipped anyway
      accounting.inc(RELAYS_BEHIND, len(missing_on))
      source = dataclasses.replace(source, missing_on=missing_on)
    ahead = event["created_at"] + 1 - int(self._clock())
    if self._reject_future and source.vine_id and ahead > MAX_FUTURE_SECONDS:
      accounting.born()
      yield TaggedOutput(dl.DEAD_LETTER, dl.make_dead_letter(
          self._run_id, dl.STAGE_READ_EVENTS, dl.BAD_INPUT,
          "created_at %d is %d s in the future: its replacement would need a later "
          "created_at, which relays refuse (more than %d s ahead)"
          % (event["created_at"], ahead - 1, MAX_FUTURE_SECONDS),
          vine_id=source.vine_id, event_id=event["id"], payload={"event": event}))
      return
    if not source.vine_id:
      accounting.born()
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_READ_EVENTS, SKIP_NO_VINE_ID, None,
                                                  event["id"]))
      return
    yield source.vine_id, source

  def _video(self, source, missing_on) -> Iterator[Any]:
    """A kind 34236 event: the current version of an address we may replace, not an input.

    Keyed by its Vine id: `d` when it is one, else the id its `origin` tag names (ours
    keep the 32222 event's `d`, which may be junk); the join matches pubkey and `d`.
    """
    tags = source.event["tags"]
    vine_id = first_tag_value(tags, "d")
    if not is_vine_id(vine_id):
      origin = next((t for t in tags if len(t) >= 3 and t[0] == "origin" and t[1] == "vine"),
                    None)
      vine_id = origin[2] if origin else None
    if not is_vine_id(vine_id) or first_tag_value(tags, "d") is None:
      accounting.inc(VIDEO_EVENTS_IGNORED)
      return
    accounting.inc(VIDEO_EVENTS_READ)
    if missing_on:
      accounting.inc(RELAYS_BEHIND, len(missing_on))
    yield TaggedOutput(VIDEOS, (vine_id, dataclasses.replace(source, vine_id=vine_id,
                                                             missing_on=missing_on)))


class InvalidEventFn(beam.DoFn):
  """(id, [(event, reason)...]) -> one bad_input dead letter per distinct invalid event."""

  def __init__(self, run_id: str):
    super().__init__()
    self._run_id = run_id

  def process(self, keyed) -> Iterator[Dict[str, Any]]:
    event_id, entries = keyed
    event, reason = entries[0]
    accounting.born()
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
  """PBegin -> {main: (vine_id, SourceEvent), videos: (vine_id, SourceEvent), skipped,
  dead_letter}.

  `videos` holds the current kind 34236 versions when `kinds` includes 34236, else
  it is empty.
  """

  def __init__(self, relays: Sequence[str], run_id: str, page_size: int = 500,
               max_pages: Optional[int] = None, raw_events=None,
               events_file: Optional[str] = None, kinds: Sequence[int] = (VIDEO_KIND,)):
    super().__init__()
    self._kinds = tuple(kinds)
    self._relays = list(relays)
    self._run_id = run_id
    self._page_size = page_size
    self._max_pages = max_pages
    self._raw_events = raw_events  # a PTransform producing raw events (tests, replay)
    self._events_file = events_file  # extra NDJSON events, e.g. a relay export

  def expand(self, pbegin):
    readable = None
    if self._raw_events is not None:
      raw = (pbegin
             | "ReadRawEvents" >> self._raw_events
             | "NoRelayKnown" >> beam.Map(lambda event: (event, ())))
    else:
      fetched = (pbegin
                 | "ListRelays" >> beam.Create([self._relays])
                 | "FetchEvents" >> beam.ParDo(FetchRelayEventsFn(
                     self._page_size, self._max_pages, kinds=self._kinds)).with_outputs(
                         READABLE, main="main"))
      raw, readable = fetched.main, fetched[READABLE]
    if self._events_file:
      # Bytes: a line that is not UTF-8 must become a dead letter, not a crash of the read.
      from_file = (pbegin
                   | "ReadEventsFile" >> beam.io.ReadFromText(self._events_file,
                                                              coder=coders.BytesCoder())
                   | "DecodeEventLines" >> beam.Map(lambda line: (_decode_line(line), ())))
      raw = (raw, from_file) | "MergeEventSources" >> beam.Flatten()
    checked = raw | "VerifyEvents" >> beam.ParDo(ValidateEventFn(
        with_relays=True, kinds=self._kinds)).with_outputs(INVALID, main="valid")
    newest = (checked.valid
              | "KeepNewestPerAddress" >> beam.CombinePerKey(NewestWithHoldersFn())
              | "ExtractVineIds" >> beam.ParDo(
                  ClassifyEventFn(self._run_id, reject_future=True),
                  readable=beam.pvalue.AsList(readable) if readable is not None else ()
              ).with_outputs(dl.SKIPPED, dl.DEAD_LETTER, VIDEOS, main="main"))
    invalid = (checked[INVALID]
               | "GroupInvalidById" >> beam.GroupByKey()
               | "DeadLetterInvalid" >> beam.ParDo(InvalidEventFn(self._run_id)))
    dead = ((invalid, newest[dl.DEAD_LETTER])
            | "FlattenEventDeadLetters" >> beam.Flatten())
    return {"main": newest.main, VIDEOS: newest[VIDEOS], dl.SKIPPED: newest[dl.SKIPPED],
            dl.DEAD_LETTER: dead}
