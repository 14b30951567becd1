"""CapInFlight: a job-wide cap on calls in flight, enforced in the data.

A DoFn cannot know how many copies of itself run: Dataflow runs as many bundles as
it likes, on as many workers and harness threads as autoscaling gives it. So the cap
is not divided among guessed copies; it is the number of keys. Each item is keyed
by a stable hash of its vine id modulo the cap and grouped; the stage after the
GroupByKey (an AsyncDoFn or PublishEventsFn in `takes_groups()` mode) pools the groups
its bundle received (`GroupPool`) and runs at most as many calls at once as it received
groups. A group is read by exactly one bundle, so the calls across the job never
exceed the number of keys, `cap`; one worker process can still hold all of them,
because the stage takes every group of its bundle at once. Pooling (rather than one
call per group) keeps the slots busy to the end: hashing spreads vines over keys
unevenly, and a slot whose group ran dry takes the items of another.

The same vine id always lands in the same group, and the pool never runs two items
of one vine at once: never two calls in flight for one vine (the migration service
is not atomic). The GroupByKey is also a checkpoint: Dataflow persists its input, so a
retried bundle after it never re-runs the steps before it.

One excess remains: a bundle that fails leaves its calls running until they answer (at
most --api-timeout per attempt), and its retry may start new ones meanwhile.

Streaming: a group fires as soon as it holds an item (Repeatedly(AfterCount(1)); a
pane holds whatever arrived for the key meanwhile). Dataflow's streaming engine
processes the work of one key on one worker at a time, so the bound holds there too.
(No processing-time trigger: under TestStream's clock it keeps the local runner
waiting for a time that never comes.)
"""

import collections
import hashlib
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, Optional, Set, Tuple

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue


def shard_of(key: str, shards: int) -> int:
  """A stable shard in [0, shards): the same on every worker and in every run."""
  digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
  return int.from_bytes(digest, "big") % max(1, shards)


def vine_key(item: Any) -> str:
  """The key that must never have two calls in flight: the vine id."""
  return item.vine_id or ""


def _keyed(item: Any, shards: int, key_fn: Callable[[Any], str],
           timestamp=beam.DoFn.TimestampParam):
  # The item's own timestamp travels with it: a group has one timestamp, its items many.
  # As microseconds, or None for a batch read's MIN_TIMESTAMP: an int or None costs the
  # shuffle's coder nothing, a Timestamp object is pickled (as Beam's Reshuffle does).
  return shard_of(key_fn(item), shards), (
      item, None if timestamp == window.MIN_TIMESTAMP else timestamp.micros)


def stamped_items(group: Tuple[int, Iterable], windowed: WindowedValue
                  ) -> Iterator[Tuple[Any, WindowedValue]]:
  """A group's items, lazily, each with a WindowedValue of its own timestamp for its outputs."""
  for item, micros in group[1]:
    timestamp = window.MIN_TIMESTAMP if micros is None else Timestamp(micros=micros)
    yield item, WindowedValue(None, timestamp, windowed.windows, windowed.pane_info)


class CapInFlight(beam.PTransform):
  """items -> (shard, [(item, micros or None)]) groups, `shards` of them at most.

  Read a group with `stamped_items`; see the module docstring for the bound.
  """

  def __init__(self, shards: int, streaming: bool = False,
               key_fn: Callable[[Any], str] = vine_key):
    super().__init__()
    if shards < 1:
      raise ValueError("a cap must be at least 1")
    self._shards = shards
    self._streaming = streaming
    self._key_fn = key_fn

  def expand(self, items):
    keyed = items | "KeyByShard" >> beam.Map(_keyed, self._shards, self._key_fn)
    if self._streaming:
      keyed = keyed | "FireAsItemsCome" >> beam.WindowInto(
          window.GlobalWindows(),
          trigger=trigger.Repeatedly(trigger.AfterCount(1)),
          accumulation_mode=trigger.AccumulationMode.DISCARDING,
          timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST)
    groups = keyed | "GroupByShard" >> beam.GroupByKey()
    if self._streaming:  # the default trigger again: the outputs are flattened with others
      groups = groups | "DefaultTrigger" >> beam.WindowInto(window.GlobalWindows())
    return groups


_END = object()


class GroupPool:
  """The groups one bundle received, as one pool of work (the bundle thread's only).

  `slots` (groups received) bounds the calls the stage may run at once; `take` gives
  the next item whose key is not in flight, round-robin over the groups, reading their
  lazy iterables only when an item is needed; `done` frees an item's key.
  """

  def __init__(self, key_fn: Callable[[Any], str] = vine_key):
    self._key_fn = key_fn
    self._groups: Deque[Iterator[Tuple[Any, WindowedValue]]] = collections.deque()
    self._held: Dict[str, Deque[Tuple[Any, WindowedValue]]] = {}  # waiting for their key
    self._busy: Set[str] = set()
    self.slots = 0

  def add(self, items: Iterator[Tuple[Any, WindowedValue]]) -> None:
    self._groups.append(items)
    self.slots += 1

  def take(self) -> Optional[Tuple[Any, WindowedValue]]:
    """The next (item, windowed) to start, its key marked busy; None when none can start."""
    for key in list(self._held):
      if key not in self._busy:
        waiting = self._held[key]
        following = waiting.popleft()
        if not waiting:
          del self._held[key]
        self._busy.add(key)
        return following
    while self._groups:
      following = next(self._groups[0], _END)
      if following is _END:
        self._groups.popleft()
        continue
      self._groups.rotate(-1)
      key = self._key_fn(following[0])
      if key in self._busy:  # the same vine again: after the call in flight
        self._held.setdefault(key, collections.deque()).append(following)
        continue
      self._busy.add(key)
      return following
    return None

  def done(self, item: Any) -> None:
    self._busy.discard(self._key_fn(item))
