"""CapInFlight, GroupPool and AsyncDoFn groups: the cap is the number of keys, never two calls
of one vine, and a slot whose group ran dry serves the others."""

import asyncio
import collections
import threading

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.runtime.async_dofn import AsyncDoFn
from transforms.runtime.cap import CapInFlight, GroupPool, shard_of


def test_shards_are_stable_and_in_range():
  shards = [shard_of("vine%d" % i, 7) for i in range(500)]
  assert set(shards) == set(range(7))  # every key used
  assert shards == [shard_of("vine%d" % i, 7) for i in range(500)]  # the same every time
  # Not Python's hash(), which differs per process: a fixed value, in every process and run.
  assert shard_of("5EHMIOOxOnm", 1000) == 664 and shard_of("vine1", 20) == 14
  assert shard_of("", 1) == 0 and shard_of("\udcff", 3) in (0, 1, 2)


class _Item:
  def __init__(self, vine_id, n):
    self.vine_id, self.n = vine_id, n


_state = {"lock": threading.Lock(), "now": 0, "max": 0, "per_vine": collections.Counter(),
          "max_per_vine": 0}


class _Track(AsyncDoFn):
  """Records how many calls run at once, in all and per vine."""

  async def handle(self, item):
    with _state["lock"]:
      _state["now"] += 1
      _state["per_vine"][item.vine_id] += 1
      _state["max"] = max(_state["max"], _state["now"])
      _state["max_per_vine"] = max(_state["max_per_vine"], _state["per_vine"][item.vine_id])
    await asyncio.sleep(0.002 * (item.n % 3))
    with _state["lock"]:
      _state["now"] -= 1
      _state["per_vine"][item.vine_id] -= 1
    return [item.n]


def test_groups_bound_calls_in_flight_and_serialise_each_vine():
  items = [_Item("vine%d" % (i % 12), i) for i in range(120)]  # ten calls per vine
  with TestPipeline() as p:
    out = (p | beam.Create(items) | "Cap" >> CapInFlight(3)
           | beam.ParDo(_Track(max_in_flight=50).takes_groups()))
    assert_that(out, equal_to(list(range(120))))  # nothing lost, nothing twice
  assert _state["max"] <= 3  # 50 slots per DoFn, yet only 3 keys
  assert _state["max_per_vine"] == 1


def _stamped(*vines):
  return iter([(_Item(vine, n), "w%d" % n) for n, vine in enumerate(vines)])


def test_pool_slots_follow_the_groups_and_never_run_one_vine_twice():
  pool = GroupPool()
  pool.add(_stamped("a", "a", "b"))
  pool.add(_stamped("c"))
  assert pool.slots == 2
  started = [pool.take(), pool.take(), pool.take()]
  # Round-robin over the groups; the second "a" waits while the first is in flight.
  assert [item.vine_id for item, _ in started] == ["a", "c", "b"]
  assert pool.take() is None
  pool.done(started[0][0])
  again = pool.take()
  assert again[0].vine_id == "a" and again[1] == "w1"  # its own stamp, after its key freed
  assert pool.take() is None  # every group drained


def test_a_dry_group_leaves_its_slot_to_the_others():
  """One long group and short ones: the long group's items fill the freed slots."""
  pool = GroupPool()
  pool.add(_stamped(*["long%d" % n for n in range(6)]))
  pool.add(_stamped("short"))
  first, second = pool.take(), pool.take()
  assert (first[0].vine_id, second[0].vine_id) == ("long0", "short")
  pool.done(second[0])  # the short group is done
  third = pool.take()
  assert third[0].vine_id == "long1"  # two items of one group in flight: two slots, two groups
  assert pool.slots == 2  # the stage runs at most this many (the pool only orders the work)
