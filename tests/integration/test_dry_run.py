"""`--dry_run=True` through pipeline.main.run: exit 0, the plan on stdout, nothing run or written.

The real graph is built and DataflowRunner translates the job offline (see
test_dataflow_translation.py) under the same guard: public sockets and Google
credential lookups fail the test. A recognisable token and secret references are
set, and none of them may appear in what the run prints or logs.
"""

import logging
import os

import pytest

from pipeline import main as pipeline_main
from tests.support.keys import tiny_keys_db
from tests.support.offline import offline_and_bounded
from tests.support.runs import token_in_env

TEST_SECONDS = 120
TOKEN = "tok-dryrun-5e1f0c-MUST-NOT-PRINT"
TOKEN_REF = "dryrun-token-ref-7a2c"
KEK_REF = "dryrun-kek-ref-91bd"
PROJECT = "my-proj-123"
RUN_ID = "20250101T000000Z-dry123"
DEAD_LETTER_TABLE = "%s:vine_migration.dead_letters" % PROJECT
RESULTS_TABLE = "%s:vine_migration.results" % PROJECT
STAGES = ["CapMigrateCalls", "MigrateVideo", "CheckpointMigrated", "ComputeBlurhash",
          "VerifyUrls", "BuildVideoEvent", "SignEvent", "CapPublishes", "PublishEvents"]
GATHER = ["FlattenDeadLetters", "FlattenSkips", "FormatFailedLines", "FlattenMonitorLines"]
LOCAL_SINKS = ["WriteDeadLetters", "WriteSkips", "WriteResults", "WriteMonitorLog"]


@pytest.fixture(autouse=True)
def offline():
  with offline_and_bounded(TEST_SECONDS):
    yield


@pytest.fixture()
def setup(tmp_path, monkeypatch):
  """The environment of a production run, a keys db and an output dir that must stay absent."""
  monkeypatch.setenv("BIGQUERY_PROJECT_ID", PROJECT)
  monkeypatch.setenv("BIGQUERY_DATASET_ID", "vine_archive")
  keys_db = str(tmp_path / "keys.db")
  tiny_keys_db(keys_db, 0o600)
  return {"keys_db": keys_db, "out": tmp_path / "out"}


def _argv(setup, *extra, runner="DataflowRunner"):
  return ["--runner=%s" % runner, "--project=%s" % PROJECT, "--region=us-central1",
          "--temp_location=gs://bucket/tmp", "--dry_run=True", "--no_save_main_session",
          "--relays=wss://relay.example.com,wss://relay2.example.com",
          "--migration-api=https://api.example.com", "--keys-db=%s" % setup["keys_db"],
          "--output-dir=%s" % setup["out"], "--run-id=%s" % RUN_ID, "--no-progress",
          "--kek=gcp-secret:projects/%s/secrets/%s/versions/1" % (PROJECT, KEK_REF), *extra]


def _dry_run(setup, capsys, caplog, *extra, runner="DataflowRunner"):
  """Runs main.run in-process; returns (exit code, stdout, every line printed or logged)."""
  caplog.set_level(logging.INFO)
  with token_in_env(TOKEN):
    code = pipeline_main.run(_argv(setup, *extra, runner=runner))
  captured = capsys.readouterr()
  return code, captured.out, "\n".join([captured.out, captured.err, caplog.text])


def _field(out, name):
  """The value of the plan's `name: value` line."""
  (value,) = [line.split(": ", 1)[1] for line in out.splitlines()
              if line.strip().startswith(name + ":")]
  return value


def _steps(out):
  (line,) = [line for line in out.splitlines() if line.startswith("steps (")]
  return line.split(": ", 1)[1].split(", ")


def _assert_nothing_leaked_or_written(setup, everything):
  for secret in (TOKEN, TOKEN_REF, KEK_REF):
    assert secret not in everything
  assert not os.path.exists(setup["out"]), "a dry run wrote under the output dir"


