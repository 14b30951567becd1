"""The real graph, translated for Dataflow offline: DataflowRunner with --dry_run=True.

With dry_run, DataflowRunner.run_pipeline applies its overrides, builds the portable
pipeline proto and the Job, and returns before it creates a Dataflow API client: no
credentials, no staging, no network. The job file is then written the way
`--template_location` does it (DataflowApplicationClient.create_job with local
staging and template paths, no_auth): template.json and pipeline.pb on disk, again
without network. The tests check both, with google.auth.default and public sockets
booby-trapped and an alarm against hangs.

ReadFromBigQuery (DIRECT_READ) needs no credentials to expand: it only builds a
source object that is pickled into the proto; credentials are first used on the
workers (and by the BEAM_ROW output type, which this pipeline does not use).
"""

import json
import os
import shutil
import sqlite3
import tarfile

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.portability.fn_api_runner import translations

from pipeline.graph import attach_bigquery_sinks, attach_local_sinks, build_graph
from pipeline.options import MigrationOptions
from tests.support.offline import offline_and_bounded
from tests.support.paths import ROOT
from tests.support.secret_scan import unwrap
from transforms.io import bigquery_tables as bqs
from transforms.io.vine_rows import seed_query
from transforms.nostr.event import derive_public_key, generate_private_key, nsec_encode

TEST_SECONDS = 120
TOKEN = "tok-3f9c2a-NEVER-IN-THE-GRAPH"
KEK_ENV = "VINE_MIGRATION_TEST_KEK"
KEK = "kek-77d1e0-NEVER-IN-THE-GRAPH"
PROJECT = "my-proj-123"
DATASET = "vine_archive"
RUN_ID = "20250101T000000Z-abc123"
EXPECTED = ("ReadVineRows", "ReadRelayEvents", "JoinOnVineId", "MigrateVideo",
            "ComputeBlurhash", "VerifyUrls", "BuildVideoEvent", "SignEvent", "PublishEvents",
            "FlattenDeadLetters", "WriteDeadLetters")
STAGE_DOFNS = {"MigrateVideo": "MigrateVideoFn", "ComputeBlurhash": "ComputeBlurhashFn",
               "VerifyUrls": "VerifyUrlsFn",
               "BuildVideoEvent": "BuildVideoEventFn", "SignEvent": "SignEventFn",
               "PublishEvents": "PublishEventsFn", "ReadVineRows/ParseRows": "ParseRowFn"}


@pytest.fixture(autouse=True)
def offline():
  with offline_and_bounded(TEST_SECONDS):
    yield


@pytest.fixture()
def private_key():
  return generate_private_key()


@pytest.fixture()
def env(tmp_path, monkeypatch, private_key):
  """The environment of a production run: BigQuery names, the token, a keys db with one key."""
  monkeypatch.setenv("BIGQUERY_PROJECT_ID", PROJECT)
  monkeypatch.setenv("BIGQUERY_DATASET_ID", DATASET)
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", TOKEN)
  monkeypatch.setenv(KEK_ENV, KEK)  # --kek names it; only DoFn.setup() may read it
  keys_db = str(tmp_path / "keys.db")
  conn = sqlite3.connect(keys_db)
  conn.execute("CREATE TABLE user_migrations (username TEXT PRIMARY KEY, "
               "nostr_public_key TEXT, nostr_private_key TEXT)")
  conn.execute("INSERT INTO user_migrations VALUES (?,?,?)",
               ("someone", derive_public_key(private_key), private_key))
  conn.commit()
  conn.close()
  return {"keys_db": keys_db, "secrets": (TOKEN, KEK, private_key, nsec_encode(private_key))}


def _argv(keys_db, *extra):
  return ["--runner=DataflowRunner", "--project=%s" % PROJECT, "--region=us-central1",
          "--temp_location=gs://bucket/tmp", "--dry_run=True", "--no_save_main_session",
          "--relays=wss://relay.example.com", "--migration-api=https://api.example.com",
          "--keys-db=%s" % keys_db, "--output-dir=gs://bucket/out", "--run-id=%s" % RUN_ID,
          "--kek=env:%s" % KEK_ENV, *extra]


