"""The graph's wiring that is not a stage: the migration API's retry policy from the flags."""

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.graph import _retry_policy
from pipeline.options import MigrationOptions
from transforms.clients.migration_contract import backoff_delay


def _policy(*argv):
  return _retry_policy(PipelineOptions(list(argv)).view_as(MigrationOptions))


def test_default_flags_give_the_seed_retry_schedule():
  policy = _policy()
  assert (policy.max_attempts, policy.timeout) == (5, 60.0)
  floors = [backoff_delay(a, policy, throttled=False) for a in range(1, 5)]
  for floor, delay in zip((2.0, 4.0, 8.0, 16.0), floors, strict=True):
    assert floor <= delay <= floor * (1 + policy.jitter_spread)
  assert backoff_delay(5, policy) >= 32.0 and backoff_delay(9, policy) <= 32.0 * 1.25
  assert policy.retry_after_cap >= 32.0


def test_a_short_base_delay_scales_the_whole_schedule():
  policy = _policy("--retry-base-delay", "0.01", "--api-timeout", "5")
  assert policy.timeout == 5.0
  assert all(backoff_delay(a, policy) <= 0.16 * 1.25 for a in range(1, 10))
  assert all(backoff_delay(a, policy, throttled=True) <= 0.16 * 1.25 * 2 for a in range(1, 10))