def test_batch_dry_run_prints_the_plan(setup, capsys, caplog):
  code, out, everything = _dry_run(setup, capsys, caplog, "--job_name=vine-dry-batch",
                                   "--api-limit=30", "--min-relays=1")
  assert code == 0
  assert _field(out, "runner") == "DataflowRunner"
  assert _field(out, "job name") == "vine-dry-batch"
  assert _field(out, "project") == PROJECT and _field(out, "region") == "us-central1"
  assert _field(out, "mode") == "batch" and _field(out, "event kind") == "32222"
  assert _steps(out) == (["ReadRelayEvents", "ReadVineRows", "JoinOnVineId"] + STAGES + GATHER
                         + LOCAL_SINKS)
  assert _field(out, "relays").startswith("2 (relay.example.com, relay2.example.com)")
  assert _field(out, "migration API host") == "api.example.com"
  assert _field(out, "--api-limit") == "30 migrate calls in flight, job-wide (30 keys)"
  assert _field(out, "--min-relays") == "1"
  assert _field(out, "keys db") == setup["keys_db"]
  assert _field(out, "--kek") == "set (gcp-secret)"
  assert _field(out, "migration API token") == "env CF_STREAM_MIGRATION_TOKEN (set)"
  assert _field(out, "rows") == "BigQuery %s.vine_archive (the seed's query)" % PROJECT
  assert _field(out, "dead-letter table") == "none"
  assert _field(out, "%s/%s/" % (setup["out"], RUN_ID)).startswith("dead_letters.ndjson")
  _assert_nothing_leaked_or_written(setup, everything)


def test_streaming_dry_run_prints_the_plan(setup, capsys, caplog):
  code, out, everything = _dry_run(
      setup, capsys, caplog, "--streaming", "--dead-letter-table=%s" % DEAD_LETTER_TABLE,
      "--results-table=%s" % RESULTS_TABLE, "--event-kind=both",
      "--token-secret=gcp-secret:projects/%s/secrets/%s/versions/3" % (PROJECT, TOKEN_REF))
  assert code == 0
  assert _field(out, "mode") == "streaming" and _field(out, "event kind") == "both"
  assert _field(out, "job name").startswith("beamapp-")  # the name DataflowRunner gave the job
  assert _steps(out) == (["ReadStreamEvents", "LookupVineRows"] + STAGES + GATHER
                         + ["WriteDeadLettersToBigQuery", "WriteResultsToBigQuery"])
  assert _field(out, "migration API token") == "Secret Manager reference set (gcp-secret)"
  assert _field(out, "dead-letter table") == DEAD_LETTER_TABLE
  assert _field(out, "results table") == RESULTS_TABLE
  assert _field(out, "dead letters") == "BigQuery %s" % DEAD_LETTER_TABLE
  assert "no run files" in out and "streaming job started" not in out
  _assert_nothing_leaked_or_written(setup, everything)


def test_replay_dry_run_prints_the_plan(setup, capsys, caplog):
  code, out, everything = _dry_run(
      setup, capsys, caplog, "--mode=replay", "--replay-from=bq:%s" % DEAD_LETTER_TABLE,
      "--replay-filter=stage=migrate|publish", "--results-table=%s" % RESULTS_TABLE)
  assert code == 0
  assert _field(out, "mode") == "replay"
  assert _steps(out) == [
      "ReadRelayEvents", "ReadDeadLetters", "ToReplayItems", "JoinWithRelayState",
      "RefreshFromRelays", "CapMigrateCalls", "MigrateVideo", "CheckpointMigrated",
      "EnterAtBlurhash", "ComputeBlurhash", "EnterAtVerify", "VerifyUrls", "EnterAtBuild",
      "BuildVideoEvent", "SignEvent", "EnterAtPublish", "CapPublishes", "PublishEvents"] + GATHER + [
      "LinkReplayedDeadLetters"] + LOCAL_SINKS + [
      "WriteResultsToBigQuery", "FlattenBigQueryFailures", "WriteBigQueryFailures"]
  assert _field(out, "replay from") == "bq:%s" % DEAD_LETTER_TABLE
  assert _field(out, "replay filter") == "stage=migrate|publish"
  assert "bigquery_failed_rows.ndjson" in _field(out, "%s/%s/" % (setup["out"], RUN_ID))
  _assert_nothing_leaked_or_written(setup, everything)


def test_a_local_runner_dry_run_runs_nothing(setup, capsys, caplog, tmp_path):
  """Local runners ignore Beam's --dry_run: the driver must not start them (the relays and
  API are public hosts, so any connection would trip the offline guard)."""
  rows = tmp_path / "rows.ndjson"
  rows.write_text("{}\n")
  code, out, everything = _dry_run(setup, capsys, caplog, "--rows=%s" % rows,
                                   runner="FnApiRunner")
  assert code == 0
  assert _field(out, "runner") == "FnApiRunner" and _field(out, "job name") == "none"
  assert _field(out, "rows") == str(rows)
  assert _steps(out)[:3] == ["ReadRelayEvents", "ReadVineRows", "JoinOnVineId"]
  _assert_nothing_leaked_or_written(setup, everything)
