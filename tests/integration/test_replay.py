"""Replay of dead letters: transient failures exhaust their retries, the faults are
switched off, and a replay from the local dead-letter file publishes them all; replaying
again neither migrates nor publishes twice."""

import os

import pytest

from devstack.stack import LocalStack
from tests.support.runs import read_ndjson, run_pipeline
from transforms.stages import replay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clean_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("replay")), n_vines=20, seed=5,
                  plant_failures=False) as s:
    yield s


def _balanced(summary):
  assert summary["balanced"], summary
  return summary


def test_replay_publishes_what_failed_and_replaying_twice_is_idempotent(clean_stack, tmp_path):
  stack = clean_stack
  vine_ids = [r["vineId"] for r in read_ndjson(stack.path("rows.ndjson"))][:3]
  stack.emulator.configure(always_fail_vine_ids=vine_ids)
  code, run1, summary1 = run_pipeline(stack, tmp_path / "run1")
  _balanced(summary1)
  assert code == 0
  dead = read_ndjson(os.path.join(run1, "dead_letters.ndjson"))
  assert sorted(d["vine_id"] for d in dead) == sorted(vine_ids)
  assert {(d["stage"], d["error_class"], d["attempts"]) for d in dead} == {
      ("migrate", "transient_exhausted", 5)}
  dead_file = os.path.join(run1, "dead_letters.ndjson")

  # One vine still fails: its new dead letter points at the old one.
  stack.emulator.configure(always_fail_vine_ids=vine_ids[:1])
  stack.emulator.reset_stats()
  code, run2, summary2 = run_pipeline(stack, tmp_path / "run2",
                                      ["--mode", "replay", "--replay-from", dead_file])
  _balanced(summary2)
  assert summary2["vines_in"] == 3 and summary2["published"] == 2
  dead2 = read_ndjson(os.path.join(run2, "dead_letters.ndjson"))
  assert len(dead2) == 1 and dead2[0]["vine_id"] == vine_ids[0]
  old = [d for d in dead if d["vine_id"] == vine_ids[0]][0]
  assert dead2[0]["replay_of"] == replay.replay_pointer(old)
  published2 = read_ndjson(os.path.join(run2, "published.ndjson"))
  assert all(any(n.startswith("replay_of=") for n in r["notes"]) for r in published2)

  # Faults off: replaying the first run's dead letters again finishes the last vine
  # and leaves the two already replayed untouched (no migration, no publish).
  stack.emulator.configure(always_fail_vine_ids=[])
  stack.emulator.reset_stats()
  code, run3, summary3 = run_pipeline(stack, tmp_path / "run3",
                                      ["--mode", "replay", "--replay-from", dead_file])
  _balanced(summary3)
  assert summary3["published"] == 1 and summary3["skipped"] == {"up_to_date": 2}
  assert stack.emulator.stats()["migrate_calls"] == {vine_ids[0]: 1}

  # And once more: nothing at all to do.
  stack.emulator.reset_stats()
  code, run4, summary4 = run_pipeline(stack, tmp_path / "run4",
                                      ["--mode", "replay", "--replay-from", dead_file])
  _balanced(summary4)
  assert summary4["published"] == 0 and summary4["skipped"] == {"up_to_date": 3}
  assert stack.emulator.stats()["migrate_calls_total"] == 0
  events = stack.relay_events()
  assert len(events) == len({(e["pubkey"], e["tags"][0][1]) for e in events})
