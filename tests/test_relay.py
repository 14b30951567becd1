"""Tests for transforms.clients.relay.reader and transforms.clients.relay.publisher against real LocalRelay
processes (devstack.relay).

The retry paths that a real relay does not produce on demand (rate-limited,
error:, a lost OK) use a tiny scripted relay built on the websockets package.
"""

import json
import logging
import threading
import time

import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue
from websockets.sync.server import serve

from devstack.relay import RelayProcess, free_port
from tests.support.ws_server import ThreadedServer
from transforms.core import records
from transforms.nostr.event import Signer, generate_private_key
from transforms.stages.publish import PublishEventsFn
from transforms.clients.relay.common import validate_relay_url
from transforms.clients.relay.outcomes import (
    OUTCOME_ACCEPTED,
    OUTCOME_DUPLICATE,
    OUTCOME_PERMANENT,
    OUTCOME_TRANSIENT_EXHAUSTED,
)
from transforms.clients.relay.publisher import RelayPublisher
from transforms.clients.relay.reader import fetch_events
from transforms.core.records import WorkItem


@pytest.fixture(scope="module")
def relay():
  with RelayProcess() as proc:
    yield proc


def _events(signer, count, kind=1, base=None, per_second=1):
  base = base if base is not None else int(time.time()) - 100000
  return [signer.sign({"created_at": base + i // per_second, "kind": kind, "tags": [],
                       "content": "note %d" % i}) for i in range(count)]


def _publish(url, events, **kwargs):
  with RelayPublisher(url, **kwargs) as pub:
    for i, event in enumerate(events):
      pub.submit(event, token=i)
    return pub.drain(timeout=30)


# ---------------------------------------------------------------------------
# validate_relay_url


@pytest.mark.parametrize("url", [
    "wss://relay.divine.video", "wss://relay.example.com:443/path", "ws://127.0.0.1:7777",
    "ws://127.5.6.7", "ws://localhost:8080", "ws://[::1]:7000"])
def test_validate_relay_url_accepts(url):
  assert validate_relay_url(url) == url


@pytest.mark.parametrize("url", [
    "ws://relay.example.com", "http://127.0.0.1", "https://relay.example.com", "relay.example.com",
    "", "wss://", "ws://10.0.0.1", "ws://128.0.0.1"])
def test_validate_relay_url_refuses(url):
  with pytest.raises(ValueError) as info:
    validate_relay_url(url)
  assert repr(url) in str(info.value)


def test_validate_relay_url_loopback_ws_can_be_refused():
  with pytest.raises(ValueError):
    validate_relay_url("ws://127.0.0.1:7777", allow_loopback_ws=False)
  assert validate_relay_url(" wss://r.example ", allow_loopback_ws=False) == "wss://r.example"


# ---------------------------------------------------------------------------
# Real relay: reading and writing


def test_publish_2000_pipelined_then_fetch_pages_each_event_once(relay):
  signer = Signer(generate_private_key())
  # 3 events per second so that page boundaries fall inside shared seconds.
  events = _events(signer, 2000, per_second=3)
  results = _publish(relay.url, events)
  assert len(results) == 2000
  assert {r.outcome for r in results} == {OUTCOME_ACCEPTED}
  assert all(r.accepted and r.relay == relay.url for r in results)
  assert sorted(r.token for r in results) == list(range(2000))

  fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey], "kinds": [1]},
                              page_size=500))
  assert len(fetched) == 2000
  assert {e["id"] for e in fetched} == {e["id"] for e in events}


def test_fetch_pages_1200_events_with_small_pages(relay):
  signer = Signer(generate_private_key())
  events = _events(signer, 1200, per_second=4)
  assert all(r.accepted for r in _publish(relay.url, events))
  fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=500))
  ids = [e["id"] for e in fetched]
  assert len(ids) == len(set(ids)) == 1200
  # max_pages bounds the read.
  assert len(list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=500,
                               max_pages=1))) == 500