def _build(keys_db, *extra, bigquery_sinks=False):
  """The pipeline as pipeline.main builds it (plus the BigQuery sinks when asked)."""
  options = PipelineOptions(_argv(keys_db, *extra))
  p = beam.Pipeline(options=options)
  outputs = build_graph(p, options.view_as(MigrationOptions), RUN_ID)
  attach_local_sinks(outputs, "gs://bucket/out/%s" % RUN_ID)
  if bigquery_sinks:
    opts = PipelineOptions(_argv(
        keys_db, "--dead-letter-table=%s:vine_migration.dead_letters" % PROJECT,
        "--results-table=%s:vine_migration.results" % PROJECT)).view_as(MigrationOptions)
    attach_bigquery_sinks(outputs, opts, "gs://bucket/out/%s" % RUN_ID)
  return p


def _user_transforms(p):
  """Every applied transform of the graph as built (before the runner's overrides)."""
  found = []

  class Visitor(beam.pipeline.PipelineVisitor):
    def enter_composite_transform(self, node):
      if node.full_label:
        found.append(node)

    def visit_transform(self, node):
      found.append(node)

  p.visit(Visitor())
  return found


def _run_dry(p):
  result = p.run()
  assert result.state == "DONE"
  return result.job


def _write_job_file(job, directory):
  """create_job with local staging and template paths: template.json + pipeline.pb, no network."""
  directory.mkdir(parents=True, exist_ok=True)  # the stager retries a missing dir for minutes
  gco = job.options.view_as(GoogleCloudOptions)
  gco.no_auth = True
  gco.staging_location = str(directory)
  gco.template_location = os.path.join(str(directory), "template.json")
  client = apiclient.DataflowApplicationClient(job.options, str(directory))
  assert client.create_job(job) is None  # a template is written, nothing is submitted
  return directory / "template.json", directory / "pipeline.pb"


def _function_specs(proto):
  """Every FunctionSpec payload in a pipeline proto: transforms, DoFns, coders, windowing."""
  components = proto.components
  for t in components.transforms.values():
    yield t.spec.urn, t.spec.payload
    if t.spec.urn == common_urns.primitives.PAR_DO.urn:
      do_fn = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn
      yield do_fn.urn, do_fn.payload
  for c in components.coders.values():
    yield c.spec.urn, c.spec.payload
  for w in components.windowing_strategies.values():
    yield w.window_fn.urn, w.window_fn.payload


def test_batch_graph_translates_for_dataflow_offline(env, tmp_path):
  p = _build(env["keys_db"])
  nodes = _user_transforms(p)
  labels = [n.full_label for n in nodes]
  assert len(labels) == len(set(labels)), "duplicate step labels"
  assert set(EXPECTED) <= {label.split("/")[0] for label in labels}

  # The BigQuery read: the seed's query over the env's project and dataset, DIRECT_READ.
  (read,) = [n.transform for n in nodes if n.full_label == "ReadVineRows/QueryBigQuery"]
  assert isinstance(read, beam.io.ReadFromBigQuery)
  assert read._kwargs["query"] == seed_query(PROJECT, DATASET)  # pylint: disable=protected-access
  assert read._kwargs["use_standard_sql"] is True  # pylint: disable=protected-access
  assert read.method == beam.io.ReadFromBigQuery.Method.DIRECT_READ

  # Every DoFn pickles and comes back as the same class.
  pardos = [n for n in nodes if isinstance(n.transform, beam.ParDo)]
  assert {type(n.transform.fn).__name__ for n in pardos} >= {
      "MigrateVideoFn", "ComputeBlurhashFn", "BuildVideoEventFn", "SignEventFn",
      "PublishEventsFn", "ParseRowFn"}
  for node in pardos:
    fn = node.transform.fn
    assert type(pickler.loads(pickler.dumps(fn))) is type(fn), node.full_label

  job = _run_dry(p)
  proto = job.proto_pipeline
  names = [t.unique_name for t in proto.components.transforms.values()]
  assert len(names) == len(set(names))
  assert set(EXPECTED) | {"ReadVineRows/QueryBigQuery"} <= set(names)
  # Every pickled DoFn in the submitted proto loads back (what the Dataflow workers do).
  pickled = [payload for urn, payload in _function_specs(proto)
             if urn == python_urns.PICKLED_DOFN_INFO]
  assert pickled
  for payload in pickled:
    pickler.loads(payload)
  by_name = {t.unique_name: t for t in proto.components.transforms.values()}
  for label, fn_class in STAGE_DOFNS.items():
    leaves = [t for name, t in by_name.items()
              if (name == label or name.startswith(label + "/")) and not t.subtransforms]
    assert [t.spec.urn for t in leaves] == [common_urns.primitives.PAR_DO.urn], label
    do_fn = beam_runner_api_pb2.ParDoPayload.FromString(leaves[0].spec.payload).do_fn
    assert type(pickler.loads(do_fn.payload)[0]).__name__ == fn_class, label

  template, pipeline_pb = _write_job_file(job, tmp_path / "staging")
  settings = json.loads(template.read_text())
  assert settings["type"] == "JOB_TYPE_BATCH"
  options = settings["environment"]["sdkPipelineOptions"]["options"]
  assert options["project"] == PROJECT and options["region"] == "us-central1"
  assert options["temp_location"].startswith("gs://bucket/tmp/")
  assert options["save_main_session"] is False
  assert options["relays"] == "wss://relay.example.com"
  assert "use_runner_v2" in settings["environment"]["experiments"]
  assert beam_runner_api_pb2.Pipeline.FromString(pipeline_pb.read_bytes()) == proto


