"""gc_tuning: the first AsyncDoFn of a process raises the young-generation GC threshold."""

import gc

import pytest

from transforms.runtime import async_dofn, gc_tuning


class Echo(async_dofn.AsyncDoFn):
  async def handle(self, element):
    return [element]


@pytest.fixture
def thresholds():
  before = gc.get_threshold()
  yield
  gc.set_threshold(*before)


def test_the_first_asyncdofn_of_a_process_raises_the_threshold(thresholds):
  async_dofn.shutdown_shared_loop(1.0)  # as in a fresh worker process: no loop yet
  gc.set_threshold(700, 10, 10)
  fn = Echo(4)
  fn.setup()
  try:
    assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, 10, 10)
  finally:
    fn.teardown()


def test_it_never_lowers_a_threshold_nor_enables_a_disabled_collector(thresholds):
  gc.set_threshold(50_000, 5, 5)
  gc_tuning.raise_gc_threshold()
  assert gc.get_threshold() == (50_000, 5, 5)
  gc.set_threshold(0, 10, 10)
  gc_tuning.raise_gc_threshold()
  assert gc.get_threshold() == (0, 10, 10)
