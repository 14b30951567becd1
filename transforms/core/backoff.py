"""Exponential backoff: the one retry schedule of every client, in two jitter flavours.

The relay clients (``transforms.clients.relay``) wait ``exponential_backoff`` seconds
between tries ("equal jitter": never longer than the schedule). The migration API
contract (``transforms.clients.migration_contract``, which adds 429 and Retry-After
on top) waits ``backoff_at_least``: the seed's 2, 4, 8, 16, 32 s are floors, and
jitter only adds. Pure: no I/O, no Beam.
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


def backoff_at_least(attempt: int, base: float, cap: float,
                     rng: Optional[random.Random] = None, spread: float = 0.25) -> float:
  """Seconds to wait after failed try ``attempt``: the schedule as a floor, jitter on top.

  ``d = min(cap, base * 2 ** (attempt - 1))`` (2, 4, 8, 16, 32 s for base 2 and cap
  32), then ``d + uniform(0, spread * d)``: workers retrying together still spread
  out, and none waits less than the schedule says (the seed's policy is a minimum).

  Args:
    attempt: the try that just failed, counted from 1 (0 and below count as 1).
    base: the delay after the first try, in seconds; doubles with every try.
    cap: the largest scheduled delay, in seconds (jitter may add up to ``spread`` of it).
    rng: random source for the jitter (default: the ``random`` module's shared one).
    spread: the largest jitter as a fraction of the scheduled delay; 0 for none.

  Returns:
    The delay in seconds, in ``[d, d * (1 + spread)]``.
  """
  delay = exponential_backoff(attempt, base, cap, jitter=False)
  return delay + (rng or random).uniform(0, delay * spread) if spread > 0 else delay
