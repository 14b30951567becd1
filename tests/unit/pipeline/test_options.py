"""Command-line validation: bad or missing configuration fails early, naming the flag."""

import sqlite3

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import main as pipeline_main
from pipeline.options import ConfigError, MigrationOptions, parallel_instances, share, validate


@pytest.fixture
def base(tmp_path):
  keys = tmp_path / "keys.db"
  sqlite3.connect(str(keys)).close()
  rows = tmp_path / "rows.ndjson"
  rows.write_text("")
  return ["--relays", "ws://127.0.0.1:7777", "--migration-api", "http://127.0.0.1:8080",
          "--cdn-base", "http://127.0.0.1:8080", "--keys-db", str(keys), "--rows", str(rows)]


ENV = {"CF_STREAM_MIGRATION_TOKEN": "t"}


def _validate(argv, environ=ENV):
  validate(PipelineOptions(argv).view_as(MigrationOptions), environ=environ)


def test_valid_configuration_passes(base):
  _validate(base)


@pytest.mark.parametrize("change,flag", [
    (["--relays", ""], "--relays"),
    (["--relays", "ws://relay.example.com"], "--relays"),
    (["--relays", "http://127.0.0.1:1"], "--relays"),
    (["--migration-api", "ftp://x"], "--migration-api"),
    (["--migration-api", "http://api.example.com"], "--migration-api"),
    (["--cdn-base", "file:///etc"], "--cdn-base"),
    (["--keys-db", "/nonexistent.db"], "--keys-db"),
    (["--rows", "/nonexistent/*.ndjson"], "--rows"),
    (["--api-limit", "0"], "--api-limit"),
    (["--min-relays", "2"], "--min-relays"),
    (["--dead-letter-table", "not a table"], "--dead-letter-table"),
    (["--mode", "replay"], "--replay-from"),
    (["--kek", "env:NOT_SET_ANYWHERE"], "--kek"),
])
def test_bad_configuration_names_the_flag(base, change, flag):
  with pytest.raises(ConfigError, match=flag):
    _validate(base + change)


def test_token_only_from_the_environment(base):
  with pytest.raises(ConfigError, match="CF_STREAM_MIGRATION_TOKEN"):
    _validate(base, environ={})


def test_main_exits_2_on_bad_configuration(base, capsys, monkeypatch):
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", "t")
  assert pipeline_main.run(base + ["--api-limit", "-1"]) == 2
  assert "--api-limit" in capsys.readouterr().err


def test_multi_threading_mode_is_refused(base, capsys, monkeypatch):
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", "t")
  assert pipeline_main.run(base + ["--direct_running_mode=multi_threading"]) == 2
  assert "multi_threading" in capsys.readouterr().err


def test_global_limits_are_divided_among_instances():
  dataflow = PipelineOptions(["--runner=DataflowRunner", "--max_num_workers=10",
                              "--worker_machine_type=n1-standard-4"])
  assert parallel_instances(dataflow) == 40
  assert parallel_instances(PipelineOptions(
      ["--runner=DataflowRunner", "--max_num_workers=10", "--worker_machine_type=n1-standard-4",
       "--experiments=no_use_multiple_sdk_containers"])) == 10
  assert parallel_instances(PipelineOptions(
      ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])) == 2
  assert parallel_instances(PipelineOptions([])) == 1
  assert share(200, 40) == 5 and share(20, 40) == 1 and share(30, 1) == 30
