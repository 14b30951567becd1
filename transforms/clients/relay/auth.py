"""NIP-42 AUTH for ``RelayPublisher``: answering a relay's challenges with the author's key.

``Nip42Auth`` is created and held by ``transforms.clients.relay.publisher``'s
``RelayPublisher``, one per publisher. It owns the AUTH state (the challenges seen,
the AUTHs in flight, the pubkeys authenticated and waiting, the refusal and retry
counts, the backoff) and moves events only through the publisher's
``PendingEvents`` (``transforms.clients.relay.pending``). Logs carry pubkeys and
counts only, never keys.
"""

import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from transforms.clients.relay.common import TRANSIENT_PREFIXES, message_prefix
from transforms.clients.relay.outcomes import (
  AUTH_WAIT,
  OUTCOME_PERMANENT,
  OUTCOME_TRANSIENT_EXHAUSTED,
  PendingEvent,
)
from transforms.clients.relay.pending import PendingEvents
from transforms.core.backoff import exponential_backoff
from transforms.runtime.logs import CappedLog

_LOG = logging.getLogger(__name__)

_AUTH_KIND = 22242
_AUTH_REFUSALS = 3  # AUTHs refused for a pubkey on one connection before its events fail
_AUTH_RETRIES = 8  # transient AUTH failures (and fresh-challenge draws) per pubkey


