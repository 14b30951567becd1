"""Many calls in flight inside one DoFn.

The DirectRunner (and each Dataflow worker thread) hands a DoFn one element at a
time, so an I/O-bound stage gets its concurrency from inside: AsyncDoFn runs each
element's coroutine on a background asyncio loop, keeps up to `max_in_flight` of them
running, and emits each result as soon as it completes. There is no batch barrier:
a slow call holds one slot, never the others.

The hand-over between the bundle thread and the loop is built to cost almost
nothing per element, because the bundle thread is the pipeline's critical path and
every system call it makes hands the GIL to another thread (measured: 0.5-1 ms each
to get it back under load; see bench/README.md):

* one loop thread per process, shared by every AsyncDoFn instance (migrate and
  blurhash together), instead of a thread per DoFn competing for the GIL;
* elements go into an inbox deque and the loop is woken (a self-pipe write) only
  when it is not already about to drain the inbox; results come back through a
  deque the bundle thread polls, and the loop signals an Event only when the bundle
  thread is actually waiting (at the in-flight limit, or at the end of the bundle).

Groups (`takes_groups()`): the input is `(key, items)` from a GroupByKey (`CapInFlight`).
The bundle's groups form one pool (`cap.GroupPool`): at most as many items are in
flight as groups were received, never two of one vine, and the next item is read from
the groups' iterables (on the bundle thread, where Beam's lazy iterables must be read)
when a call completes. A global cap is then the number of keys, whatever the runner
does (see `transforms/runtime/cap.py`).

Counters: increments made while an element is handled are kept with the element and
committed with its outputs by the bundle that emits them (`accounting.commit`): the
results of an abandoned bundle, and their counts, are dropped together.

Results are emitted with the window and timestamp of the element that produced them,
so the DoFn also behaves under windowing in streaming.

Logging: every AsyncDoFn logs one INFO line when it is ready (`setup()`) and one when
it is done (`teardown()`), through `transforms.runtime.logs`.
"""

import asyncio
import collections
import logging
import threading
from typing import Any, Iterable, List, Mapping, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from transforms.runtime import accounting
from transforms.runtime.cap import GroupPool, stamped_items
from transforms.runtime.gc_tuning import raise_gc_threshold
from transforms.runtime.logs import log_stage
from transforms.runtime.outcomes import StopRun

_LOG = logging.getLogger(__name__)

# How long stopping the loop waits for its cancelled calls to wind down.
STOP_SECONDS = 5.0


def wrap_output(output: Any, timestamp, window) -> Any:
  """Attaches an input element's window to an output produced later."""
  if isinstance(output, TaggedOutput):
    return TaggedOutput(output.tag, WindowedValue(output.value, timestamp, (window,)))
  return WindowedValue(output, timestamp, (window,))


def wrap_like(output: Any, windowed: WindowedValue) -> Any:
  """An output produced later, with the timestamp, windows and pane of its input.

  DoFns that take `DoFn.WindowedValueParam` instead of `WindowParam` and
  `TimestampParam` keep Beam's cached-argument fast path (a WindowParam makes
  Beam rebuild the arguments of every call) and never have their elements
  exploded per window.
  """
  if isinstance(output, TaggedOutput):
    return TaggedOutput(output.tag, windowed.with_value(output.value))
  return windowed.with_value(output)


