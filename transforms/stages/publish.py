"""PublishEvents: send each signed event to every configured relay, many in flight.

Input: WorkItem with `signed` and/or `signed_video` (--event-kind both publishes the
32222 replacement and the 34236 event together). Main output: one result record per
published vine.
One persistent connection per relay (RelayPublisher over websocket-client), OKs
matched by event id. Events are handed to the publishers in bursts of
`submit_batch` (the rest at the end of the bundle): each submit wakes the
publisher's sender thread, and a wake-up per event made the bundle thread wait
for the GIL about as long as it spent on the event. A vine counts as published
when at least `min_relays` relays accepted each of its events (default: all of
them); otherwise it is a dead letter naming the relays that refused and their
messages.

Groups (`takes_groups()`, how the graph runs it): the input is `(shard, items)` from
`CapInFlight`; the bundle's groups form one pool (`cap.GroupPool`), and at most as many
items are in flight as groups were received; the next is taken when one has every
relay's answer. The number of shards is then the
job's cap on events in flight per relay, whatever the runner does.
"""

import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.clients.relay.publisher import RelayPublisher
from transforms.core.ids import record_id
from transforms.core.records import WorkItem
from transforms.core.text import utc_now_iso
from transforms.io.journal import PublishJournal
from transforms.keys.shared_store import SharedKeyStore
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.async_dofn import wrap_like
from transforms.runtime.cap import GroupPool, stamped_items
from transforms.runtime.logs import CappedLog, log_stage

_LOG = logging.getLogger(__name__)

_WAIT_SLICE = 0.2  # seconds: how long finish_bundle waits on one relay before the next


def monitor_republished(record: Dict[str, Any]) -> str:
  """The seed's line REPUBLISHED,{event_id},{vine_id},{stream_uid},{hls_url},{mp4_url}."""
  return "REPUBLISHED,%s,%s,%s,%s,%s" % (record["event_id"], record["vine_id"],
                                         record["stream_uid"] or "", record["hls_url"] or "",
                                         record["mp4_url"] or "")


def result_record(item: WorkItem, accepted: Sequence[str], run_id: str) -> Dict[str, Any]:
  """The results-table row of a published vine (public data only).

  `event_id` is the 32222 replacement's id, or the 34236 event's when only that was
  published; `video_event_id` is the 34236 event's id (None when none was published).
  """
  urls = item.migration or {}
  main = item.signed or item.signed_video
  return {
      "run_id": run_id,
      "vine_id": item.vine_id,
      "event_id": main["id"],
      "video_event_id": item.signed_video["id"] if item.signed_video else None,
      "kinds": [event["kind"] for event in item.outgoing],
      "previous_event_id": item.event_id,
      "pubkey": item.pubkey,
      "stream_uid": urls.get("uid"),
      "hls_url": urls.get("hls"),
      "mp4_url": urls.get("mp4"),
      "thumbnail_url": urls.get("thumbnail"),
      "relays": sorted(accepted),
      "newly_migrated": item.newly_migrated,
      "notes": list(item.notes),
      "published_at": utc_now_iso(),
      "record_id": record_id(run_id, "published", item.vine_id, main["id"]),
  }


