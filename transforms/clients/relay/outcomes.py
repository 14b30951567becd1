"""What publishing one event to a relay can end in, and the states it passes through.

Shared by ``transforms.clients.relay.publisher`` (``RelayPublisher``), its event
bookkeeping (``transforms.clients.relay.pending``) and its NIP-42 AUTH
(``transforms.clients.relay.auth``): the outcome constants, ``PublishResult`` and the
record of one event not yet resolved.
"""

import dataclasses
from typing import Any, List

OUTCOME_ACCEPTED = "accepted"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_PERMANENT = "permanent"
OUTCOME_TRANSIENT_EXHAUSTED = "transient_exhausted"


@dataclasses.dataclass
class PublishResult:
  """The final result of publishing one event to one relay."""

  token: Any
  event_id: str
  relay: str
  accepted: bool
  outcome: str
  message: str
  attempts: int


# The states of a pending event: ready to send, sent (awaiting its OK), scheduled for
# a resend after a backoff, waiting for an AUTH round.
READY, SENT, SCHEDULED, AUTH_WAIT = "ready", "sent", "scheduled", "auth_wait"


@dataclasses.dataclass
class PendingEvent:
  """One submitted event without a final result yet, and the tokens to report it under."""

  event: dict
  frame: str
  tokens: List[Any]
  state: str = READY
  attempts: int = 0
  sent_at: float = 0.0
  message: str = ""

