"""Many calls in flight inside one DoFn.

The DirectRunner (and each Dataflow worker thread) hands a DoFn one element at a
time, so an I/O-bound stage gets its concurrency from inside: AsyncDoFn runs each
element's coroutine on a background asyncio loop, keeps up to `max_in_flight` of them
running, and emits each result as soon as it completes. There is no batch barrier:
a slow call holds one slot, never the others.

Results are emitted with the window and timestamp of the element that produced them,
so the DoFn also behaves under windowing in streaming.
"""

import asyncio
import logging
import queue
import threading
from typing import Any, Iterable, Iterator, List

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from transforms import accounting

_LOG = logging.getLogger(__name__)


class StopRun(RuntimeError):
  """A configuration error that must stop the whole run (e.g. the API refused the token).

  Raised out of the DoFn on purpose: burning the whole corpus into dead letters
  would help nobody.
  """


def wrap_output(output: Any, timestamp, window) -> Any:
  """Attaches an input element's window to an output produced later."""
  if isinstance(output, TaggedOutput):
    return TaggedOutput(output.tag, WindowedValue(output.value, timestamp, (window,)))
  return WindowedValue(output, timestamp, (window,))


class AsyncDoFn(beam.DoFn):
  """Base class: subclasses implement `async handle(element) -> list of outputs`.

  Optional hooks: `async async_setup()`, `async async_teardown()`, and
  `on_unexpected(element, exc) -> list of outputs` (a dead letter, normally).
  """

  def __init__(self, max_in_flight: int):
    super().__init__()
    if max_in_flight < 1:
      raise ValueError("max_in_flight must be >= 1")
    self._max_in_flight = max_in_flight

  # -- hooks ---------------------------------------------------------------
  async def async_setup(self) -> None:
    pass

  async def async_teardown(self) -> None:
    pass

  async def handle(self, element) -> List[Any]:
    raise NotImplementedError

  def on_unexpected(self, element, exc: BaseException) -> List[Any]:
    raise exc

  # -- Beam lifecycle ---------------------------------------------------------
  def setup(self):
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name=type(self).__name__,
                                    daemon=True)
    self._thread.start()
    self.run_sync(self.async_setup())

  def run_sync(self, coro):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

  def start_bundle(self):
    self._in_flight = 0
    self._done: "queue.SimpleQueue" = queue.SimpleQueue()

  def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    while self._in_flight >= self._max_in_flight:
      yield from self._emit(self._done.get())
    future = asyncio.run_coroutine_threadsafe(self.handle(element), self._loop)
    self._in_flight += 1
    future.add_done_callback(
        lambda f, e=element, t=timestamp, w=window: self._done.put((f, e, t, w)))
    yield from self._emit_ready()

  def finish_bundle(self):
    while self._in_flight:
      yield from self._emit(self._done.get())

  def teardown(self):
    loop = getattr(self, "_loop", None)
    if loop is None:
      return
    try:
      self.run_sync(self.async_teardown())
    except Exception:  # pylint: disable=broad-except
      _LOG.warning("%s teardown failed", type(self).__name__, exc_info=True)
    loop.call_soon_threadsafe(loop.stop)
    self._thread.join(timeout=5)
    self._loop = None

  # -- internals -------------------------------------------------------------
  def _emit_ready(self) -> Iterator[Any]:
    while True:
      try:
        entry = self._done.get_nowait()
      except queue.Empty:
        return
      yield from self._emit(entry)

  def _emit(self, entry) -> Iterable[Any]:
    future, element, timestamp, window = entry
    self._in_flight -= 1
    accounting.flush_deferred()
    exc = future.exception()
    if exc is None:
      outputs = future.result()
    elif isinstance(exc, StopRun):
      raise exc
    else:
      outputs = self.on_unexpected(element, exc)
    for output in outputs or ():
      yield wrap_output(output, timestamp, window)
