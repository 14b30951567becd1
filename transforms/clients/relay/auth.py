"""NIP-42 AUTH for ``RelayPublisher``: answering a relay's challenges with the author's key.

``Nip42Mixin`` holds the AUTH round's methods; ``transforms.clients.relay.publisher``
mixes it into ``RelayPublisher``, whose lock, per-connection AUTH state and
per-event bookkeeping (``_finish_locked``, ``_retry_locked``,
``_drop_connection_locked``) these methods use. Methods ending in ``_locked`` are
called with that lock held. Logs carry pubkeys and counts only, never keys.
"""

import json
import logging
import time
from typing import Any

from transforms.clients.relay.common import TRANSIENT_PREFIXES, backoff_delay, message_prefix
from transforms.clients.relay.outcomes import (
    AUTH_WAIT,
    OUTCOME_PERMANENT,
    OUTCOME_TRANSIENT_EXHAUSTED,
    READY,
    SENT,
    PendingEvent,
)

_LOG = logging.getLogger(__name__)

_AUTH_KIND = 22242
_AUTH_REFUSALS = 3  # AUTHs refused for a pubkey on one connection before its events fail
_AUTH_RETRIES = 8  # transient AUTH failures (and fresh-challenge draws) per pubkey


class Nip42Mixin:
  """The NIP-42 AUTH round of a ``RelayPublisher`` (see the comment below)."""

  # One AUTH round at a time per connection. An event refused with auth-required
  # waits (AUTH_WAIT, listed by pubkey in _auth_waiting) and, while any event waits,
  # no new event is sent: each refusal would bring a new challenge, and relays keep
  # only a few (nostr-sdk's LocalRelay forgets them all past 20), each good once.
  # Once no event is in flight the sender answers the newest challenge as the first
  # waiting pubkey (_auth_step_locked). When the relay accepts, the waiting events are
  # resent: all of them, unless this connection has shown that one pubkey's AUTH does
  # not let others write (then only that pubkey's, and the round goes on with the
  # next pubkey). A challenge the relay no longer holds, a rate-limited or unanswered
  # AUTH are transient: retried on a fresh challenge (drawn by resending one waiting
  # event, or by reconnecting when that brings none), after a backoff for the rate
  # limits, at most _AUTH_RETRIES times per pubkey. Other AUTH refusals fail the
  # pubkey's events after _AUTH_REFUSALS.

  def _need_auth_locked(self, event_id: str, entry: PendingEvent, message: str) -> None:
    pubkey = entry.event.get("pubkey")
    if self._signer_for(pubkey) is None:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, "auth-required: no key")
      return
    entry.message = message
    refusals, refusal = self._auth_failures.get(pubkey, (0, ""))
    if refusals >= _AUTH_REFUSALS:
      self._finish_locked(event_id, False, OUTCOME_PERMANENT, "auth failed: " + refusal)
      return
    if pubkey in self._authed:
      # Authenticated yet refused: let the attempt bound end it.
      self._retry_locked(event_id, message, delay=True)
      return
    if self._authed:
      self._unlocks_all = False  # another pubkey's AUTH did not let this one write
    # A refusal that only asks for an AUTH does not use up one of the event's attempts
    # (the AUTH round has its own bounds).
    entry.attempts = max(0, entry.attempts - 1)
    entry.state = AUTH_WAIT
    waiting = self._auth_waiting.setdefault(pubkey, [])
    if event_id not in waiting:
      waiting.append(event_id)
    self._cond.notify_all()

  def _signer_for(self, pubkey: Any):
    if self._auth_signer is None or not isinstance(pubkey, str):
      return None
    try:
      return self._auth_signer(pubkey)
    except Exception:  # pylint: disable=broad-except
      _LOG.warning("auth_signer failed for pubkey %s", pubkey)
      return None

  def _auth_step_locked(self) -> None:
    """Moves the AUTH round on: answers the newest challenge, or draws a fresh one."""
    if not self._auth_waiting or self._auth_inflight or self._ws is None:
      return
    if self._clock() < self._auth_not_before:
      return
    if any(e.state == SENT for e in self._pending.values()):
      return  # their answers may bring newer challenges
    for pubkey in list(self._auth_waiting):
      ids = [i for i in self._auth_waiting[pubkey]
             if i in self._pending and self._pending[i].state == AUTH_WAIT]
      if ids:
        self._auth_waiting[pubkey] = ids
        break
      del self._auth_waiting[pubkey]
    else:
      return  # nothing waits any more: the round is over
    usable = self._challenge is not None and self._challenge != self._stale_challenge and not (
        self._challenge == self._used_challenge and self._reusable is False)
    if usable:
      signer = self._signer_for(pubkey)
      if signer is None:
        self._fail_auth_waiting_locked(pubkey, OUTCOME_PERMANENT, "auth-required: no key")
        return
      auth = signer.sign({
          "created_at": int(time.time()), "kind": _AUTH_KIND, "content": "",
          "tags": [["relay", self.url], ["challenge", self._challenge]]})
      self._auth_inflight[auth["id"]] = (pubkey, self._clock(), self._challenge)
      self._outbox.append(json.dumps(["AUTH", auth]))
      _LOG.debug("authenticating to %s as %s", self.url, pubkey)
      return
    # No challenge the relay still holds.
    if self._probed:
      # Resending an event brought none: a new connection may (many relays send one
      # on connect). The waiting events go back to the ready queue.
      self._drop_connection_locked("no fresh AUTH challenge", level=logging.INFO)
      return
    if not self._count_auth_retry_locked(pubkey, "no fresh AUTH challenge"):
      return
    # Resend one waiting event: its refusal brings a fresh challenge.
    self._probed = True
    self._auth_waiting[pubkey] = ids[1:]  # the key stays: the round is not over
    self._pending[ids[0]].state = READY
    self._priority.append(ids[0])

  def _on_auth_ok_locked(self, auth_id: str, accepted: bool, message: str, gen: int) -> None:
    pubkey, _, challenge = self._auth_inflight.pop(auth_id)
    if gen != self._gen:
      return
    self._cond.notify_all()
    if accepted:
      self._authed.add(pubkey)
      self._auth_retries.pop(pubkey, None)
      if challenge == self._used_challenge:
        self._reusable = True
      self._used_challenge = challenge
      _LOG.debug("authenticated to %s as %s", self.url, pubkey)
      for key in ([pubkey] if self._unlocks_all is False else list(self._auth_waiting)):
        self._release_auth_waiting_locked(key)
      return
    self._auth_refusals.log("AUTH as %s refused by %s: %.200s", pubkey, self.url, message)
    if message_prefix(message) in TRANSIENT_PREFIXES:  # rate-limited: back off, then the newest
      self._auth_transient_locked(pubkey, message, backoff=True)
    elif "challenge" in message.lower():
      # A challenge the relay no longer holds (too old, already used, forgotten).
      self._stale_challenge = challenge
      if challenge == self._used_challenge:
        self._reusable = False  # single-use challenges: wait for a fresh one next time
      self._auth_transient_locked(pubkey, message, backoff=False)
    else:
      self._stale_challenge = challenge  # it may have been used up
      refusals = self._auth_failures.get(pubkey, (0, ""))[0] + 1
      self._auth_failures[pubkey] = (refusals, message)
      if refusals >= _AUTH_REFUSALS:
        self._fail_auth_waiting_locked(pubkey, OUTCOME_PERMANENT, "auth failed: " + message)

  def _auth_transient_locked(self, pubkey: str, message: str, backoff: bool) -> None:
    if self._count_auth_retry_locked(pubkey, message) and backoff:
      self._auth_not_before = self._clock() + backoff_delay(
          self._auth_retries[pubkey], self.backoff_base, self.backoff_cap)

  def _count_auth_retry_locked(self, pubkey: str, message: str) -> bool:
    """Counts one transient AUTH failure; False (events failed) past _AUTH_RETRIES."""
    retries = self._auth_retries.get(pubkey, 0) + 1
    self._auth_retries[pubkey] = retries
    if retries <= _AUTH_RETRIES:
      return True
    self._fail_auth_waiting_locked(pubkey, OUTCOME_TRANSIENT_EXHAUSTED,
                                   "auth failed after %d tries: %s" % (retries - 1, message))
    return False

  def _release_auth_waiting_locked(self, pubkey: str) -> None:
    """Resends a pubkey's waiting events, ahead of the events held during the round."""
    for event_id in self._auth_waiting.pop(pubkey, []):
      entry = self._pending.get(event_id)
      if entry is not None and entry.state == AUTH_WAIT:
        entry.state = READY
        self._priority.append(event_id)
    self._cond.notify_all()

  def _fail_auth_waiting_locked(self, pubkey: str, outcome: str, message: str) -> None:
    for event_id in self._auth_waiting.pop(pubkey, []):
      entry = self._pending.get(event_id)
      if entry is not None and entry.state == AUTH_WAIT:
        self._finish_locked(event_id, False, outcome, message)
    self._cond.notify_all()
