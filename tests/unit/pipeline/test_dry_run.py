"""The dry run's pure parts: detecting it from Beam's option, the step list, the printed plan."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import dry_run

RUN_DIR = "gs://bucket/out/r1"
TOKEN_REF = "tok-ref-4d2e9b"
KEK_NAME = "KEK_NAME_77c1aa"


def _options(*argv):
  return PipelineOptions(["--relays=wss://a.example.com,wss://b.example.com:444",
                          "--migration-api=https://api.example.com/v1",
                          "--keys-db=gs://bucket/keys.enc.db", *argv])


def _fields(text):
  return {k.strip(): v for k, _, v in (line.partition(": ") for line in text.splitlines())}


def test_dry_run_is_beams_option_with_beams_truth_test():
  assert not dry_run.is_dry_run(_options())
  assert dry_run.is_dry_run(_options("--dry_run=True"))
  # Beam declares the flag untyped and tests its truth: "False" is a dry run to Beam too.
  assert dry_run.is_dry_run(_options("--dry_run=False"))


def test_top_level_steps_in_application_order():
  p = beam.Pipeline()
  created = p | "Second" >> beam.Create([1])
  _ = p | "First" >> beam.Create([2])
  _ = created | "Third" >> beam.Map(lambda x: x)  # nested parts are not listed
  assert dry_run.top_level_steps(p.to_runner_api()) == ["Second", "First", "Third"]


def test_batch_plan_names_the_settings_and_the_run_files():
  options = _options("--runner=DataflowRunner", "--project=p1", "--region=europe-west1",
                     "--max_num_workers=5", "--worker_machine_type=n1-standard-4",
                     "--api-limit=30", "--publish-limit=400", "--min-relays=1",
                     "--bigquery-project=meta", "--bigquery-dataset=vines",
                     "--dead-letter-table=p1:vm.dead_letters")
  text = dry_run.plan(options, ["ReadRelayEvents", "ReadVineRows"], "r1", RUN_DIR)
  fields = _fields(text)
  assert fields["runner"] == "DataflowRunner" and fields["job name"] == "none"
  assert fields["project"] == "p1" and fields["region"] == "europe-west1"
  assert fields["mode"] == "batch" and fields["run id"] == "r1"
  assert fields["steps (2)"] == "ReadRelayEvents, ReadVineRows"
  assert fields["relays"] == "2 (a.example.com, b.example.com:444)"
  assert fields["migration API host"] == "api.example.com"
  # 5 workers x 4 SDK processes change nothing: the caps are keys in the data.
  assert fields["--api-limit"] == "30 migrate calls in flight, job-wide (30 keys)"
  assert fields["--publish-limit"] == "400 events in flight per relay, job-wide"
  assert fields["--min-relays"] == "1"
  assert fields["keys db"] == "gs://bucket/keys.enc.db" and fields["--kek"] == "none"
  assert fields["rows"] == "BigQuery meta.vines (the seed's query)"
  assert fields["dead letters"] == "BigQuery p1:vm.dead_letters"
  assert fields[RUN_DIR + "/"].split(", ")[-2:] == ["summary.json",
                                                     "bigquery_failed_rows.ndjson"]


def test_secret_references_are_shown_as_set_only():
  options = _options("--token-secret=gcp-secret:projects/p/secrets/%s/versions/1" % TOKEN_REF,
                     "--kek=env:%s" % KEK_NAME, "--job_name=j1")
  text = dry_run.plan(options, [], "r1", RUN_DIR, job_name="beamapp-x")
  fields = _fields(text)
  assert fields["migration API token"] == "Secret Manager reference set (gcp-secret)"
  assert fields["--kek"] == "set (env)"
  assert fields["job name"] == "beamapp-x"  # the runner's job name wins over --job_name
  assert TOKEN_REF not in text and KEK_NAME not in text
  assert "project" not in fields and "region" not in fields


def test_streaming_and_replay_plans():
  streaming = dry_run.plan(_options("--streaming", "--rows=rows/*.ndjson",
                                    "--results-table=p:d.results"), [], "r1", RUN_DIR)
  fields = _fields(streaming)
  assert fields["mode"] == "streaming" and fields["rows"] == "rows/*.ndjson"
  assert "no run files" in streaming and RUN_DIR not in streaming
  assert fields["results"] == "BigQuery p:d.results"
  replay = dry_run.plan(_options("--mode=replay", "--replay-from=out/r0/dead_letters.ndjson"),
                        [], "r1", "out/r1")
  fields = _fields(replay)
  assert fields["mode"] == "replay" and "rows" not in fields
  assert fields["replay from"] == "out/r0/dead_letters.ndjson"
  assert fields["replay filter"] == "every dead letter"
  assert fields["out/r1/"].startswith("dead_letters.ndjson")