class _SharedLoop:
  """The process's one background event loop, started by its first user, stopped by its last."""

  _lock = threading.Lock()
  _loop: Optional[asyncio.AbstractEventLoop] = None
  _thread: Optional[threading.Thread] = None
  _users = 0

  @classmethod
  def acquire(cls) -> asyncio.AbstractEventLoop:
    with cls._lock:
      if cls._loop is None:
        raise_gc_threshold()  # once per process that runs DoFns
        cls._loop = asyncio.new_event_loop()
        cls._thread = threading.Thread(target=cls._loop.run_forever, name="AsyncDoFnLoop",
                                       daemon=True)
        cls._thread.start()
      cls._users += 1
      return cls._loop

  @classmethod
  def release(cls) -> None:
    with cls._lock:
      cls._users -= 1
      if cls._users > 0 or cls._loop is None:
        return
      loop, thread = cls._loop, cls._thread
      cls._loop = cls._thread = None
    _stop_loop(loop, thread)

  @classmethod
  def shutdown(cls, timeout: float) -> None:
    """Stops the loop whoever still uses it (a stopped run: its DoFns are never torn down)."""
    with cls._lock:
      loop, thread = cls._loop, cls._thread
      cls._loop = cls._thread = None
      cls._users = 0
    if loop is not None:
      _stop_loop(loop, thread, timeout)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
               timeout: float = STOP_SECONDS) -> None:
  """Cancels the loop's pending tasks, waits for them at most `timeout` s, stops the loop.

  A task left pending when its loop goes away is logged as an error ("Task was destroyed
  but it is pending!") although nothing failed: a stopped run abandons its calls on purpose.
  """

  async def cancel_pending():
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
      task.cancel()
    if tasks:
      await asyncio.wait(tasks, timeout=timeout)

  try:
    asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(timeout + 1)
  except Exception:  # pylint: disable=broad-except
    _LOG.debug("cancelling the loop's pending calls did not finish", exc_info=True)
  loop.call_soon_threadsafe(loop.stop)
  thread.join(timeout=5)
  if not thread.is_alive():
    loop.close()


def shutdown_shared_loop(timeout: float = STOP_SECONDS) -> None:
  """Abandons every call still in flight on the process's loop, within `timeout` seconds."""
  _SharedLoop.shutdown(timeout)


