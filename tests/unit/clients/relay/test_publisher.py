"""Tests for transforms.clients.relay.publisher (RelayPublisher) against real LocalRelay
processes (devstack.relay).

The retry paths that a real relay does not produce on demand (rate-limited,
error:, a lost OK) use a tiny scripted relay built on the websockets package.
"""

import threading
import time

import pytest

from devstack.relay import RelayProcess, free_port
from tests.support.hostile_messages import MESSAGES
from tests.support.scripted_relay import HostileAckRelay, ScriptedRelay
from tests.unit.clients.relay.helpers import publish_all, signed_notes
from transforms.clients.relay.outcomes import (
  OUTCOME_ACCEPTED,
  OUTCOME_DUPLICATE,
  OUTCOME_PERMANENT,
  OUTCOME_TRANSIENT_EXHAUSTED,
)
from transforms.clients.relay.publisher import RelayPublisher
from transforms.clients.relay.reader import fetch_events
from transforms.nostr.event import Signer, generate_private_key

# ---------------------------------------------------------------------------
# Real relay: writing (and reading back)


def test_publish_2000_pipelined_then_fetch_pages_each_event_once(relay):
  signer = Signer(generate_private_key())
  # 3 events per second so that page boundaries fall inside shared seconds.
  events = signed_notes(signer, 2000, per_second=3)
  results = publish_all(relay.url, events)
  assert len(results) == 2000
  assert {r.outcome for r in results} == {OUTCOME_ACCEPTED}
  assert all(r.accepted and r.relay == relay.url for r in results)
  assert sorted(r.token for r in results) == list(range(2000))

  fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey], "kinds": [1]},
                              page_size=500))
  assert len(fetched) == 2000
  assert {e["id"] for e in fetched} == {e["id"] for e in events}


def test_resending_the_same_event_is_a_duplicate_success(relay):
  event = signed_notes(Signer(generate_private_key()), 1)[0]
  with RelayPublisher(relay.url) as pub:
    pub.submit(event, token="first")
    first = pub.drain(timeout=10)
    pub.submit(event, token="second")
    second = pub.drain(timeout=10)
  assert [(r.token, r.outcome, r.accepted) for r in first] == [("first", OUTCOME_ACCEPTED, True)]
  assert [(r.token, r.outcome, r.accepted) for r in second] == [
      ("second", OUTCOME_DUPLICATE, True)]
  assert second[0].message.startswith("duplicate:")


def test_addressable_event_with_higher_created_at_replaces(relay):
  signer = Signer(generate_private_key())
  base = int(time.time()) - 1000
  old = signer.sign({"created_at": base, "kind": 32222, "tags": [["d", "vine-1"]],
                     "content": "old"})
  new = signer.sign({"created_at": base + 1, "kind": 32222, "tags": [["d", "vine-1"]],
                     "content": "new"})
  assert all(r.accepted for r in publish_all(relay.url, [old]))
  assert all(r.accepted for r in publish_all(relay.url, [new]))
  fetched = list(fetch_events(relay.url, {"kinds": [32222], "authors": [signer.pubkey],
                                          "#d": ["vine-1"]}))
  assert [e["id"] for e in fetched] == [new["id"]]


def test_forged_id_is_permanent_with_the_relays_message(relay):
  event = dict(signed_notes(Signer(generate_private_key()), 1)[0])
  event["id"] = "ab" * 32
  results = publish_all(relay.url, [event])
  assert len(results) == 1
  assert results[0].outcome == OUTCOME_PERMANENT and not results[0].accepted
  assert results[0].message.startswith("invalid:")
  assert results[0].attempts == 1


def test_poll_is_non_blocking_and_returns_each_result_once(relay):
  events = signed_notes(Signer(generate_private_key()), 50)
  with RelayPublisher(relay.url) as pub:
    for event in events:
      pub.submit(event)
    seen = []
    deadline = time.monotonic() + 10
    while len(seen) < 50 and time.monotonic() < deadline:
      seen += pub.poll()
      time.sleep(0.01)
    assert pub.drain(timeout=1) == []
  assert sorted(r.event_id for r in seen) == sorted(e["id"] for e in events)


def test_unencodable_event_is_refused_at_submit(relay):
  event = dict(signed_notes(Signer(generate_private_key()), 1)[0])
  event["content"] = "bad \ud800 surrogate"
  with RelayPublisher(relay.url) as pub:
    with pytest.raises(ValueError):
      pub.submit(event)


# ---------------------------------------------------------------------------
# Real relay: outages


