"""Relay messages no client may crash on: nested 100,000 arrays deep, oversized, malformed."""

import json

from transforms.clients.relay.common import (
  DROP_MALFORMED,
  DROP_OVERSIZED,
  DROP_TOO_DEEP,
  MAX_MESSAGE_BYTES,
)

NESTED = "[" * 100_000 + "]" * 100_000
OVERSIZED = json.dumps(["NOTICE", "x" * MAX_MESSAGE_BYTES])
MALFORMED = '["OK", "abc", tru'

# Each message and why a client drops it.
HOSTILE = ((NESTED, DROP_TOO_DEEP), (OVERSIZED, DROP_OVERSIZED), (MALFORMED, DROP_MALFORMED))
MESSAGES = tuple(message for message, _ in HOSTILE)
