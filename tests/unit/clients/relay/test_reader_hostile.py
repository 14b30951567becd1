"""fetch_events (transforms.clients.relay.reader) against in-memory relays that cap `limit`
or misbehave (tests/support/memory_relay.py): complete or reported reads, bounded reads,
hostile messages dropped and counted."""

import json
import logging

import pytest

from tests.support.hostile_messages import MESSAGES
from tests.support.memory_relay import ENDLESS, IGNORES_UNTIL, OLDEST_FIRST, MemoryRelay
from tests.unit.clients.relay.helpers import signed_notes, sorted_ids
from transforms.clients.relay.common import (
  DROP_MALFORMED,
  DROP_OVERSIZED,
  DROP_TOO_DEEP,
  RelayMisbehaving,
)
from transforms.clients.relay.reader import ReadReport, fetch_events
from transforms.nostr.event import Signer, generate_private_key

SIGNER = Signer(generate_private_key())
BASE = 1_700_000_000


def _note(created_at, kind=1, tags=()):
  return SIGNER.sign({"created_at": created_at, "kind": kind, "tags": list(tags),
                      "content": "n %d" % created_at})


def _read(url, **kwargs):
  report = ReadReport()
  events = list(fetch_events(url, {"kinds": [1]}, timeout=10, report=report, **kwargs))
  return events, report


# ---------------------------------------------------------------------------
# A relay that caps `limit` below what one second holds


def test_a_second_beyond_the_relay_cap_is_reported_and_the_rest_still_read(caplog):
  crowded = signed_notes(SIGNER, 60, base=BASE, per_second=60)
  older = signed_notes(SIGNER, 30, base=BASE - 1000)
  with MemoryRelay(crowded + older, cap=40) as relay:
    with caplog.at_level(logging.WARNING, logger="transforms.clients.relay.reader"):
      events, report = _read(relay.url, page_size=500)
  assert report.seconds_incomplete == [BASE]
  assert len(events) == 70 and set(sorted_ids(older)) <= set(sorted_ids(events))
  warnings = [r.getMessage() for r in caplog.records if "holds more events" in r.getMessage()]
  assert len(warnings) == 1 and relay.url in warnings[0] and str(BASE) in warnings[0]


def test_a_relay_capping_below_the_page_size_is_read_in_full_when_no_second_exceeds_it():
  events_in = signed_notes(SIGNER, 200, base=BASE, per_second=7)
  with MemoryRelay(events_in, cap=40) as relay:
    events, report = _read(relay.url, page_size=500)
  assert sorted_ids(events) == sorted_ids(events_in) and len(events) == 200
  assert report.seconds_incomplete == []


def test_a_full_second_is_read_with_a_larger_limit_when_the_relay_allows_it():
  crowded = signed_notes(SIGNER, 25, base=BASE, per_second=25)
  older = signed_notes(SIGNER, 5, base=BASE - 50)
  with MemoryRelay(crowded + older) as relay:
    events, report = _read(relay.url, page_size=4)
  assert sorted_ids(events) == sorted_ids(crowded + older) and len(events) == 30
  assert report.seconds_incomplete == []


def test_a_second_holding_more_than_the_largest_limit_is_reported(monkeypatch):
  monkeypatch.setattr("transforms.clients.relay.reader.MAX_SECOND_LIMIT", 8)
  crowded = signed_notes(SIGNER, 12, base=BASE, per_second=12)
  older = signed_notes(SIGNER, 3, base=BASE - 50)
  with MemoryRelay(crowded + older) as relay:
    events, report = _read(relay.url, page_size=2)
  assert report.seconds_incomplete == [BASE]
  assert len(events) == 8 + 3


# ---------------------------------------------------------------------------
# Misbehaving relays: bounded, then RelayMisbehaving


def test_a_relay_ignoring_until_with_a_new_event_on_top_is_stopped_at_once():
  with MemoryRelay(signed_notes(SIGNER, 10, base=BASE), mode=IGNORES_UNTIL,
                   make_event=_note) as relay:
    with pytest.raises(RelayMisbehaving, match="ignores until"):
      _read(relay.url, page_size=5)
    assert relay.reqs == 2


def test_a_relay_serving_the_oldest_events_first_is_stopped():
  with MemoryRelay(signed_notes(SIGNER, 20, base=BASE), mode=OLDEST_FIRST) as relay:
    with pytest.raises(RelayMisbehaving, match="oldest events first"):
      _read(relay.url, page_size=5)
    assert relay.reqs == 2  # the page, and the probe that found newer events


def test_a_relay_sending_the_newest_events_in_ascending_order_is_read_in_full():
  events_in = signed_notes(SIGNER, 20, base=BASE)

  class Ascending(MemoryRelay):
    def _answer(self, flt):
      return sorted(super()._answer(flt), key=lambda e: e["created_at"])

  with Ascending(events_in) as relay:
    events, report = _read(relay.url, page_size=5)
  assert sorted_ids(events) == sorted_ids(events_in) and len(events) == 20


def test_a_read_past_its_time_bound_is_stopped():
  with MemoryRelay(signed_notes(SIGNER, 3, base=BASE)) as relay:
    with pytest.raises(RelayMisbehaving, match="did not end within"):
      _read(relay.url, page_size=2, max_seconds=-1)
    assert relay.reqs == 0


def test_a_read_that_never_ends_is_stopped_at_its_request_bound():
  with MemoryRelay(signed_notes(SIGNER, 3, base=BASE), mode=ENDLESS, make_event=_note) as relay:
    report = ReadReport()
    got = []
    with pytest.raises(RelayMisbehaving, match="did not end within 25 requests"):
      for event in fetch_events(relay.url, {"kinds": [1]}, page_size=2, timeout=10,
                                report=report, max_requests=25):
        got.append(event)
    assert relay.reqs == report.requests == 25
    assert len(got) <= 2 * 25


def test_the_default_request_bound_follows_the_page_size():
  from transforms.clients.relay.reader import READ_EVENTS_CEILING, default_max_requests
  assert default_max_requests(500) == READ_EVENTS_CEILING // 500 + 100
  assert default_max_requests(0) > default_max_requests(500)


# ---------------------------------------------------------------------------
# Hostile messages and events outside the filter


def test_nested_oversized_malformed_messages_and_foreign_events_are_dropped_and_counted():
  good = signed_notes(SIGNER, 6, base=BASE)
  foreign = _note(BASE, kind=32222, tags=[["d", "vine0000001"]])  # a kind not asked for

  def hostile(sub):
    return list(MESSAGES) + [json.dumps(["EVENT", sub, {"id": 5}]),
                             json.dumps(["EVENT", sub, foreign])]

  with MemoryRelay(good, before_events=hostile) as relay:
    events, report = _read(relay.url, page_size=4)
    pages = relay.reqs
  assert sorted_ids(events) == sorted_ids(good) and len(events) == 6
  assert pages >= 2
  assert report.dropped == {DROP_TOO_DEEP: pages, DROP_OVERSIZED: pages,
                            DROP_MALFORMED: pages, "event_shape": pages}
  assert report.outside_filter == pages
