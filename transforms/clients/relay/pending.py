"""The bookkeeping of a ``RelayPublisher``: events taken and not yet answered, and their results.

``PendingEvents`` holds every submitted event without a final result
(``PendingEvent``, by id), the queues of events to send, the scheduled resends
(with backoff) and the results not yet collected. It never touches the
connection: the publisher (``transforms.clients.relay.publisher``) sends the
frames it hands out, and its NIP-42 AUTH (``transforms.clients.relay.auth``)
holds events back and releases them through it.
"""

import collections
import logging
import queue
from typing import Any, Callable, Deque, Dict, List, Optional

from transforms.clients.relay.outcomes import (
  AUTH_WAIT,
  OUTCOME_ACCEPTED,
  OUTCOME_DUPLICATE,
  OUTCOME_PERMANENT,
  OUTCOME_TRANSIENT_EXHAUSTED,
  READY,
  SCHEDULED,
  SENT,
  PendingEvent,
  PublishResult,
)
from transforms.core.backoff import exponential_backoff

_LOG = logging.getLogger(__name__)

_FRAMES_PER_TAKE = 500  # frames handed out per take (the sender then checks deadlines again)


class PendingEvents:
  """The events of one publisher without a final result, the queues they wait in, the results.

  Guarded by the publisher's lock: every method is called with the lock of
  ``cond`` held, except ``run_retries`` (the body of the publisher's retry thread,
  which takes the lock itself). Each method that makes an event sendable, or ends
  one, notifies ``cond``.

  An event is in ``entries`` from ``add`` until ``finish``; meanwhile its id sits
  in ``ready`` (new events and resends), in ``priority`` (sent even while an AUTH
  round holds the ready queue back), in the retry schedule, or nowhere (sent,
  awaiting its OK, or waiting for an AUTH round).
  """

  def __init__(self, url: str, cond: Any, counts: collections.Counter, max_attempts: int,
               backoff_base: float, backoff_cap: float, clock: Callable[[], float],
               sleep: Callable[[float], None]):
    """Starts empty.

    Args:
      url: the relay url, for the results and the logs.
      cond: the publisher's ``threading.Condition``, notified when events move.
      counts: the publisher's counter; this adds events, sent, resent, and the outcomes
        (accepted, duplicate, refused, failed).
      max_attempts: sends per event before a transient failure is final.
      backoff_base: first resend delay in seconds (see ``exponential_backoff``).
      backoff_cap: largest resend delay in seconds.
      clock: monotonic clock of the resend schedule.
      sleep: waits out a resend's backoff (tests pass a fake).
    """
    self._url = url
    self._cond = cond
    self._counts = counts
    self._max_attempts = max_attempts
    self._backoff_base = backoff_base
    self._backoff_cap = backoff_cap
    self._clock = clock
    self._sleep = sleep
    self.entries: Dict[str, PendingEvent] = {}
    self.ready: Deque[str] = collections.deque()
    self.priority: Deque[str] = collections.deque()
    self._results: List[PublishResult] = []
    self._retry_queue: "queue.Queue" = queue.Queue()
    self._stopped = False

  def __len__(self) -> int:
    return len(self.entries)

  def get(self, event_id: str) -> Optional[PendingEvent]:
    return self.entries.get(event_id)

  def in_state(self, event_id: str, state: str) -> bool:
    """Whether the event is pending and in that state."""
    entry = self.entries.get(event_id)
    return entry is not None and entry.state == state

  def add(self, event: dict, frame: str, token: Any) -> None:
    """Queues a new event, or adds a token to the same event already pending."""
    entry = self.entries.get(event["id"])
    if entry is not None:
      entry.tokens.append(token)
      return
    self.entries[event["id"]] = PendingEvent(event=event, frame=frame, tokens=[token])
    self._counts["events"] += 1
    self.ready.append(event["id"])
    self._cond.notify_all()

  def has_results(self) -> bool:
    return bool(self._results)

  def take_results(self) -> List[PublishResult]:
    results, self._results = self._results, []
    return results

  # -- final results and resends ---------------------------------------------

  def finish(self, event_id: str, accepted: bool, outcome: str, message: str) -> None:
    """Ends an event: one result per token it was submitted with."""
    entry = self.entries.pop(event_id, None)
    if entry is None:
      return
    for token in entry.tokens:
      self._results.append(PublishResult(
          token=token, event_id=event_id, relay=self._url, accepted=accepted, outcome=outcome,
          message=message, attempts=entry.attempts))
    self._counts[{OUTCOME_ACCEPTED: "accepted", OUTCOME_DUPLICATE: "duplicate",
                  OUTCOME_PERMANENT: "refused"}.get(outcome, "failed")] += 1
    if outcome in (OUTCOME_PERMANENT, OUTCOME_TRANSIENT_EXHAUSTED):
      # Per event: the publishing DoFn, which knows the vine, reports failures.
      _LOG.debug("event %s on %s: %s after %d attempts: %.200s", event_id, self._url, outcome,
                 entry.attempts, message)
    self._cond.notify_all()

  def fail_all(self, message: str, with_last_answer: bool = False) -> None:
    """Ends every pending event transient_exhausted (relay down, drain timed out).

    Args:
      message: the result message.
      with_last_answer: append each event's last answer from the relay to it.
    """
    for event_id in list(self.entries):
      self.finish(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                  message + (self.entries[event_id].message if with_last_answer else ""))

  def retry(self, event_id: str, message: str, delay: bool) -> None:
    """Resends an event (after a backoff if delay) unless it has used every attempt."""
    entry = self.entries.get(event_id)
    if entry is None:
      return
    entry.message = message
    if entry.attempts >= self._max_attempts:
      self.finish(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED, message)
      return
    self._counts["resent"] += 1
    if delay:
      entry.state = SCHEDULED
      wait = exponential_backoff(entry.attempts, self._backoff_base, self._backoff_cap)
      self._retry_queue.put((self._clock() + wait, wait, event_id))
    else:
      entry.state = READY
      self.ready.append(event_id)
      self._cond.notify_all()

  def run_retries(self) -> None:
    """Moves scheduled resends to the ready queue when their backoff has passed; the body
    of the publisher's retry thread, until ``stop``."""
    while True:
      item = self._retry_queue.get()
      if item is None:
        return
      due, wait, event_id = item
      remaining = min(wait, due - self._clock())
      if remaining > 0:
        self._sleep(remaining)
      with self._cond:
        if self._stopped:
          return
        entry = self.entries.get(event_id)
        if entry is not None and entry.state == SCHEDULED:
          entry.state = READY
          self.ready.append(event_id)
          self._cond.notify_all()

  def stop(self) -> None:
    """Ends ``run_retries``; scheduled resends are dropped."""
    self._stopped = True
    self._retry_queue.put(None)

  # -- sending ---------------------------------------------------------------

  def prioritise(self, event_id: str) -> None:
    """Makes an event ready and sends it ahead of the ready queue, even during an AUTH round."""
    self.entries[event_id].state = READY
    self.priority.append(event_id)

  def take_frames(self, frames: List[str], hold_ready: bool, now: float) -> List[str]:
    """Adds the frames to send next to ``frames`` and marks their events sent.

    Args:
      frames: frames already to go out first (an AUTH), extended in place.
      hold_ready: send only prioritised events (an AUTH round is in progress).
      now: the clock's time, the events' sent_at.

    Returns:
      ``frames``.
    """
    while len(frames) < _FRAMES_PER_TAKE:
      if self.priority:
        event_id = self.priority.popleft()
      elif self.ready and not hold_ready:
        event_id = self.ready.popleft()
      else:
        break
      entry = self.entries.get(event_id)
      if entry is None or entry.state != READY:
        continue
      if entry.attempts >= self._max_attempts:
        self.finish(event_id, False, OUTCOME_TRANSIENT_EXHAUSTED,
                    entry.message or "no final answer")
        continue
      entry.state = SENT
      entry.attempts += 1
      entry.sent_at = now
      frames.append(entry.frame)
      self._counts["sent"] += 1
    return frames

  def any_sent(self) -> bool:
    """Whether an event awaits its OK."""
    return any(e.state == SENT for e in self.entries.values())

  def sent_deadlines(self, ack_timeout: float) -> List[float]:
    return [e.sent_at + ack_timeout for e in self.entries.values() if e.state == SENT]

  def expired(self, now: float, ack_timeout: float) -> List[str]:
    """The events sent at least ack_timeout ago without an answer."""
    return [event_id for event_id, e in self.entries.items()
            if e.state == SENT and now - e.sent_at >= ack_timeout]

  def requeue_priority(self) -> None:
    """Moves the prioritised events back to the ready queue (a new connection)."""
    self.ready.extend(self.priority)
    self.priority.clear()

  def resend_unanswered(self) -> int:
    """Resends the events sent, or waiting for AUTH, on a connection that was lost.

    Returns:
      How many there were.
    """
    unanswered = [i for i, e in self.entries.items() if e.state in (SENT, AUTH_WAIT)]
    for event_id in unanswered:
      self.retry(event_id, "connection lost", delay=False)
    return len(unanswered)