class PublishEventsFn(beam.DoFn):
  """WorkItem -> result record; tagged dead letters and monitor lines."""

  OUTPUTS = (dl.DEAD_LETTER, dl.MONITOR)  # tagged outputs besides "main"

  def __init__(self, relays: Sequence[str], run_id: str, keys_db: Optional[str] = None,
               kek_spec: str = "", min_relays: Optional[int] = None, max_in_flight: int = 200,
               ack_timeout: float = 15.0, max_attempts: int = 5, backoff_base: float = 0.5,
               submit_batch: int = 32):
    super().__init__()
    if not relays:
      raise ValueError("at least one relay is needed")
    self._relays = list(relays)
    self._run_id = run_id
    self._keys_db = keys_db
    # Names only, never keys; the store is the process's one (transforms/keys/shared_store.py).
    self._key_store = SharedKeyStore(keys_db, kek_spec) if keys_db else None
    self._min_relays = min(min_relays or len(relays), len(relays))
    self._max_in_flight = max_in_flight
    self._ack_timeout = ack_timeout
    self._max_attempts = max_attempts
    self._backoff_base = backoff_base
    self._submit_batch = max(1, min(submit_batch, max_in_flight))
    self._grouped = False

  def takes_groups(self) -> "PublishEventsFn":
    """Consumes `(shard, items)` groups: as many items in flight as groups; returns self."""
    self._grouped = True
    return self

  def setup(self):
    self._published = self._dead_lettered = self._dropped_counted = 0
    self._failed_log = CappedLog(_LOG, "vines not published")
    self._journal = PublishJournal()  # the run's journal, when it has one here
    log_stage(_LOG, "PublishEvents", "ready", relays=len(self._relays),
              min_relays=self._min_relays, max_in_flight=self._max_in_flight,
              nip42=bool(self._keys_db))
    auth = None
    if self._keys_db:
      keys = self._key_store.acquire()
      auth = keys.signer_for  # NIP-42: answer AUTH with the key of the event's author
    self._publishers = [
        RelayPublisher(url, max_in_flight=self._max_in_flight, ack_timeout=self._ack_timeout,
                       max_attempts=self._max_attempts, backoff_base=self._backoff_base,
                       auth_signer=auth)
        for url in self._relays]

  def teardown(self):
    if getattr(self, "_journal", None) is not None:
      self._journal.flush()
    for publisher in getattr(self, "_publishers", ()):
      try:
        publisher.close()
      except Exception:  # pylint: disable=broad-except
        _LOG.warning("closing publisher failed", exc_info=True)
    if hasattr(self, "_published"):
      log_stage(_LOG, "PublishEvents", "done", published=self._published,
                dead_lettered=self._dead_lettered)

  def start_bundle(self):
    # item key (arrival number) -> [item, windowed, {event id: {relay: result}}]
    self._pending: Dict[int, List[Any]] = {}
    # event id -> keys of the pending items publishing it: the same event may come twice
    # in one bundle (a replayed dead letter listed twice); it is sent once, and every
    # item waiting for it gets the answer.
    self._owners: Dict[str, List[int]] = {}
    self._next_key = 0
    self._unsent: List[Dict[str, Any]] = []
    self._group_pool = GroupPool() if self._grouped else None

  def process(self, element, windowed=beam.DoFn.WindowedValueParam) -> Iterator[Any]:
    if self._group_pool is not None:  # one more slot, and the pool's items to fill it
      self._group_pool.add(stamped_items(element, windowed))
      yield from self._fill()
    else:
      for output in self._add(element, windowed):
        yield wrap_like(output, windowed)
    if len(self._unsent) >= self._submit_batch:
      self._submit_unsent()
    for publisher in self._publishers:
      yield from self._absorb(publisher.poll())

  def _fill(self) -> Iterator[Any]:
    """Starts pooled items while there are free slots (items finished at once free theirs)."""
    while len(self._pending) < self._group_pool.slots:
      following = self._group_pool.take()
      if following is None:
        return
      item, windowed = following
      finished = self._add(item, windowed)
      if finished:
        self._group_pool.done(item)
        for output in finished:
          yield wrap_like(output, windowed)

  def _add(self, item: WorkItem, windowed) -> List[Any]:
    """Queues an item's events; returns its outputs when it is finished at once."""
    events = item.outgoing
    if not events:  # nothing signed reached this stage: a bug upstream, never a lost vine
      return self._dead(item, {}, "no signed event to publish")
    key, self._next_key = self._next_key, self._next_key + 1
    self._journal.sending(item, self._relays)  # before any of its events can reach a relay
    self._pending[key] = [item, windowed, {event["id"]: {} for event in events}]
    for event in events:
      owners = self._owners.setdefault(event["id"], [])
      if not owners:
        self._unsent.append(event)
      owners.append(key)
    return []

  def finish_bundle(self):
    while True:
      self._submit_unsent()
      while self._grouped and any(p.unresolved() for p in self._publishers):
        for publisher in self._publishers:  # a pooled item starts as one finishes
          yield from self._absorb(publisher.wait_results(_WAIT_SLICE))
        self._submit_unsent()
      for publisher in self._publishers:
        yield from self._absorb(publisher.drain())
      if not self._unsent:
        yield from self._give_up_unanswered()  # may start pooled items
      if not self._unsent:
        break
    self._count_dropped_messages()
    self._owners.clear()
    self._journal.flush()

  def _give_up_unanswered(self) -> Iterator[Any]:
    """Dead-letters the items still pending after every publisher drained: never dropped."""
    for key in list(self._pending):  # a publisher lost track of an event
      item, windowed, results = self._pending.pop(key)
      for event_id in results:
        owners = self._owners.get(event_id, [])
        if key in owners:
          owners.remove(key)
      for output in self._dead(item, results, "no answer from some relays"):
        yield wrap_like(output, windowed)
      yield from self._next_pooled(item)

  def _next_pooled(self, finished: WorkItem) -> Iterator[Any]:
    if self._group_pool is not None:
      self._group_pool.done(finished)
      yield from self._fill()

  def _count_dropped_messages(self) -> None:
    """Counts the relay messages the publishers dropped since the last bundle (on a Beam thread)."""
    dropped = sum(p.stats()["dropped_messages"] for p in self._publishers)
    if dropped > self._dropped_counted:
      accounting.inc(accounting.RELAY_MESSAGES_DROPPED, dropped - self._dropped_counted)
      self._dropped_counted = dropped

  def _submit_unsent(self) -> None:
    self._journal.flush()  # every `sending` on disk before its events can reach a relay
    unsent, self._unsent = self._unsent, []
    for publisher in self._publishers:
      for event in unsent:
        publisher.submit(event, token=event["id"])

  def _absorb(self, results) -> Iterator[Any]:
    for result in results:
      for key in list(self._owners.get(result.token, ())):
        entry = self._pending[key]
        entry[2][result.token][result.relay] = result
        if all(len(by_relay) == len(self._publishers) for by_relay in entry[2].values()):
          del self._pending[key]
          for event_id in entry[2]:
            self._owners[event_id].remove(key)
            if not self._owners[event_id]:
              del self._owners[event_id]
          item, windowed, results_by_event = entry
          for output in self._finish(item, results_by_event):
            yield wrap_like(output, windowed)
          yield from self._next_pooled(item)

  def _finish(self, item: WorkItem, results_by_event) -> List[Any]:
    accepted_by = [{url for url, r in by_relay.items() if r.accepted}
                   for by_relay in results_by_event.values()]
    if all(len(accepted) >= self._min_relays for accepted in accepted_by):
      self._published += 1
      accounting.published()
      accounting.inc(accounting.VIDEOS_REPUBLISHED)
      accounting.inc(accounting.EVENTS_PUBLISHED, len(item.outgoing))
      # A relay counts as holding the vine when it accepted each of its events.
      record = result_record(item, set.intersection(*accepted_by), self._run_id)
      self._journal.published(record)
      return [record, TaggedOutput(dl.MONITOR, monitor_republished(record))]
    summary = "; ".join("kind %d event accepted by %d of %d relays, %d required"
                        % (_kind_of(item, event_id), len(accepted), len(self._publishers),
                           self._min_relays)
                        for event_id, accepted in zip(results_by_event, accepted_by)
                        if len(accepted) < self._min_relays)
    return self._dead(item, results_by_event, summary)

  def _dead(self, item: WorkItem, results_by_event, summary: str) -> List[Any]:
    details: List[str] = []
    permanent = False
    attempts = 1
    several = len(results_by_event) > 1
    for event_id, by_relay in results_by_event.items():
      prefix = "kind %d: " % _kind_of(item, event_id) if several else ""
      refused = {url: r for url, r in by_relay.items() if not r.accepted}
      missing = [url for url in self._relays if url not in by_relay]
      details += ["%s%s: %s (%s)" % (prefix, url, r.message, r.outcome)
                  for url, r in sorted(refused.items())]
      details += ["%s%s: no answer" % (prefix, url) for url in missing]
      permanent = permanent or any(r.outcome == "permanent" for r in refused.values())
      attempts = max([attempts] + [r.attempts for r in by_relay.values()])
    error_class = dl.PERMANENT if permanent else dl.TRANSIENT_EXHAUSTED
    self._dead_lettered += 1
    self._journal.not_published(item, error_class, summary)
    self._failed_log.log("publish: vine %s not published (%s): %s", item.vine_id, error_class,
                         summary)
    return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
        self._run_id, dl.STAGE_PUBLISH, error_class,
        "%s; refused: %s" % (summary, "; ".join(details)), item, attempts=attempts))]


def _kind_of(item: WorkItem, event_id: str) -> int:
  for event in item.outgoing:
    if event["id"] == event_id:
      return event["kind"]
  return 0
