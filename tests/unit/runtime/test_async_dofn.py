"""AsyncDoFn under TestPipeline: elements finish out of order, yet keep their windows."""

import asyncio
import gc
import logging
import threading

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from transforms.runtime.async_dofn import AsyncDoFn, _SharedLoop, shutdown_shared_loop


class _SlowEcho(AsyncDoFn):
  """Completes elements out of order: larger values finish sooner."""

  async def handle(self, element):
    await asyncio.sleep((10 - element % 10) / 1000.0)
    if element == 13:
      raise ValueError("boom")
    return [element * 2, beam.pvalue.TaggedOutput("odd", element)] if element % 2 else [element * 2]

  def on_unexpected(self, element, exc):
    return [beam.pvalue.TaggedOutput("failed", (element, str(exc)))]


def test_async_dofn_keeps_windows_and_loses_nothing():
  with TestPipeline() as p:
    out = (p | beam.Create(list(range(40)))
           | beam.Map(lambda x: window.TimestampedValue(x, x))
           | beam.WindowInto(window.FixedWindows(10))
           | beam.ParDo(_SlowEcho(max_in_flight=4)).with_outputs("odd", "failed", main="main"))
    sums = (out.main | beam.Map(lambda x: ("k", x)) | beam.CombinePerKey(sum)
            | beam.Map(lambda kv: kv[1]))
    # Per-window sums prove each output kept its input's window.
    expected = [sum(2 * x for x in range(w, w + 10) if x != 13) for w in (0, 10, 20, 30)]
    assert_that(sums, equal_to(expected), label="PerWindow")
    assert_that(out.odd, equal_to([x for x in range(40) if x % 2 and x != 13]), label="Odd")
    assert_that(out.failed, equal_to([(13, "boom")]), label="Failed")


def test_shutdown_cancels_pending_calls_without_destroyed_task_errors(caplog):
  loop = _SharedLoop.acquire()
  started = threading.Event()
  cancelled = threading.Event()

  async def endless():
    started.set()
    try:
      await asyncio.sleep(3600)
    except asyncio.CancelledError:
      cancelled.set()
      raise

  asyncio.run_coroutine_threadsafe(endless(), loop)
  assert started.wait(10)
  shutdown_shared_loop(timeout=5)
  assert cancelled.is_set() and loop.is_closed() and _SharedLoop._loop is None
  gc.collect()
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
  again = _SharedLoop.acquire()  # the next run starts a new loop
  assert again is not loop and not again.is_closed()
  _SharedLoop.release()
