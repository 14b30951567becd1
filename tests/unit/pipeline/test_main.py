"""The driver's pure parts: the workers and runner of a run, and the facts summary.json records."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import main as pipeline_main
from pipeline.options import ConfigError, MigrationOptions
from tests.support.keys import tiny_keys_db
from transforms.clients import secrets as secret_values


def test_workers_and_runner_of_a_run():
  def options(*argv):
    return PipelineOptions(list(argv))

  assert pipeline_main.local_workers(options(), 1) == 1
  assert pipeline_main.local_workers(options("--direct_running_mode=multi_processing",
                                             "--direct_num_workers=3"), 1) == 3
  opts = options("--workers", "2")
  pipeline_main.configure_runner(opts, 2)
  assert pipeline_main.local_workers(opts, 2) == 2
  assert pipeline_main.is_local_runner(options())
  assert pipeline_main.is_local_runner(options("--runner", "FnApiRunner"))
  assert not pipeline_main.is_local_runner(options("--runner", "DataflowRunner"))


def test_run_facts_for_summary_json():
  secret_values.register("s3cr3t-token-value")
  opts = PipelineOptions(["--event-kind", "both"]).view_as(MigrationOptions)
  facts = pipeline_main.run_facts(["--relays", "ws://127.0.0.1:1", "--x", "s3cr3t-token-value"],
                                  opts, 1_700_000_000.0, 1_700_000_010.0, 45,
                                  ["summary.json"])
  assert facts["argv"][:2] == ["--relays", "ws://127.0.0.1:1"]
  assert "s3cr3t-token-value" not in facts["argv"][3]
  assert facts["started_at"] == "2023-11-14T22:13:20.000+00:00"
  assert facts["finished_at"] == "2023-11-14T22:13:30.000+00:00"
  assert facts["seconds"] == 10.0 and facts["events_per_second"] == 4.5
  assert facts["event_kind"] == "both" and facts["output_files"] == ["summary.json"]


def test_secret_versions_are_pinned_before_the_graph_is_built_and_not_in_a_dry_run(
    tmp_path, monkeypatch, capsys):
  keys_db, rows = str(tmp_path / "keys.db"), tmp_path / "rows.ndjson"
  tiny_keys_db(keys_db, 0o600)
  rows.write_text("", encoding="utf-8")
  monkeypatch.setenv(secret_values.TOKEN_ENV_VAR, "tok-" + "x" * 20)
  calls = []

  def refuse(opts):
    calls.append(opts.token_secret)
    raise ConfigError("--token-secret: Secret Manager said no")

  def never(*args, **kwargs):
    raise AssertionError("the graph must not be built")

  monkeypatch.setattr(pipeline_main, "pin_secret_versions", refuse)
  monkeypatch.setattr(pipeline_main, "build_graph", never)
  argv = ["--relays=ws://127.0.0.1:1", "--migration-api=http://127.0.0.1:1",
          "--keys-db=" + keys_db, "--rows=" + str(rows), "--output-dir=" + str(tmp_path / "o"),
          "--token-secret=projects/p/secrets/t/versions/latest", "--no-progress"]
  assert pipeline_main.run(argv) == 2 and calls == ["projects/p/secrets/t/versions/latest"]
  assert "Secret Manager said no" in capsys.readouterr().err
  monkeypatch.setattr(pipeline_main, "build_graph", lambda *a, **k: never())
  with pytest.raises(AssertionError, match="graph"):  # a dry run goes on to the graph, unpinned
    pipeline_main.run(argv + ["--dry_run=True"])
  assert len(calls) == 1
