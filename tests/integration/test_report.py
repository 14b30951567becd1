"""`python -m pipeline.report` on a real run of the local stack (its planted failures plus one
vine whose migration always fails), including its replay command run back through
pipeline.main."""

import collections
import json
import os
import shlex

import pytest

from pipeline import main as pipeline_main
from pipeline import run_outputs
from tests.support.run_dirs import run_report_cli
from tests.support.runs import read_ndjson, run_pipeline

RETRY_FLAGS = ["--retry-base-delay", "0.01", "--api-timeout", "5"]


@pytest.fixture(scope="module")
def real_run(stack, tmp_path_factory):
  """One run with the planted failures and one always-failing vine; summary has argv."""
  out = tmp_path_factory.mktemp("report_out")
  rows = read_ndjson(stack.path("rows.ndjson"))
  planted = {v.get("vine_id") for v in stack.manifest["planted"].values()}
  planted |= set(stack.manifest["planted"]["no_signing_key"]["vine_ids"])
  failing = next(r["vineId"] for r in rows if r["vineId"] not in planted)
  stack.emulator.configure(always_fail_vine_ids=[failing])
  try:
    code, run_dir, summary = run_pipeline(stack, out)
  finally:
    stack.emulator.configure(always_fail_vine_ids=[])
  assert code == 0 and summary["balanced"], summary
  if "argv" not in summary:  # until main.py records it: the args run_pipeline passed
    summary["argv"] = stack.pipeline_args(
        output_dir=str(out), extra=["--run-id", summary["run_id"]] + RETRY_FLAGS)
    with open(os.path.join(run_dir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f)
  return {"out": str(out), "run_dir": run_dir, "summary": summary, "failing": failing,
          "dead": read_ndjson(os.path.join(run_dir, "dead_letters.ndjson")),
          "published": read_ndjson(os.path.join(run_dir, "published.ndjson"))}


@pytest.mark.integration
def test_totals_and_classes_equal_the_run_outputs(real_run):
  run = run_outputs.load_run(run_outputs.find_run_dir(real_run["out"]))
  assert run.run_dir == real_run["run_dir"] and not run.missing
  tot = run_outputs.totals(run)
  summary = real_run["summary"]
  assert tot["source"] == "summary.json" and tot["balanced"] is True and not tot["checks"]
  for key in ("vines_in", "published", "skipped", "dead_lettered"):
    assert tot[key] == summary[key], key
  classes = collections.Counter(d["error_class"] for d in real_run["dead"])
  assert tot["dead_letter_classes"] == dict(classes)
  assert classes["transient_exhausted"] == 1 and classes["bad_input"] == 1
  assert classes["permanent"] == 2
  migrated = run_outputs.migrated_counts(run)
  assert migrated["published"] == summary["published"]
  assert migrated["monitor_migrated"] == summary["counters"]["videos_migrated"]
  assert migrated["published_newly_migrated"] == sum(
      1 for r in real_run["published"] if r["newly_migrated"])


@pytest.mark.integration
def test_top_errors_class_ids_and_vine_status(real_run, stack):
  run = run_outputs.load_run(real_run["run_dir"])
  failing = real_run["failing"]
  groups = run_outputs.top_errors(run.dead)
  exhausted = [g for g in groups if g["error_class"] == "transient_exhausted"]
  assert len(exhausted) == 1 and exhausted[0]["count"] == 1
  assert exhausted[0]["stage"] == "migrate" and exhausted[0]["example_vine_id"] == failing
  assert exhausted[0]["message"].startswith("gave up after 5 attempts: HTTP 503")
  assert sum(g["count"] for g in groups) == len(real_run["dead"])

  chosen = run_outputs.select_dead(run.dead, error_class="transient_exhausted")
  assert [d["vine_id"] for d in chosen] == [failing]
  assert {d["vine_id"] for d in run_outputs.select_dead(run.dead, stage="sign")} == set(
      stack.manifest["planted"]["no_signing_key"]["vine_ids"])

  planted = stack.manifest["planted"]
  missing = run_outputs.vine_status(run, planted["missing_openvine_video"]["vine_id"])
  assert missing["status"] == "dead_lettered"
  assert (missing["dead_lettered"][0]["stage"], missing["dead_lettered"][0]["error_class"]) == (
      "migrate", "permanent")
  skipped = run_outputs.vine_status(run, planted["row_without_event"]["vine_id"])
  assert skipped["status"] == "skipped" and skipped["skipped"][0]["reason"] == "no_event"
  record = real_run["published"][0]
  published = run_outputs.vine_status(run, record["vine_id"])
  assert published["status"] == "published"
  assert published["published"][0]["event_id"] == record["event_id"]
  assert published["published"][0]["stream_uid"] == record["stream_uid"]
  assert published["published"][0]["relays"] == stack.relay_urls
  assert any(line.startswith("REPUBLISHED,") for line in published["monitor"])
  by_event = run_outputs.vine_status(run, record["event_id"])
  assert by_event["status"] == "published"
  assert run_outputs.vine_status(run, "nosuchvine0")["status"] == "not_found"

  code, text = run_report_cli("--output-dir", real_run["out"], "--vine-id", failing)
  assert code == 0 and "dead lettered" in text and "transient_exhausted" in text
  code, text = run_report_cli("--output-dir", real_run["out"], "--recent", "2", "--plain")
  assert "Most recent failures: 2" in text


@pytest.mark.integration
def test_printed_replay_command_runs_and_publishes_the_failed_vine(real_run, stack, monkeypatch):
  code, text = run_report_cli("--output-dir", real_run["out"], "--class", "transient_exhausted")
  assert code == 0
  assert "\x1b[" not in text  # not a terminal: no colour codes
  lines = [line for line in text.splitlines() if line.startswith("python -m pipeline.main")]
  assert len(lines) == 1, text
  argv = shlex.split(lines[0])
  assert argv[argv.index("--replay-from") + 1] == os.path.join(real_run["run_dir"],
                                                               "dead_letters.ndjson")
  assert argv[argv.index("--replay-filter") + 1] == "error_class=transient_exhausted"
  for dropped in ("--rows", "--events-file", "--run-id"):
    assert dropped not in argv
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", stack.token)
  assert pipeline_main.run(argv[3:]) == 0  # the fault is off now (real_run turned it off)

  replay_dir = run_outputs.find_run_dir(real_run["out"])  # the newest run: the replay
  assert replay_dir != real_run["run_dir"]
  run = run_outputs.load_run(replay_dir)
  tot = run_outputs.totals(run)
  assert (tot["vines_in"], tot["published"], tot["balanced"]) == (1, 1, True)
  status = run_outputs.vine_status(run, real_run["failing"])
  assert status["status"] == "published"
  assert any(n.startswith("replay_of=") for n in status["published"][0]["notes"])
  assert run_outputs.migrated_counts(run)["published_replayed"] == 1
