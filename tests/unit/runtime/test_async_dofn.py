"""AsyncDoFn under TestPipeline: elements finish out of order, yet keep their windows; the
counts of a bundle that failed never reach the bundle that retries it."""

import asyncio
import collections
import gc
import logging
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.runtime import accounting
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


class _Gated(AsyncDoFn):
  """Counts each element it handles; "slow" waits for a gate first."""

  gate = threading.Event()

  async def handle(self, element):
    while element == "slow" and not self.gate.is_set():
      await asyncio.sleep(0.005)
    accounting.inc("t_handled")
    return [element]


class _BundleCounters:
  """Stands in for Beam's per-bundle metrics containers: a dict per bundle attempt."""

  def __init__(self):
    self.bundles = [collections.Counter()]

  def counter(self, name):
    bundles = self.bundles

    class _Cell:
      def inc(self, n=1):
        bundles[-1][name] += n
    return _Cell()


@pytest.mark.usefixtures("clean_tally")
def test_a_retried_bundle_counts_only_committed_work(monkeypatch):
  counters = _BundleCounters()
  monkeypatch.setattr(accounting, "_counter", counters.counter)
  monkeypatch.setattr(accounting.MetricsEnvironment, "current_container", lambda: object())
  fn = _Gated(max_in_flight=4)
  fn.setup()
  try:
    wv = WindowedValue(None, 0, [GlobalWindow()])
    fn.start_bundle()
    assert list(fn.process("slow", wv.with_value("slow"))) == []  # in flight when it fails
    # The bundle fails here; Beam drops its counters and retries it on a fresh attempt.
    counters.bundles.append(collections.Counter())
    fn.start_bundle()
    _Gated.gate.set()
    for _ in range(2000):  # the abandoned call completes while the retry runs
      if fn._done:
        break
      time.sleep(0.005)
    assert fn._done, "the abandoned call never completed"
    out = list(fn.process("slow", wv.with_value("slow"))) + list(fn.finish_bundle())
  finally:
    fn.teardown()
    _Gated.gate.clear()
  assert [o.value for o in out] == ["slow"]  # the retry's result only, once
  assert counters.bundles == [collections.Counter(), collections.Counter(t_handled=1)]
  assert accounting.live_counts()["t_handled"] == 2  # the display counts both attempts


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