def test_step_labels_are_stable(env):
  def labels():
    return sorted(n.full_label for n in _user_transforms(_build(env["keys_db"])))
  assert labels() == labels()


def test_event_kinds_share_the_step_labels_and_translate(env):
  """Switching --event-kind keeps every step label (a streaming job can be --update'd)."""
  def labels(p):
    return sorted(n.full_label for n in _user_transforms(p))
  default = _build(env["keys_db"])
  both = _build(env["keys_db"], "--event-kind=both")
  assert labels(both) == labels(default)
  fns = {n.full_label.split("/ParDo(")[0]: n.transform.fn for n in _user_transforms(both)
         if isinstance(n.transform, beam.ParDo)}
  build = pickler.loads(pickler.dumps(fns["BuildVideoEvent"]))
  assert build._kind == "both"  # pylint: disable=protected-access
  fetch = pickler.loads(pickler.dumps(fns["ReadRelayEvents/FetchEvents"]))
  assert fetch._kinds == [32222, 34236]  # pylint: disable=protected-access
  assert _run_dry(both).proto_pipeline.components.transforms


def test_no_secret_in_the_job(env, tmp_path):
  p = _build(env["keys_db"], bigquery_sinks=True)
  job = _run_dry(p)
  template, pipeline_pb = _write_job_file(job, tmp_path / "staging")
  decoded = [unwrap(payload) for _, payload in _function_specs(job.proto_pipeline)]
  # The decoder works: configuration that is meant to travel is visible in the payloads.
  assert any(b"wss://relay.example.com" in raw for raw in decoded)
  assert any(env["keys_db"].encode() in raw for raw in decoded)
  haystacks = {"pipeline.pb": pipeline_pb.read_bytes(),
               "template.json": template.read_bytes(),
               "job json": job.json().encode(),
               "pickled payloads": b"\n".join(decoded)}
  for staged in (tmp_path / "staging").iterdir():
    haystacks["staged " + staged.name] = staged.read_bytes()
  for secret in env["secrets"]:
    for where, data in haystacks.items():
      assert secret.encode() not in data, "a secret is in the %s" % where


def test_bigquery_sinks_translate_for_dataflow(env):
  job = _run_dry(_build(env["keys_db"], bigquery_sinks=True))
  names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
  assert {"WriteDeadLettersToBigQuery", "WriteResultsToBigQuery",
          "WriteDeadLettersToBigQuery/WriteToBigQuery", "WriteBigQueryFailures"} <= names


def test_bigquery_sinks_translate_for_streaming(env):
  options = PipelineOptions(_argv(env["keys_db"], "--streaming"))
  p = beam.Pipeline(options=options)
  letters = p | "DeadLetters" >> beam.Create([{"run_id": "r"}])
  _ = letters | "WriteDeadLettersToBigQuery" >> bqs.WriteDeadLettersToBigQuery(
      "%s:vine_migration.dead_letters" % PROJECT, streaming=True)
  job = _run_dry(p)
  assert job.proto.type_ == job.proto.type_.JOB_TYPE_STREAMING


STREAMING_STAGES = ("ReadStreamEvents", "LookupVineRows", "MigrateVideo", "ComputeBlurhash",
                    "BuildVideoEvent", "SignEvent", "PublishEvents", "WriteDeadLettersToBigQuery")


def _streaming_job(keys_db):
  options = PipelineOptions(_argv(
      keys_db, "--streaming",
      "--dead-letter-table=%s:vine_migration.dead_letters" % PROJECT,
      "--results-table=%s:vine_migration.results" % PROJECT))
  p = beam.Pipeline(options=options)
  opts = options.view_as(MigrationOptions)
  outputs = build_graph(p, opts, RUN_ID)
  attach_bigquery_sinks(outputs, opts, "gs://bucket/out/%s" % RUN_ID, streaming=True)
  return p


