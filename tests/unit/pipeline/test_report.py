"""`python -m pipeline.report` on small synthetic run directories: a run without dead letters,
unreadable lines, and the replay command it prints."""

import json
import os
import shlex

from pipeline import report, run_outputs
from tests.support.run_dirs import dead_letter, run_report_cli, write_run
from transforms.io import local_files as sinks


def test_run_without_dead_letters_and_unreadable_lines(tmp_path):
  run = write_run(tmp_path / "r1", summary={"run_id": "r1", "vines_in": 1, "published": 1,
                                            "skipped": {}, "dead_lettered": {},
                                            "balanced": True, "accounted": 1},
                  published=[{"vine_id": "v", "notes": []}])
  with open(os.path.join(run, sinks.SKIPPED_FILE), "w", encoding="utf-8") as f:
    f.write("not json\n")
  code, text = run_report_cli("--output-dir", run, "--plain")
  assert code == 0
  assert "no dead letters: nothing to replay" in text
  assert "Top error messages: no dead letters" in text
  assert "1 lines of skipped.ndjson are not JSON" in text
  code, text = run_report_cli("--output-dir", run, "--json")
  data = json.loads(text)
  assert data["totals"]["published"] == 1 and data["replay"]["replayable"] == 0


def test_replay_command_drops_the_run_own_flags():
  argv = ["prog.py", "--relays", "ws://127.0.0.1:1", "--rows", "rows.ndjson", "--mode=replay",
          "--replay-from", "x.ndjson", "--run-id", "r", "--events-file", "a.ndjson",
          "--force-republish", "--output-dir", "/o", "--event-kind", "both"]
  assert report.strip_flags(argv) == ["--relays", "ws://127.0.0.1:1", "--force-republish",
                                      "--output-dir", "/o", "--event-kind", "both"]
  run = run_outputs.RunOutputs(run_dir="/o/r", summary={"argv": argv},
                          dead=[dead_letter("v1"), dead_letter("v2", stage="read_events",
                                                               error_class="bad_input")])
  cmd = report.replay_command(run, error_class="transient_exhausted")
  assert cmd["from_run_flags"] and cmd["replayable"] == 1
  assert shlex.split(cmd["command"]) == cmd["argv"]
  assert cmd["argv"][:9] == ["python", "-m", "pipeline.main", "--mode", "replay",
                             "--replay-from", "/o/r/dead_letters.ndjson", "--replay-filter",
                             "error_class=transient_exhausted"]
  assert any("CF_STREAM_MIGRATION_API" in n for n in cmd["notes"])  # not in argv: from env
  without = report.replay_command(run_outputs.RunOutputs(run_dir="/o/r", summary={
      "event_kind": "34236"}, dead=[dead_letter("v1")]), stage="migrate")
  assert not without["from_run_flags"]
  assert "--relays '<RELAY_URLS>'" in without["command"]
  assert "--event-kind 34236" in without["command"]
  assert "--replay-filter stage=migrate" in without["command"]
  assert any("no argv" in n for n in without["notes"])
