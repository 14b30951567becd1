"""`python -m pipeline.report`: the pure questions on small synthetic run directories, and
the whole report on a real run of the local stack (its planted failures plus one vine whose
migration always fails), including its replay command run back through pipeline.main."""

import collections
import io
import json
import os
import shlex
import time

import pytest

from pipeline import main as pipeline_main
from pipeline import report, run_outputs
from transforms.io import local_files as sinks
from tests.conftest import read_ndjson, run_pipeline

RETRY_FLAGS = ["--retry-base-delay", "0.01", "--api-timeout", "5"]


def _write_run(path, summary=None, dead=(), skipped=(), published=(), monitor=(),
               files=run_outputs.OUTPUT_FILES):
  os.makedirs(path, exist_ok=True)
  contents = {sinks.DEAD_LETTERS_FILE: dead, sinks.SKIPPED_FILE: skipped,
              sinks.PUBLISHED_FILE: published}
  for name, records in contents.items():
    if name in files:
      with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
  if sinks.MONITOR_FILE in files:
    with open(os.path.join(path, sinks.MONITOR_FILE), "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in monitor)
  if summary is not None and sinks.SUMMARY_FILE in files:
    with open(os.path.join(path, sinks.SUMMARY_FILE), "w", encoding="utf-8") as f:
      json.dump(summary, f)
  return str(path)


def _dead(vine_id, stage="migrate", error_class="transient_exhausted", error="", when="t"):
  return {"vine_id": vine_id, "event_id": "e" + vine_id, "stage": stage,
          "error_class": error_class, "error": error, "attempts": 5, "last_failure": when}


def _run_cli(*argv):
  out = io.StringIO()
  code = report.main(list(argv), stream=out)
  return code, out.getvalue()


# ---------------------------------------------------------------------------
# Pure functions, synthetic runs.


def test_normalise_groups_volatile_parts_and_keeps_statuses():
  a = _dead("aaaaaaaaaa1", error="gave up after 5 attempts: HTTP 503: upstream "
            "https://api.example/v1/x?id=aaaaaaaaaa1 at 2026-11-25T14:26:39.966+00:00")
  b = _dead("bbbbbbbbbb2", error="gave up after 5 attempts: HTTP 503: upstream "
            "https://api.example/v1/y?id=bbbbbbbbbb2 at 2026-11-26T01:02:03Z")
  c = _dead("ccccccccccc", error="gave up after 5 attempts: HTTP 429: slow down")
  d = _dead("ddddddddddd", stage="sign", error_class="permanent",
            error="no_signing_key: no key for pubkey " + "ab" * 32)
  e = _dead("eeeeeeeeeee", stage="sign", error_class="permanent",
            error="no_signing_key: no key for pubkey " + "cd" * 32)
  groups = run_outputs.top_errors([a, b, c, d, e, a])
  assert [(g["count"], g["stage"], g["error_class"]) for g in groups] == [
      (3, "migrate", "transient_exhausted"), (2, "sign", "permanent"),
      (1, "migrate", "transient_exhausted")]
  assert groups[0]["message"] == "gave up after 5 attempts: HTTP 503: upstream <url> at <time>"
  assert groups[0]["example_vine_id"] == "aaaaaaaaaa1"
  assert groups[1]["message"] == "no_signing_key: no key for pubkey <id>"
  assert "HTTP 429" in groups[2]["message"]
  assert run_outputs.normalise_error("openvine 1751117785015-6d4fdbf8 took 12.5 s, uid "
                                + "0" * 32) == "openvine <openvine_id> took <n> s, uid <uid>"
  assert len(run_outputs.top_errors([a, b, c, d], limit=1)) == 1


def test_newest_run_and_run_dir_and_missing_files(tmp_path):
  out = tmp_path / "out"
  old = _write_run(out / "20261101T000000Z-aaaaaa", summary={"run_id": "old", "vines_in": 0})
  new = _write_run(out / "20261102T000000Z-bbbbbb", summary=None,
                   dead=[_dead("zzzzzzzzzzz")], published=[{"vine_id": "p"}],
                   skipped=[{"reason": "no_event", "vine_id": "s"}])
  past = time.time() - 3600
  for name in os.listdir(old):
    os.utime(os.path.join(old, name), (past, past))
  assert run_outputs.find_run_dir(str(out)) == new
  assert run_outputs.find_run_dir(str(out), "20261101T000000Z-aaaaaa") == old
  assert run_outputs.find_run_dir(new) == new  # a run dir itself
  with pytest.raises(run_outputs.ReportError, match="no run nope"):
    run_outputs.find_run_dir(str(out), "nope")
  with pytest.raises(run_outputs.ReportError, match="does not exist"):
    run_outputs.find_run_dir(str(tmp_path / "absent"))
  # The newest run crashed: no summary.json. Totals come from the files, said so.
  code, text = _run_cli("--output-dir", str(out), "--plain")
  assert code == 0
  assert "missing: summary.json" in text and "Totals (from files)" in text
  assert "vines in" in text and "unknown (no summary.json)" in text
  tot = run_outputs.totals(run_outputs.load_run(new))
  assert (tot["published"], tot["skipped"], tot["dead_lettered"]) == (
      1, {"no_event": 1}, {"migrate": 1})
  # An empty run directory (stopped before writing anything) is an error, not a traceback.
  os.makedirs(out / "20261103T000000Z-cccccc")
  code, _ = _run_cli("--output-dir", str(out), "--run-id", "20261103T000000Z-cccccc")
  assert code == 1
  code, _ = _run_cli("--output-dir", str(tmp_path / "absent"))
  assert code == 1


def test_run_without_dead_letters_and_unreadable_lines(tmp_path):
  run = _write_run(tmp_path / "r1", summary={"run_id": "r1", "vines_in": 1, "published": 1,
                                             "skipped": {}, "dead_lettered": {},
                                             "balanced": True, "accounted": 1},
                   published=[{"vine_id": "v", "notes": []}])
  with open(os.path.join(run, sinks.SKIPPED_FILE), "w", encoding="utf-8") as f:
    f.write("not json\n")
  code, text = _run_cli("--output-dir", run, "--plain")
  assert code == 0
  assert "no dead letters: nothing to replay" in text
  assert "Top error messages: no dead letters" in text
  assert "1 lines of skipped.ndjson are not JSON" in text
  code, text = _run_cli("--output-dir", run, "--json")
  data = json.loads(text)
  assert data["totals"]["published"] == 1 and data["replay"]["replayable"] == 0


def test_replay_command_drops_the_run_own_flags():
  argv = ["prog.py", "--relays", "ws://127.0.0.1:1", "--rows", "rows.ndjson", "--mode=replay",
          "--replay-from", "x.ndjson", "--run-id", "r", "--events-file", "a.ndjson",
          "--force-republish", "--output-dir", "/o", "--event-kind", "both"]
  assert report.strip_flags(argv) == ["--relays", "ws://127.0.0.1:1", "--force-republish",
                                      "--output-dir", "/o", "--event-kind", "both"]
  run = run_outputs.RunOutputs(run_dir="/o/r", summary={"argv": argv},
                          dead=[_dead("v1"), _dead("v2", stage="read_events",
                                                   error_class="bad_input")])
  cmd = report.replay_command(run, error_class="transient_exhausted")
  assert cmd["from_run_flags"] and cmd["replayable"] == 1
  assert shlex.split(cmd["command"]) == cmd["argv"]
  assert cmd["argv"][:9] == ["python", "-m", "pipeline.main", "--mode", "replay",
                             "--replay-from", "/o/r/dead_letters.ndjson", "--replay-filter",
                             "error_class=transient_exhausted"]
  assert any("CF_STREAM_MIGRATION_API" in n for n in cmd["notes"])  # not in argv: from env
  without = report.replay_command(run_outputs.RunOutputs(run_dir="/o/r", summary={
      "event_kind": "34236"}, dead=[_dead("v1")]), stage="migrate")
  assert not without["from_run_flags"]
  assert "--relays '<RELAY_URLS>'" in without["command"]
  assert "--event-kind 34236" in without["command"]
  assert "--replay-filter stage=migrate" in without["command"]
  assert any("no argv" in n for n in without["notes"])


# ---------------------------------------------------------------------------
# A real run on the local stack.


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

  code, text = _run_cli("--output-dir", real_run["out"], "--vine-id", failing)
  assert code == 0 and "dead lettered" in text and "transient_exhausted" in text
  code, text = _run_cli("--output-dir", real_run["out"], "--recent", "2", "--plain")
  assert "Most recent failures: 2" in text


@pytest.mark.integration
def test_printed_replay_command_runs_and_publishes_the_failed_vine(real_run, stack, monkeypatch):
  code, text = _run_cli("--output-dir", real_run["out"], "--class", "transient_exhausted")
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
