"""The two backoff flavours: equal jitter (relays) never exceeds the schedule; the migration
API's `backoff_at_least` never falls below it."""

import random

from transforms.core.backoff import backoff_at_least, exponential_backoff

SEED_SCHEDULE = (2.0, 4.0, 8.0, 16.0, 32.0)


def test_backoff_at_least_keeps_the_seed_schedule_as_a_floor():
  rng = random.Random(3)
  for attempt, floor in enumerate(SEED_SCHEDULE, start=1):
    delays = [backoff_at_least(attempt, 2.0, 32.0, rng) for _ in range(300)]
    assert floor <= min(delays) and max(delays) <= floor * 1.25
  assert [backoff_at_least(a, 2.0, 32.0, spread=0) for a in range(1, 8)] == [
      *SEED_SCHEDULE, 32.0, 32.0]


def test_backoff_at_least_handles_absurd_attempts_and_a_zero_base():
  assert backoff_at_least(10_000, 2.0, 32.0, random.Random(1)) <= 40.0
  assert backoff_at_least(0, 2.0, 32.0, spread=0) == 2.0
  assert backoff_at_least(3, 0.0, 32.0, random.Random(1)) == 0.0


def test_equal_jitter_of_the_relays_is_unchanged():
  rng = random.Random(5)
  for attempt, full in enumerate(SEED_SCHEDULE, start=1):
    assert all(full / 2 <= exponential_backoff(attempt, 2.0, 32.0, rng) <= full
               for _ in range(100))
