"""Tests for transforms.clients.relay.auth (NIP-42 AUTH of RelayPublisher) against a real
LocalRelay process that requires AUTH to write (devstack.relay), and scripted relays for
the challenge and AUTH policies LocalRelay does not have.
"""

import json
import time

import pytest

from devstack.relay import RelayProcess
from tests.support.ws_server import ThreadedServer
from tests.unit.clients.relay.helpers import publish_all, signed_notes
from transforms.clients.relay.outcomes import (
  OUTCOME_ACCEPTED,
  OUTCOME_PERMANENT,
  OUTCOME_TRANSIENT_EXHAUSTED,
)
from transforms.clients.relay.reader import fetch_events
from transforms.nostr.event import Signer, generate_private_key

# ---------------------------------------------------------------------------
# Real relay: NIP-42


@pytest.fixture(scope="module")
def auth_relay():
  with RelayProcess(nip42_write=True) as proc:
    yield proc


def test_nip42_publisher_answers_auth(auth_relay):
  alice, bob = Signer(generate_private_key()), Signer(generate_private_key())
  signers = {alice.pubkey: alice, bob.pubkey: bob}
  events = signed_notes(alice, 100) + signed_notes(bob, 100)
  results = publish_all(auth_relay.url, events, auth_signer=signers.get)
  assert len(results) == 200
  assert all(r.accepted for r in results), {(r.outcome, r.message) for r in results}
  fetched = list(fetch_events(auth_relay.url, {"authors": [alice.pubkey, bob.pubkey]}))
  assert len(fetched) == 200


def test_nip42_without_a_key_is_permanent(auth_relay):
  alice, bob = Signer(generate_private_key()), Signer(generate_private_key())
  results = publish_all(auth_relay.url, signed_notes(alice, 5))
  assert [r.outcome for r in results] == [OUTCOME_PERMANENT] * 5
  assert results[0].message == "auth-required: no key"
  # A signer lookup that does not know the author is the same.
  results = publish_all(auth_relay.url, signed_notes(alice, 2), auth_signer={bob.pubkey: bob}.get)
  assert [r.outcome for r in results] == [OUTCOME_PERMANENT] * 2


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
  events = [e for s in signers for e in signed_notes(s, per_author)]
  return {s.pubkey: s for s in signers}, events


@pytest.mark.parametrize("per_pubkey", [True, False])
def test_many_authors_pipelined_one_auth_round_at_a_time(per_pubkey):
  signers, events = _authors(12)
  with _AuthRelay(per_pubkey=per_pubkey, keep=3, auth_per_second=5) as fake:
    results = publish_all(fake.url, events, auth_signer=signers.get, backoff_base=0.05)
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
    results = publish_all(fake.url, events, auth_signer=signers.get)
  assert all(r.accepted for r in results), sorted({r.message for r in results})
  assert sorted(p for p, answer in fake.auths if not answer) == sorted(signers)
  assert fake.connections == 1


def test_authors_without_a_key_or_refused_fail_while_the_others_publish():
  signers, events = _authors(6)
  nokey, refused = list(signers)[:2]
  known = {p: s for p, s in signers.items() if p != nokey}
  with _AuthRelay(refuse=[refused], auth_per_second=100) as fake:
    started = time.monotonic()
    results = publish_all(fake.url, events, auth_signer=known.get)
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
    results = publish_all(fake.url, events, auth_signer=signers.get, backoff_base=0.01)
    took = time.monotonic() - started
  assert [r.outcome for r in results] == [OUTCOME_TRANSIENT_EXHAUSTED] * 4
  assert all(r.message.startswith("auth failed after 8 tries") for r in results), results
  assert took < 10