class Nip42Auth:
  """The NIP-42 AUTH rounds of one ``RelayPublisher``.

  One AUTH round at a time per connection. An event refused with auth-required
  waits (AUTH_WAIT, listed by pubkey) and, while any event waits, no new event is
  sent (``round_open``): each refusal would bring a new challenge, and relays keep
  only a few (nostr-sdk's LocalRelay forgets them all past 20), each good once.
  Once no event is in flight ``step`` answers the newest challenge as the first
  waiting pubkey. When the relay accepts, the waiting events are resent: all of
  them, unless this connection has shown that one pubkey's AUTH does not let
  others write (then only that pubkey's, and the round goes on with the next
  pubkey). A challenge the relay no longer holds, a rate-limited or unanswered AUTH
  are transient: retried on a fresh challenge (drawn by resending one waiting
  event, or by reconnecting when that brings none), after a backoff for the rate
  limits, at most _AUTH_RETRIES times per pubkey. Other AUTH refusals fail the
  pubkey's events after _AUTH_REFUSALS.

  The interface with the publisher, whose lock is held for every call:

  * In: ``reset`` (a connection opened or was lost), ``on_challenge`` (an AUTH
    message on the current connection), ``is_answer`` / ``on_answer`` (an OK to
    one of our AUTHs), ``on_auth_required`` (an event refused with auth-required
    on the current connection), ``on_accepted`` (an event of a pubkey accepted),
    ``step`` (the sender may send: returns the AUTH frame to send, if any),
    ``expire`` and ``deadlines`` (the sender's timers).
  * Out: the ``PendingEvents`` given (events held, released, retried, finished;
    its notify wakes the sender) and the ``drop_connection(reason, level)``
    callback, for when only a new connection may bring a fresh challenge.

  Attributes:
    refusals: AUTH refusals seen so far (logged, capped; for the done line).
  """

  def __init__(self, url: str, signer_lookup: Optional[Callable[[str], Any]],
               events: PendingEvents, notify: Callable[[], None],
               drop_connection: Callable[[str, int], None], clock: Callable[[], float],
               backoff_base: float, backoff_cap: float):
    """Starts with no connection state.

    Args:
      url: the relay url (the AUTH's relay tag; logs).
      signer_lookup: pubkey -> Signer (or None); None: no AUTH is ever answered.
      events: the publisher's pending events.
      notify: wakes the publisher's sender (``Condition.notify_all``).
      drop_connection: abandons the connection with a reason and a log level; the
        publisher reconnects and calls ``reset``.
      clock: the publisher's monotonic clock.
      backoff_base: first delay after a rate-limited AUTH, in seconds.
      backoff_cap: largest such delay, in seconds.
    """
    self._url = url
    self._signer_lookup = signer_lookup
    self._events = events
    self._notify = notify
    self._drop_connection = drop_connection
    self._clock = clock
    self._backoff_base = backoff_base
    self._backoff_cap = backoff_cap
    self._refusals = CappedLog(_LOG, "AUTH refusals", limit=5, level=logging.INFO)
    # Transient AUTH failures per pubkey; kept across reconnects so that they stay bounded.
    self._retries: Dict[str, int] = {}
    self.reset()

  def reset(self) -> None:
    """Forgets the connection's AUTH state: a new connection starts without any."""
    self._challenge: Optional[str] = None  # the newest challenge the relay sent
    self._stale_challenge: Optional[str] = None  # one the relay refused an AUTH on
    self._used_challenge: Optional[str] = None  # the one the last accepted AUTH used
    self._reusable: Optional[bool] = None  # is a challenge good for more than one AUTH?
    self._probed = False  # an event was resent to draw a challenge; none came yet
    self._authed: Set[str] = set()
    self._unlocks_all: Optional[bool] = None  # does one AUTH let every pubkey write?
    self._inflight: Dict[str, Tuple[str, float, str]] = {}  # id -> (pubkey, sent_at, challenge)
    # pubkey -> event ids refused with auth-required, in arrival order. While it is not
    # empty an AUTH round is in progress and new events are held back (round_open).
    self._waiting: Dict[str, List[str]] = {}
    self._failures: Dict[str, Tuple[int, str]] = {}  # pubkey -> (refusals, last message)
    self._not_before = float("-inf")

  @property
  def refusals(self) -> int:
    return self._refusals.count

  @property
  def round_open(self) -> bool:
    """Whether events wait for an AUTH round (new events are held back meanwhile)."""
    return bool(self._waiting)

  def on_challenge(self, challenge: str) -> None:
    # Answered by step(), once the answers in flight have arrived: only the newest
    # challenge is worth answering.
    self._challenge = challenge
    self._probed = False
    self._notify()

  def is_answer(self, ok_id: str) -> bool:
    return ok_id in self._inflight

  def on_accepted(self, pubkey: Any) -> None:
    """The relay took an event of this pubkey: its waiting events need no AUTH."""
    if pubkey in self._waiting:
      self._release(pubkey)

  # -- refusals and the round ------------------------------------------------

  def on_auth_required(self, event_id: str, entry: PendingEvent, message: str) -> None:
    pubkey = entry.event.get("pubkey")
    if self._signer_for(pubkey) is None:
      self._events.finish(event_id, False, OUTCOME_PERMANENT, "auth-required: no key")
      return
    entry.message = message
    refusals, refusal = self._failures.get(pubkey, (0, ""))
    if refusals >= _AUTH_REFUSALS:
      self._events.finish(event_id, False, OUTCOME_PERMANENT, "auth failed: " + refusal)
      return
    if pubkey in self._authed:
      # Authenticated yet refused: let the attempt bound end it.
      self._events.retry(event_id, message, delay=True)
      return
    if self._authed:
      self._unlocks_all = False  # another pubkey's AUTH did not let this one write
    # A refusal that only asks for an AUTH does not use up one of the event's attempts
    # (the AUTH round has its own bounds).
    entry.attempts = max(0, entry.attempts - 1)
    entry.state = AUTH_WAIT
    waiting = self._waiting.setdefault(pubkey, [])
    if event_id not in waiting:
      waiting.append(event_id)
    self._notify()

  def _signer_for(self, pubkey: Any):
    if self._signer_lookup is None or not isinstance(pubkey, str):
      return None
    try:
      return self._signer_lookup(pubkey)
    except Exception:  # pylint: disable=broad-except
      _LOG.warning("auth_signer failed for pubkey %s", pubkey)
      return None

  def step(self) -> Optional[str]:
    """Moves the AUTH round on: answers the newest challenge, or draws a fresh one.

    Called by the sender, connected, before it takes events to send.

    Returns:
      The AUTH frame to send first, if any.
    """
    if not self._waiting or self._inflight or self._clock() < self._not_before:
      return None
    if self._events.any_sent():
      return None  # their answers may bring newer challenges
    for pubkey in list(self._waiting):
      ids = [i for i in self._waiting[pubkey] if self._events.in_state(i, AUTH_WAIT)]
      if ids:
        self._waiting[pubkey] = ids
        break
      del self._waiting[pubkey]
    else:
      return None  # nothing waits any more: the round is over
    usable = self._challenge is not None and self._challenge != self._stale_challenge and not (
        self._challenge == self._used_challenge and self._reusable is False)
    if usable:
      return self._answer(pubkey)
    # No challenge the relay still holds.
    if self._probed:
      # Resending an event brought none: a new connection may (many relays send one
      # on connect). The waiting events go back to the ready queue.
      self._drop_connection("no fresh AUTH challenge", logging.INFO)
      return None
    if not self._count_retry(pubkey, "no fresh AUTH challenge"):
      return None
    # Resend one waiting event: its refusal brings a fresh challenge.
    self._probed = True
    self._waiting[pubkey] = ids[1:]  # the key stays: the round is not over
    self._events.prioritise(ids[0])
    return None

  def _answer(self, pubkey: str) -> Optional[str]:
    """The AUTH frame answering the newest challenge as pubkey."""
    signer = self._signer_for(pubkey)
    if signer is None:
      self._fail_waiting(pubkey, OUTCOME_PERMANENT, "auth-required: no key")
      return None
    auth = signer.sign({
        "created_at": int(time.time()), "kind": _AUTH_KIND, "content": "",
        "tags": [["relay", self._url], ["challenge", self._challenge]]})
    self._inflight[auth["id"]] = (pubkey, self._clock(), self._challenge)
    _LOG.debug("authenticating to %s as %s", self._url, pubkey)
    return json.dumps(["AUTH", auth])

  def on_answer(self, auth_id: str, accepted: bool, message: str, current: bool) -> None:
    """The relay's OK to one of our AUTHs (``current``: on the current connection)."""
    pubkey, _, challenge = self._inflight.pop(auth_id)
    if not current:
      return
    self._notify()
    if accepted:
      self._authed.add(pubkey)
      self._retries.pop(pubkey, None)
      if challenge == self._used_challenge:
        self._reusable = True
      self._used_challenge = challenge
      _LOG.debug("authenticated to %s as %s", self._url, pubkey)
      for key in ([pubkey] if self._unlocks_all is False else list(self._waiting)):
        self._release(key)
      return
    self._refusals.log("AUTH as %s refused by %s: %.200s", pubkey, self._url, message)
    if message_prefix(message) in TRANSIENT_PREFIXES:  # rate-limited: back off, then the newest
      self._transient(pubkey, message, backoff=True)
    elif "challenge" in message.lower():
      # A challenge the relay no longer holds (too old, already used, forgotten).
      self._stale_challenge = challenge
      if challenge == self._used_challenge:
        self._reusable = False  # single-use challenges: wait for a fresh one next time
      self._transient(pubkey, message, backoff=False)
    else:
      self._stale_challenge = challenge  # it may have been used up
      refusals = self._failures.get(pubkey, (0, ""))[0] + 1
      self._failures[pubkey] = (refusals, message)
      if refusals >= _AUTH_REFUSALS:
        self._fail_waiting(pubkey, OUTCOME_PERMANENT, "auth failed: " + message)

  # -- timers ----------------------------------------------------------------

  def expire(self, now: float, ack_timeout: float) -> None:
    """Retries the AUTHs that got no answer within ack_timeout (on a fresh challenge)."""
    for auth_id, (pubkey, sent, challenge) in list(self._inflight.items()):
      if now - sent >= ack_timeout:
        del self._inflight[auth_id]
        self._stale_challenge = challenge
        self._transient(pubkey, "no answer to AUTH within %.1f s" % ack_timeout, backoff=True)

  def deadlines(self, now: float, ack_timeout: float) -> List[float]:
    """When the sender must look again: AUTH answers due, the end of a backoff."""
    times = [sent + ack_timeout for _, sent, _ in self._inflight.values()]
    if self._waiting and self._not_before > now:
      times.append(self._not_before)
    return times

  # -- bounds ----------------------------------------------------------------

  def _transient(self, pubkey: str, message: str, backoff: bool) -> None:
    if self._count_retry(pubkey, message) and backoff:
      self._not_before = self._clock() + exponential_backoff(
          self._retries[pubkey], self._backoff_base, self._backoff_cap)

  def _count_retry(self, pubkey: str, message: str) -> bool:
    """Counts one transient AUTH failure; False (events failed) past _AUTH_RETRIES."""
    retries = self._retries.get(pubkey, 0) + 1
    self._retries[pubkey] = retries
    if retries <= _AUTH_RETRIES:
      return True
    self._fail_waiting(pubkey, OUTCOME_TRANSIENT_EXHAUSTED,
                       "auth failed after %d tries: %s" % (retries - 1, message))
    return False

  def _release(self, pubkey: str) -> None:
    """Resends a pubkey's waiting events, ahead of the events held during the round."""
    for event_id in self._waiting.pop(pubkey, []):
      if self._events.in_state(event_id, AUTH_WAIT):
        self._events.prioritise(event_id)
    self._notify()

  def _fail_waiting(self, pubkey: str, outcome: str, message: str) -> None:
    for event_id in self._waiting.pop(pubkey, []):
      if self._events.in_state(event_id, AUTH_WAIT):
        self._events.finish(event_id, False, outcome, message)
    self._notify()