def test_fetch_stops_when_one_second_holds_more_than_a_page(relay, caplog):
  signer = Signer(generate_private_key())
  events = _events(signer, 7, per_second=7)  # all in one second
  assert all(r.accepted for r in _publish(relay.url, events))
  with caplog.at_level(logging.WARNING, logger="transforms.clients.relay.reader"):
    fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=3))
  assert len(fetched) == 3
  assert "may hold more events" in caplog.text


def test_resending_the_same_event_is_a_duplicate_success(relay):
  event = _events(Signer(generate_private_key()), 1)[0]
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
  assert all(r.accepted for r in _publish(relay.url, [old]))
  assert all(r.accepted for r in _publish(relay.url, [new]))
  fetched = list(fetch_events(relay.url, {"kinds": [32222], "authors": [signer.pubkey],
                                          "#d": ["vine-1"]}))
  assert [e["id"] for e in fetched] == [new["id"]]


def test_forged_id_is_permanent_with_the_relays_message(relay):
  event = dict(_events(Signer(generate_private_key()), 1)[0])
  event["id"] = "ab" * 32
  results = _publish(relay.url, [event])
  assert len(results) == 1
  assert results[0].outcome == OUTCOME_PERMANENT and not results[0].accepted
  assert results[0].message.startswith("invalid:")
  assert results[0].attempts == 1


def test_poll_is_non_blocking_and_returns_each_result_once(relay):
  events = _events(Signer(generate_private_key()), 50)
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


# ---------------------------------------------------------------------------
# Real relay: outages


def test_relay_restarted_mid_publish_loses_nothing(tmp_path):
  signer = Signer(generate_private_key())
  events = _events(signer, 1500)
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
  events = _events(Signer(generate_private_key()), 20)
  starter = threading.Timer(1.0, proc.start)
  starter.start()
  try:
    results = _publish(url, events)
  finally:
    starter.join()
    proc.stop()
  assert len(results) == 20 and all(r.accepted for r in results)


def test_relay_that_never_comes_up_exhausts():
  url = "ws://127.0.0.1:%d" % free_port()
  sleeps = []
  results = _publish(url, _events(Signer(generate_private_key()), 3), max_attempts=3,
                     sleep=sleeps.append)
  assert [r.outcome for r in results] == [OUTCOME_TRANSIENT_EXHAUSTED] * 3
  assert "could not connect" in results[0].message
  assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


# ---------------------------------------------------------------------------
# Real relay: NIP-42


@pytest.fixture(scope="module")
def auth_relay():
  with RelayProcess(nip42_write=True) as proc:
    yield proc


def test_nip42_publisher_answers_auth(auth_relay):
  alice, bob = Signer(generate_private_key()), Signer(generate_private_key())
  signers = {alice.pubkey: alice, bob.pubkey: bob}
  events = _events(alice, 100) + _events(bob, 100)
  results = _publish(auth_relay.url, events, auth_signer=signers.get)
  assert len(results) == 200
  assert all(r.accepted for r in results), {(r.outcome, r.message) for r in results}
  fetched = list(fetch_events(auth_relay.url, {"authors": [alice.pubkey, bob.pubkey]}))
  assert len(fetched) == 200


def test_nip42_without_a_key_is_permanent(auth_relay):
  alice, bob = Signer(generate_private_key()), Signer(generate_private_key())
  results = _publish(auth_relay.url, _events(alice, 5))
  assert [r.outcome for r in results] == [OUTCOME_PERMANENT] * 5
  assert results[0].message == "auth-required: no key"
  # A signer lookup that does not know the author is the same.
  results = _publish(auth_relay.url, _events(alice, 2), auth_signer={bob.pubkey: bob}.get)
  assert [r.outcome for r in results] == [OUTCOME_PERMANENT] * 2