def test_relay_restarted_mid_publish_loses_nothing(tmp_path):
  signer = Signer(generate_private_key())
  events = signed_notes(signer, 1500)
  with RelayProcess(lmdb=str(tmp_path / "lmdb")) as proc:
    pub = RelayPublisher(proc.url, max_in_flight=100)
    for event in events[:300]:
      pub.submit(event)
    results = pub.drain(timeout=10)
    feeder = threading.Thread(target=lambda: [pub.submit(e) for e in events[300:]])
    feeder.start()
    time.sleep(0.05)
    proc.stop()
    time.sleep(2.0)
    proc.start()
    feeder.join(30)
    results += pub.drain(timeout=30)
    pub.close()
    assert len(results) == 1500
    assert all(r.accepted for r in results), {r.outcome for r in results}
    assert {r.event_id for r in results} == {e["id"] for e in events}
    fetched = list(fetch_events(proc.url, {"authors": [signer.pubkey]}))
    assert {e["id"] for e in fetched} == {e["id"] for e in events}


def test_relay_down_at_start_that_comes_up_within_the_backoff_window():
  proc = RelayProcess(port=free_port())
  url = proc.url
  events = signed_notes(Signer(generate_private_key()), 20)
  starter = threading.Timer(1.0, proc.start)
  starter.start()
  try:
    results = publish_all(url, events)
  finally:
    starter.join()
    proc.stop()
  assert len(results) == 20 and all(r.accepted for r in results)


def test_relay_that_never_comes_up_exhausts():
  url = "ws://127.0.0.1:%d" % free_port()
  sleeps = []
  results = publish_all(url, signed_notes(Signer(generate_private_key()), 3), max_attempts=3,
                     sleep=sleeps.append)
  assert [r.outcome for r in results] == [OUTCOME_TRANSIENT_EXHAUSTED] * 3
  assert "could not connect" in results[0].message
  assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


# ---------------------------------------------------------------------------
# Scripted relay for the retry paths.


def test_rate_limited_twice_then_accepted_with_backoff():
  sleeps = []
  event = signed_notes(Signer(generate_private_key()), 1)[0]
  with ScriptedRelay([(False, "rate-limited: slow down"), (False, "error: busy")]) as fake:
    results = publish_all(fake.url, [event], sleep=sleeps.append, backoff_base=0.5)
  assert [(r.outcome, r.attempts) for r in results] == [(OUTCOME_ACCEPTED, 3)]
  assert fake.received == [event["id"]] * 3
  assert len(sleeps) == 2
  assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_transient_errors_exhaust_after_max_attempts():
  event = signed_notes(Signer(generate_private_key()), 1)[0]
  with ScriptedRelay([(False, "error: database locked")] * 10) as fake:
    results = publish_all(fake.url, [event], sleep=lambda s: None, max_attempts=4)
  assert [(r.outcome, r.attempts, r.accepted) for r in results] == [
      (OUTCOME_TRANSIENT_EXHAUSTED, 4, False)]
  assert results[0].message == "error: database locked"
  assert len(fake.received) == 4


def test_lost_ok_is_resent_after_ack_timeout():
  event = signed_notes(Signer(generate_private_key()), 1)[0]
  with ScriptedRelay([None]) as fake:
    results = publish_all(fake.url, [event], ack_timeout=0.3, sleep=lambda s: None)
  assert [(r.outcome, r.attempts) for r in results] == [(OUTCOME_ACCEPTED, 2)]


def test_other_refusals_are_permanent_and_duplicate_false_is_success():
  signer = Signer(generate_private_key())
  events = signed_notes(signer, 4)
  replies = [(False, "blocked: no"), (False, "pow: difficulty 20"), (False, "weird"),
             (False, "duplicate: have it")]
  with ScriptedRelay(replies) as fake:
    with RelayPublisher(fake.url, sleep=lambda s: None) as pub:
      results = []
      for event in events:  # one at a time so replies match events in order
        pub.submit(event)
        results += pub.drain(timeout=5)
  assert [(r.outcome, r.accepted, r.message) for r in results] == [
      (OUTCOME_PERMANENT, False, "blocked: no"),
      (OUTCOME_PERMANENT, False, "pow: difficulty 20"),
      (OUTCOME_PERMANENT, False, "weird"),
      (OUTCOME_DUPLICATE, True, "duplicate: have it")]


def test_hostile_messages_are_dropped_and_counted_and_publishing_goes_on():
  events = signed_notes(Signer(generate_private_key()), 5)
  with HostileAckRelay() as fake:
    with RelayPublisher(fake.url, sleep=lambda s: None) as pub:
      results = []
      for event in events:  # one at a time: every OK comes after the hostile messages
        pub.submit(event)
        results += pub.drain(timeout=20)
      stats = pub.stats()
  assert [r.outcome for r in results] == [OUTCOME_ACCEPTED] * 5
  assert stats["dropped_messages"] == 5 * len(MESSAGES)
  assert stats["connections"] == 1  # the reader thread lived through them all