class AsyncDoFn(beam.DoFn):
  """Base class: subclasses implement `async handle(element) -> list of outputs`.

  Optional hooks: `async async_setup()`, `async async_teardown()`, and
  `on_unexpected(element, exc) -> list of outputs` (a dead letter, normally);
  `ready_details()` and `done_details()` add to the stage's ready and done log lines.
  """

  def __init__(self, max_in_flight: int):
    super().__init__()
    if max_in_flight < 1:
      raise ValueError("max_in_flight must be >= 1")
    self._max_in_flight = max_in_flight
    self._grouped = False

  def takes_groups(self) -> "AsyncDoFn":
    """Consumes `(key, items)` groups: as many in flight as groups received; returns self."""
    self._grouped = True
    return self

  # -- hooks ---------------------------------------------------------------
  async def async_setup(self) -> None:
    pass

  async def async_teardown(self) -> None:
    pass

  async def handle(self, element) -> List[Any]:
    raise NotImplementedError

  def on_unexpected(self, element, exc: BaseException) -> List[Any]:
    raise exc

  @property
  def stage_name(self) -> str:
    """The name in the ready/done lines: the class name without its "Fn" suffix."""
    name = type(self).__name__
    return name[:-2] if name.endswith("Fn") else name

  def _stage_logger(self) -> logging.Logger:
    return logging.getLogger(type(self).__module__)

  def ready_details(self) -> Mapping[str, Any]:
    """Settings for the ready line (after the in-flight limit)."""
    return {}

  def done_details(self) -> Mapping[str, Any]:
    """Counts for the done line (after the elements handled and unexpected errors)."""
    return {}

  # -- Beam lifecycle ---------------------------------------------------------
  def setup(self):
    self._loop = _SharedLoop.acquire()
    self._inbox: "collections.deque" = collections.deque()
    self._done: "collections.deque" = collections.deque()
    self._tasks = set()  # the loop holds tasks weakly: keep them alive here
    self._wake_scheduled = False
    self._waiting = False
    self._ready = threading.Event()
    self._in_flight = 0
    self._bundle = 0
    self._handled = 0
    self._unexpected = 0
    try:
      self.run_sync(self.async_setup())
    except BaseException:
      self._loop = None
      _SharedLoop.release()
      raise
    log_stage(self._stage_logger(), self.stage_name, "ready", max_in_flight=self._max_in_flight,
              **self.ready_details())

  def run_sync(self, coro):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

  def start_bundle(self):
    # A bundle that failed may leave calls running: their results carry the old
    # bundle number and are dropped, never emitted into this bundle.
    self._bundle += 1
    self._in_flight = 0
    self._group_pool = GroupPool() if self._grouped else None

  def process(self, element, windowed=beam.DoFn.WindowedValueParam):
    if self._group_pool is not None:  # one more slot, and the pool's items to fill it
      self._group_pool.add(stamped_items(element, windowed))
      self._fill()
    else:
      while self._in_flight >= self._max_in_flight:
        yield from self._emit(self._next_done())
      self._in_flight += 1
      self._submit(element, windowed)
    while self._done:
      yield from self._emit(self._done.popleft())

  def _fill(self) -> None:
    """Starts pooled items while there are free slots (one per group received)."""
    while self._in_flight < min(self._group_pool.slots, self._max_in_flight):
      following = self._group_pool.take()
      if following is None:
        return
      self._in_flight += 1
      self._submit(*following)

  def _submit(self, element, windowed) -> None:
    self._inbox.append((element, windowed, self._bundle))
    if not self._wake_scheduled:
      self._wake_scheduled = True
      self._loop.call_soon_threadsafe(self._start_inbox)

  def finish_bundle(self):
    while self._in_flight > 0:
      yield from self._emit(self._next_done())

  def teardown(self):
    loop = getattr(self, "_loop", None)
    if loop is None:
      return
    try:
      self.run_sync(self.async_teardown())
    except Exception:  # pylint: disable=broad-except
      _LOG.warning("%s teardown failed", type(self).__name__, exc_info=True)
    self._loop = None
    _SharedLoop.release()
    try:
      details = dict(self.done_details())
    except Exception:  # pylint: disable=broad-except
      details = {}
    log_stage(self._stage_logger(), self.stage_name, "done", elements=self._handled,
              unexpected_errors=self._unexpected, **details)

  # -- the loop's side ---------------------------------------------------------
  def _start_inbox(self) -> None:
    # Cleared before draining: an element appended after this line either finds the
    # flag down (and schedules another drain) or is taken by the loop below.
    self._wake_scheduled = False
    while self._inbox:
      entry = self._inbox.popleft()
      task = self._loop.create_task(self._run(entry))
      self._tasks.add(task)
      task.add_done_callback(self._tasks.discard)

  async def _run(self, entry) -> None:
    counts = accounting.collect_for_element()  # this task's context only
    try:
      result = (entry, await self.handle(entry[0]), None, counts)
    except BaseException as exc:  # pylint: disable=broad-except
      result = (entry, None, exc, counts)
    self._done.append(result)
    if self._waiting:
      self._ready.set()

  # -- the bundle thread's side ------------------------------------------------
  def _next_done(self):
    """The next completed element, waiting for one if none is ready."""
    while not self._done:
      self._ready.clear()
      self._waiting = True
      if not self._done:
        self._ready.wait(1.0)
      self._waiting = False
    return self._done.popleft()

  def _emit(self, done) -> Iterable[Any]:
    (element, windowed, bundle), outputs, exc, counts = done
    if bundle != self._bundle:  # an abandoned bundle's result: neither emitted nor counted
      return
    self._in_flight -= 1
    self._handled += 1
    accounting.commit(counts)
    accounting.flush_deferred()
    if exc is not None:
      if isinstance(exc, StopRun):
        raise exc
      self._unexpected += 1
      outputs = self.on_unexpected(element, exc)
    for output in outputs or ():
      yield wrap_like(output, windowed)
    if self._group_pool is not None:
      self._group_pool.done(element)
      self._fill()