# ---------------------------------------------------------------------------
# Scripted relay for the retry paths.


class _ScriptedRelay(ThreadedServer):
  """Answers each EVENT with the next scripted reply (None: no answer) then `true`."""

  def __init__(self, replies):
    self.replies = list(replies)
    self.received = []
    super().__init__()

  def _handle(self, conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "EVENT":
        continue
      self.received.append(msg[1]["id"])
      reply = self.replies.pop(0) if self.replies else (True, "")
      if reply is not None:
        conn.send(json.dumps(["OK", msg[1]["id"], reply[0], reply[1]]))


def test_rate_limited_twice_then_accepted_with_backoff():
  sleeps = []
  event = _events(Signer(generate_private_key()), 1)[0]
  with _ScriptedRelay([(False, "rate-limited: slow down"), (False, "error: busy")]) as fake:
    results = _publish(fake.url, [event], sleep=sleeps.append, backoff_base=0.5)
  assert [(r.outcome, r.attempts) for r in results] == [(OUTCOME_ACCEPTED, 3)]
  assert fake.received == [event["id"]] * 3
  assert len(sleeps) == 2
  assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_transient_errors_exhaust_after_max_attempts():
  event = _events(Signer(generate_private_key()), 1)[0]
  with _ScriptedRelay([(False, "error: database locked")] * 10) as fake:
    results = _publish(fake.url, [event], sleep=lambda s: None, max_attempts=4)
  assert [(r.outcome, r.attempts, r.accepted) for r in results] == [
      (OUTCOME_TRANSIENT_EXHAUSTED, 4, False)]
  assert results[0].message == "error: database locked"
  assert len(fake.received) == 4


def test_publish_stage_answers_every_item_even_when_an_event_repeats_in_a_bundle():
  """Both events of an --event-kind both item go out; an item listed twice (a dead letter
  replayed twice) is sent once and both copies are answered: no vine goes missing."""
  signer = Signer(generate_private_key())
  old, new, video = [signer.sign({"kind": kind, "created_at": at, "content": "",
                                  "tags": [["d", "MYxVapFvz2z"]]})
                     for kind, at in ((32222, 1), (32222, 2), (34236, 2))]
  item = WorkItem(vine_id="MYxVapFvz2z", source=records.to_source_event(old),
                  migration={"uid": "0" * 32}, signed=new, signed_video=video)
  windowed = WindowedValue(None, 0, [GlobalWindow()])
  with _ScriptedRelay([]) as fake:
    fn = PublishEventsFn([fake.url], "run-1", max_attempts=1)
    fn.setup()
    try:
      fn.start_bundle()
      outputs = (list(fn.process(item, windowed)) + list(fn.process(item, windowed))
                 + list(fn.finish_bundle()))
    finally:
      fn.teardown()
  results = [o.value for o in outputs if not isinstance(o, TaggedOutput)]
  assert [(r["event_id"], r["video_event_id"], r["kinds"], r["relays"]) for r in results] == [
      (new["id"], video["id"], [32222, 34236], [fake.url])] * 2
  assert sorted(fake.received) == sorted([new["id"], video["id"]])
  assert not [o for o in outputs if isinstance(o, TaggedOutput) and o.tag == "dead_letter"]


def test_lost_ok_is_resent_after_ack_timeout():
  event = _events(Signer(generate_private_key()), 1)[0]
  with _ScriptedRelay([None]) as fake:
    results = _publish(fake.url, [event], ack_timeout=0.3, sleep=lambda s: None)
  assert [(r.outcome, r.attempts) for r in results] == [(OUTCOME_ACCEPTED, 2)]


def test_other_refusals_are_permanent_and_duplicate_false_is_success():
  signer = Signer(generate_private_key())
  events = _events(signer, 4)
  replies = [(False, "blocked: no"), (False, "pow: difficulty 20"), (False, "weird"),
             (False, "duplicate: have it")]
  with _ScriptedRelay(replies) as fake:
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


def test_unencodable_event_is_refused_at_submit(relay):
  event = dict(_events(Signer(generate_private_key()), 1)[0])
  event["content"] = "bad \ud800 surrogate"
  with RelayPublisher(relay.url) as pub:
    with pytest.raises(ValueError):
      pub.submit(event)


def test_fetch_skips_malformed_messages_closes_and_survives_a_dropped_connection():
  signer = Signer(generate_private_key())
  good = _events(signer, 3)
  seen = {"connections": 0, "closes": 0}

  def handle(conn):
    seen["connections"] += 1
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] == "CLOSE":
        seen["closes"] += 1
        continue
      if seen["connections"] == 1:
        return  # drop the first connection mid-read
      sub = msg[1]
      conn.send("not json")
      conn.send(json.dumps(["EVENT", sub, {"no": "id"}]))
      conn.send(json.dumps(["EVENT", "other-sub", good[0]]))
      for event in good:
        conn.send(json.dumps(["EVENT", sub, event]))
      conn.send(json.dumps(["EOSE", sub]))

  with serve(handle, "127.0.0.1", 0) as server:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "ws://127.0.0.1:%d" % server.socket.getsockname()[1]
    fetched = list(fetch_events(url, {"kinds": [1]}, page_size=10, timeout=5))
    server.shutdown()
  assert [e["id"] for e in fetched] == [e["id"] for e in good]
  assert seen["connections"] == 2
  assert seen["closes"] == 2  # one per page: the second page added nothing new