def test_streaming_graph_translates_for_dataflow(env, tmp_path):
  p = _streaming_job(env["keys_db"])
  labels = [n.full_label for n in _user_transforms(p)]
  assert len(labels) == len(set(labels)), "duplicate step labels"
  assert set(STREAMING_STAGES) <= {label.split("/")[0] for label in labels}
  assert "ReadStreamEvents/SubscribeRelayEvents/SubscribeRelays" in labels
  job = _run_dry(p)
  assert job.proto.type_ == job.proto.type_.JOB_TYPE_STREAMING
  for _, payload in _function_specs(job.proto_pipeline):
    raw = unwrap(payload)
    for secret in env["secrets"]:
      assert secret.encode() not in raw
  # Stable labels: a running job can be updated with --update.
  assert labels == [n.full_label for n in _user_transforms(_streaming_job(env["keys_db"]))]


def test_replay_graph_translates_for_dataflow(env):
  options = PipelineOptions(_argv(
      env["keys_db"], "--mode=replay",
      "--replay-from=bq:%s:vine_migration.dead_letters" % PROJECT,
      "--replay-filter=stage=migrate|publish,error_class=transient_exhausted"))
  p = beam.Pipeline(options=options)
  outputs = build_graph(p, options.view_as(MigrationOptions), RUN_ID)
  attach_local_sinks(outputs, "gs://bucket/out/%s" % RUN_ID)
  labels = {n.full_label for n in _user_transforms(p)}
  assert {"ReadDeadLetters/ReadDeadLetterTable", "ToReplayItems", "JoinWithRelayState",
          "RefreshFromRelays", "EnterAtBlurhash", "EnterAtBuild", "EnterAtPublish",
          "MigrateVideo", "PublishEvents", "LinkReplayedDeadLetters"} <= labels
  (read,) = [n.transform for n in _user_transforms(p)
             if n.full_label == "ReadDeadLetters/ReadDeadLetterTable"]
  assert isinstance(read, beam.io.ReadFromBigQuery)
  job = _run_dry(p)
  assert job.proto.type_ == job.proto.type_.JOB_TYPE_BATCH


def test_setup_file_package_builds_and_stages_offline(env, tmp_path):
  """--setup_file: the sdist is built locally (no PyPI), holds the packages and no tests."""
  repo = ROOT
  source = tmp_path / "src"  # a copy: building writes *.egg-info next to setup.py
  source.mkdir()
  shutil.copy(os.path.join(repo, "setup.py"), source / "setup.py")
  for package in ("pipeline", "transforms", "devstack"):
    shutil.copytree(os.path.join(repo, package), source / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  job = _run_dry(_build(env["keys_db"], "--setup_file=%s" % (source / "setup.py")))
  _write_job_file(job, tmp_path / "staging")
  with tarfile.open(tmp_path / "staging" / "workflow.tar.gz") as tar:
    members = [m.split("/", 1)[1] for m in tar.getnames() if "/" in m]
  for module in ("pipeline/graph.py", "transforms/io/bigquery_tables.py", "setup.py"):
    assert module in members
  assert not [m for m in members if m.startswith("tests/")]


def _fused_stages(p):
  """The top-level labels of each fused stage Beam's own fusion optimiser makes of `p`."""
  _, stages = translations.create_and_optimize_stages(
      p.to_runner_api(), translations.standard_optimize_phases(),
      known_runner_urns=frozenset([common_urns.primitives.GROUP_BY_KEY.urn,
                                   common_urns.primitives.IMPULSE.urn]))
  return [{t.unique_name.split("/")[0] for t in stage.transforms} for stage in stages]


def test_side_effects_sit_behind_checkpoints(env):
  """A retried bundle never repeats an earlier side effect: API call, signature, publish."""
  stages = _fused_stages(_build(env["keys_db"]))
  for effect in ("MigrateVideo", "SignEvent", "PublishEvents"):
    (home,) = [stage for stage in stages if effect in stage]
    others = {"MigrateVideo", "SignEvent", "PublishEvents"} - {effect}
    assert not home & others, (effect, home)
  (migrate,) = [stage for stage in stages if "MigrateVideo" in stage]
  assert migrate <= {"MigrateVideo", "CapMigrateCalls", "CheckpointMigrated"}, migrate
  (publish,) = [stage for stage in stages if "PublishEvents" in stage]
  assert not publish & {"ComputeBlurhash", "BuildVideoEvent", "SignEvent"}, publish
