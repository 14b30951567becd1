"""ReadRelayEvents under TestPipeline (verifies, de-duplicates, keeps the newest version) and
FetchRelayEventsFn against in-memory relays (misbehaving, capping, hostile, honest)."""

import json

import apache_beam as beam
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.support.hostile_messages import NESTED
from tests.support.memory_relay import IGNORES_UNTIL, MemoryRelay
from tests.support.vine_events import A, B, vine_event
from transforms.io.relay_events import (
  RELAY_SECONDS_INCOMPLETE,
  RELAYS_INCOMPLETE,
  RELAYS_MISBEHAVING,
  RELAYS_UNREADABLE,
  FetchRelayEventsFn,
  ReadRelayEvents,
)
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.outcomes import StopRun


def test_read_relay_events_verifies_dedupes_and_keeps_newest():
  old = vine_event(A, "MYxVapFvz2z", 100)
  new = vine_event(A, "MYxVapFvz2z", 200)
  other_author = vine_event(B, "MYxVapFvz2z", 50)
  junk = vine_event(A, "openvine_17", 100)
  no_d = vine_event(B, None, 100)
  forged = dict(vine_event(A, "e192BnZnZ9V", 100), content="tampered")
  raw = [old, new, dict(new), other_author, junk, no_d, forged, dict(forged)]  # dupes: 2 relays
  with TestPipeline() as p:
    out = p | ReadRelayEvents(["ws://unused"], "run", raw_events=beam.Create(raw))
    assert_that(out["main"] | beam.Map(lambda kv: (kv[0], kv[1].event["id"])),
                equal_to([("MYxVapFvz2z", new["id"]), ("MYxVapFvz2z", other_author["id"])]),
                label="NewestPerAuthor")
    assert_that(out[dl.SKIPPED] | beam.Map(lambda s: (s["reason"], s["event_id"])),
                equal_to([("no_vine_id", junk["id"]), ("no_vine_id", no_d["id"])]),
                label="Skips")
    assert_that(out[dl.DEAD_LETTER] | beam.Map(
        lambda d: (d["stage"], d["error_class"], d["event_id"], "id does not match" in d["error"])),
        equal_to([("read_events", "bad_input", forged["id"], True)]), label="DeadLetters")


# ---------------------------------------------------------------------------
# FetchRelayEventsFn against in-memory relays: hostile, capping, honest.


def _fetch(urls, page_size=500):
  """Runs FetchRelayEventsFn on urls: (event ids read, relays tagged readable, live counts)."""
  ids, readable = [], []
  for item in FetchRelayEventsFn(page_size=page_size, kinds=(32222,)).process(list(urls)):
    if isinstance(item, TaggedOutput):
      readable.append(item.value)
    else:
      ids.append(item[0]["id"])
  return ids, readable, accounting.live_counts()


def _vines(count, base=1_700_000_000, per_second=1):
  return [vine_event(A, "vine%07d" % i, base + i // per_second) for i in range(count)]


@pytest.mark.usefixtures("clean_tally")
def test_a_misbehaving_relay_is_unreadable_while_a_good_one_is_read():
  good = _vines(12)
  make = lambda t: vine_event(B, "x%d" % t, t)  # noqa: E731
  with MemoryRelay(good) as honest, MemoryRelay(_vines(5), mode=IGNORES_UNTIL,
                                                make_event=make) as hostile, MemoryRelay(
      _vines(5), before_events=lambda sub: [NESTED]) as nested:
    ids, readable, counts = _fetch([honest.url, hostile.url, nested.url], page_size=4)
    assert hostile.reqs == 2
  assert sorted(readable) == sorted([honest.url, nested.url])
  # What the misbehaving relay sent before it was caught still goes to verification.
  assert {e["id"] for e in good} <= set(ids)
  assert counts[RELAYS_MISBEHAVING] == 1 and counts[RELAYS_UNREADABLE] == 1
  assert counts[accounting.RELAY_MESSAGES_DROPPED] == nested.reqs >= 2


@pytest.mark.usefixtures("clean_tally")
def test_events_outside_the_filter_are_ignored_and_counted_never_inputs():
  vines = _vines(3)
  note = A.sign({"kind": 1, "created_at": 1_700_000_000, "tags": [["d", "vine0000001"]],
                 "content": "a note, not a vine"})
  with MemoryRelay(vines, before_events=lambda sub: [json.dumps(["EVENT", sub, note])]) as relay:
    ids, readable, counts = _fetch([relay.url])
    pages = relay.reqs
  assert sorted(ids) == sorted(e["id"] for e in vines) and note["id"] not in ids
  assert readable == [relay.url]
  assert counts[accounting.EVENTS_OUTSIDE_FILTER] == pages


@pytest.mark.usefixtures("clean_tally")
def test_an_incomplete_relay_gives_its_events_but_is_not_read_in_full():
  events = _vines(60, per_second=60) + _vines(5, base=1_600_000_000)
  with MemoryRelay(events, cap=40) as capped, MemoryRelay(events) as full:
    ids, readable, counts = _fetch([capped.url, full.url])
  assert readable == [full.url]
  assert set(ids) == {e["id"] for e in events} and len(ids) == 45 + 65
  assert counts[RELAY_SECONDS_INCOMPLETE] == 1 and counts[RELAYS_INCOMPLETE] == 1


@pytest.mark.usefixtures("clean_tally")
def test_the_run_stops_when_no_relay_is_read_in_full():
  with MemoryRelay(_vines(60, per_second=60) + _vines(5, base=1_600_000_000), cap=40) as capped:
    with pytest.raises(StopRun, match="no relay could be read in full"):
      _fetch([capped.url])
  assert accounting.live_counts()[RELAY_SECONDS_INCOMPLETE] == 1