# ---------------------------------------------------------------------------
# Scripted NIP-42 relays: the behaviours LocalRelay does not have.


class _AuthRelay(ThreadedServer):
  """A NIP-42 relay whose challenge and AUTH policies the test chooses.

  Args:
    per_pubkey: each author must authenticate (else one AUTH lets every author write).
    on_connect: send one challenge on connect, good for any number of AUTHs; else a
      fresh single-use challenge with every auth-required refusal, the newest `keep` kept.
    keep: challenges remembered (per_refusal mode).
    auth_per_second: AUTH messages answered per second; more get rate-limited.
    refuse: pubkeys whose AUTH is refused with a restricted: message.
  """

  def __init__(self, per_pubkey=True, on_connect=False, keep=3, auth_per_second=5,
               refuse=()):
    self.per_pubkey, self.on_connect, self.keep = per_pubkey, on_connect, keep
    self.auth_per_second, self.refuse = auth_per_second, set(refuse)
    self.stored = set()
    self.auths = []  # (pubkey, answer message) of every AUTH received
    self.connections = 0
    super().__init__()

  def _handle(self, conn):
    self.connections += 1
    challenges, authed, recent, issued = [], set(), [], 0
    if self.on_connect:
      challenges.append("c%d" % self.connections)
      conn.send(json.dumps(["AUTH", challenges[0]]))
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] == "AUTH":
        auth = msg[1]
        tag = [t[1] for t in auth["tags"] if t[0] == "challenge"][0]
        now = time.monotonic()
        recent[:] = [t for t in recent if now - t < 1.0] + [now]
        if len(recent) > self.auth_per_second:
          answer = "rate-limited: too many authentication attempts"
        elif tag not in challenges:
          answer = "auth-required: received invalid challenge"
        elif auth["pubkey"] in self.refuse:
          answer = "restricted: not on the list"
        else:
          answer = ""
          authed.add(auth["pubkey"])
          if not self.on_connect:
            challenges.remove(tag)
        self.auths.append((auth["pubkey"], answer))
        conn.send(json.dumps(["OK", auth["id"], not answer, answer]))
      elif msg[0] == "EVENT":
        event = msg[1]
        if event["pubkey"] in authed or (authed and not self.per_pubkey):
          self.stored.add(event["id"])
          conn.send(json.dumps(["OK", event["id"], True, ""]))
          continue
        if not self.on_connect:
          issued += 1
          challenge = "c%d-%d" % (self.connections, issued)
          challenges.append(challenge)
          del challenges[:len(challenges) - self.keep]
          conn.send(json.dumps(["AUTH", challenge]))
        conn.send(json.dumps(["OK", event["id"], False, "auth-required: you must auth"]))


