"""Exponential backoff with equal jitter: the one retry schedule of every client.

The relay clients (``transforms.clients.relay``) and the migration API contract
(``transforms.clients.migration_contract``, which adds Retry-After on top) both wait
``exponential_backoff`` seconds between tries. Pure: no I/O, no Beam.
"""

import random
from typing import Optional

# 2**60 times any sensible base is far past any cap; the bound keeps the float finite
# for absurd attempt numbers instead of overflowing.
_MAX_EXPONENT = 60


def exponential_backoff(attempt: int, base: float, cap: float,
                        rng: Optional[random.Random] = None, jitter: bool = True) -> float:
  """Seconds to wait after failed try number ``attempt``.

  The schedule is ``d = min(cap, base * 2 ** (attempt - 1))``. With ``jitter``,
  "equal jitter" is applied: ``d / 2 + uniform(0, d / 2)``, so the delay lies in
  [d/2, d]: many workers retrying together spread out, and none ever waits longer
  than the schedule says.

  Args:
    attempt: the try that just failed, counted from 1 (0 and below count as 1).
    base: the delay after the first try, in seconds; doubles with every try.
    cap: the largest delay, in seconds (before jitter).
    rng: random source for the jitter (default: the ``random`` module's shared one).
    jitter: whether to apply equal jitter.

  Returns:
    The delay in seconds.
  """
  delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), _MAX_EXPONENT))
  if jitter:
    delay = delay / 2 + (rng or random).uniform(0, delay / 2)
  return delay
