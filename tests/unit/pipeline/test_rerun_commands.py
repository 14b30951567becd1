"""The commands pipeline.report prints: the replay of dead letters, the re-run of an unfinished run."""

import shlex

from pipeline import rerun_commands, run_outputs
from tests.support.run_dirs import dead_letter


def test_replay_command_drops_the_run_own_flags():
  argv = ["prog.py", "--relays", "ws://127.0.0.1:1", "--rows", "rows.ndjson", "--mode=replay",
          "--replay-from", "x.ndjson", "--run-id", "r", "--events-file", "a.ndjson",
          "--force-republish", "--output-dir", "/o", "--event-kind", "both"]
  assert rerun_commands.strip_flags(argv) == ["--relays", "ws://127.0.0.1:1",
                                              "--force-republish", "--output-dir", "/o",
                                              "--event-kind", "both"]
  run = run_outputs.RunOutputs(run_dir="/o/r", summary={"argv": argv},
                               dead=[dead_letter("v1"), dead_letter("v2", stage="read_events",
                                                                    error_class="bad_input")])
  cmd = rerun_commands.replay_command(run, error_class="transient_exhausted")
  assert cmd["from_run_flags"] and cmd["replayable"] == 1
  assert shlex.split(cmd["command"]) == cmd["argv"]
  assert cmd["argv"][:9] == ["python", "-m", "pipeline.main", "--mode", "replay",
                             "--replay-from", "/o/r/dead_letters.ndjson", "--replay-filter",
                             "error_class=transient_exhausted"]
  assert any("CF_STREAM_MIGRATION_API" in n for n in cmd["notes"])  # not in argv: from env
  without = rerun_commands.replay_command(run_outputs.RunOutputs(run_dir="/o/r", summary={
      "event_kind": "34236"}, dead=[dead_letter("v1")]), stage="migrate")
  assert not without["from_run_flags"]
  assert "--relays '<RELAY_URLS>'" in without["command"]
  assert "--event-kind 34236" in without["command"]
  assert "--replay-filter stage=migrate" in without["command"]
  assert any("no argv" in n for n in without["notes"])


def test_unfinished_run_gets_the_same_command_without_its_run_id():
  saw = {"run": {"argv": ["--relays", "ws://127.0.0.1:1", "--run-id", "r", "--test"],
                 "started_at": "t0"}, "end": None, "published": {"v1": {}},
         "not_published": {}, "in_doubt": ["v2"], "dead_letters": [], "skipped": [{}],
         "last": "t9"}
  info = rerun_commands.unfinished(run_outputs.RunOutputs(run_dir="/o/r", journal=saw))
  assert info["status"] == "unfinished" and info["reason"] is None
  assert (info["published"], info["in_doubt"], info["skipped"]) == (1, ["v2"], 1)
  assert shlex.split(info["rerun"]) == ["python", "-m", "pipeline.main", "--relays",
                                        "ws://127.0.0.1:1", "--test"]
  stopped = run_outputs.RunOutputs(run_dir="/o/r", summary={"status": "stopped",
                                                           "stop_reason": "SIGTERM received"})
  info = rerun_commands.unfinished(stopped)
  assert info["status"] == "stopped" and info["reason"] == "SIGTERM received"
  assert not info["journal"] and info["rerun"] is None
  finished = run_outputs.RunOutputs(run_dir="/o/r", summary={"status": "finished"})
  assert rerun_commands.unfinished(finished) is None
  assert rerun_commands.unfinished(run_outputs.RunOutputs(run_dir="/o/r", summary={})) is None