def _authors(n, per_author=3):
  signers = [Signer(generate_private_key()) for _ in range(n)]
  events = [e for s in signers for e in _events(s, per_author)]
  return {s.pubkey: s for s in signers}, events


@pytest.mark.parametrize("per_pubkey", [True, False])
def test_many_authors_pipelined_one_auth_round_at_a_time(per_pubkey):
  signers, events = _authors(12)
  with _AuthRelay(per_pubkey=per_pubkey, keep=3, auth_per_second=5) as fake:
    results = _publish(fake.url, events, auth_signer=signers.get, backoff_base=0.05)
  assert len(results) == len(events)
  assert all(r.accepted for r in results), sorted({r.message for r in results})
  assert len(fake.stored) == len(events)
  # Every AUTH answered the newest challenge. At most one was stale: reusing the
  # challenge of the previous AUTH, which teaches the publisher they are single-use.
  assert len([a for a in fake.auths if "invalid challenge" in a[1]]) <= (1 if per_pubkey else 0)
  ok = [p for p, answer in fake.auths if not answer]
  assert len(ok) == (12 if per_pubkey else 1) and len(set(ok)) == len(ok)
  # A refusal for auth does not use up an attempt.
  assert max(r.attempts for r in results) <= 2
  if per_pubkey:  # more AUTHs than the relay answers per second: some were rate-limited
    assert [a for a in fake.auths if a[1].startswith("rate-limited")]


def test_one_challenge_on_connect_serves_every_author():
  signers, events = _authors(4)
  with _AuthRelay(on_connect=True) as fake:
    results = _publish(fake.url, events, auth_signer=signers.get)
  assert all(r.accepted for r in results), sorted({r.message for r in results})
  assert sorted(p for p, answer in fake.auths if not answer) == sorted(signers)
  assert fake.connections == 1


def test_authors_without_a_key_or_refused_fail_while_the_others_publish():
  signers, events = _authors(6)
  nokey, refused = list(signers)[:2]
  known = {p: s for p, s in signers.items() if p != nokey}
  with _AuthRelay(refuse=[refused], auth_per_second=100) as fake:
    started = time.monotonic()
    results = _publish(fake.url, events, auth_signer=known.get)
    took = time.monotonic() - started
  by_author = {}
  for r, event in zip(sorted(results, key=lambda r: r.token), events):
    by_author.setdefault(event["pubkey"], set()).add((r.outcome, r.message))
  assert by_author.pop(nokey) == {(OUTCOME_PERMANENT, "auth-required: no key")}
  assert by_author.pop(refused) == {(OUTCOME_PERMANENT, "auth failed: restricted: not on the list")}
  assert all(v == {(OUTCOME_ACCEPTED, "")} for v in by_author.values()), by_author
  assert len([a for a in fake.auths if a[0] == refused]) == 3
  assert took < 5


def test_stale_challenges_and_rate_limits_are_bounded():
  # The relay never keeps a challenge: every AUTH is stale, and the events end
  # transient_exhausted after a bounded number of tries, not permanent, not never.
  signers, events = _authors(2, per_author=2)
  with _AuthRelay(keep=0, auth_per_second=100) as fake:
    started = time.monotonic()
    results = _publish(fake.url, events, auth_signer=signers.get, backoff_base=0.01)
    took = time.monotonic() - started
  assert [r.outcome for r in results] == [OUTCOME_TRANSIENT_EXHAUSTED] * 4
  assert all(r.message.startswith("auth failed after 8 tries") for r in results), results
  assert took < 10
