"""The batch graph through Beam's PortableRunner: the SDK's job service, an external worker pool.

The launcher is this test process (`pipeline.main.run`, as in the other full runs); the
job service and the worker pool are subprocesses with their own working directories and
an environment built from scratch (tests/support/portable.py). Nothing of the launcher's
process state reaches the workers: no module globals, no in-process counter tally, no
launcher-only environment variable, not its working directory. So a DoFn that leans on
any of these, or does not pickle or import on a worker, fails here; and the summary's
counters can only come back over the Job API (`result.metrics()`).
"""

import contextlib
import os
import sqlite3
import time

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_job_api_pb2, beam_runner_api_pb2

from pipeline import main as pipeline_main
from tests.support.offline import offline_and_bounded
from tests.support.portable import PortableServices, recording_prepare
from tests.support.run_checks import assert_balanced, assert_relay_consistent, read_outputs
from tests.support.runs import run_pipeline
from tests.support.secret_scan import find_leaks, key_forms, token_forms, unwrap
from transforms.clients.secrets import TOKEN_ENV_VAR
from transforms.nostr.event import parse_private_key
from transforms.runtime import accounting

pytestmark = pytest.mark.integration

API_LIMIT = 4  # --api-limit of the run; the emulator's max_in_flight is in the result
RUN_BOUND_S = 300  # the whole fixture, services and run, fails past this (no hang)


@pytest.fixture(scope="module")
def portable_run(stack, tmp_path_factory):
  """One run of the batch graph through the PortableRunner; what it produced and sent."""
  work = tmp_path_factory.mktemp("portable")
  launch = work / "launcher"
  launch.mkdir()
  queries = []

  def spying_read_counters(result):
    queries.append(result.metrics().query())
    return read_counters(result)

  read_counters = pipeline_main.read_counters
  stack.emulator.reset_stats()
  accounting.reset_live()
  with contextlib.ExitStack() as cleanup:
    cleanup.enter_context(offline_and_bounded(RUN_BOUND_S))
    services = cleanup.enter_context(
        PortableServices(str(work / "services"), {TOKEN_ENV_VAR: stack.token}))
    patch = cleanup.enter_context(pytest.MonkeyPatch.context())
    sent = cleanup.enter_context(recording_prepare(patch))
    patch.setattr(pipeline_main, "read_counters", spying_read_counters)
    # Relative paths, resolved in the launcher's directory: a worker runs elsewhere.
    patch.chdir(launch)
    data = os.path.relpath(stack.data_dir, launch)
    started = time.monotonic()
    code, run_dir, summary = run_pipeline(stack, "out", services.pipeline_args() + [
        "--no-progress", "--api-limit", str(API_LIMIT),
        "--rows", os.path.join(data, "rows.ndjson"),
        "--keys-db", os.path.join(data, "keys.db"),
        "--events-file", os.path.join(data, "archive_events.ndjson")])
    seconds = time.monotonic() - started
    run_dir = str(launch / run_dir)
    launcher_tally = accounting.live_counts()
    worker_log = services.log("worker_pool")
  return {"code": code, "run_dir": run_dir, "summary": summary, "seconds": seconds,
          "sent": sent, "queries": queries, "launcher_tally": launcher_tally,
          "worker_log": worker_log, "worker_dir": str(work / "services" / "worker_pool"),
          "emulator": stack.emulator.stats()}


def test_run_finishes_and_balances_from_job_api_metrics(portable_run):
  assert_balanced(portable_run["code"], portable_run["summary"])
  counters = portable_run["summary"]["counters"]
  assert counters[accounting.VINES_IN] > 0 and counters[accounting.EVENTS_CHECKED] > 0
  # Every bundle ran in a worker: this process counted nothing itself, so the counts
  # above came over the Job API, and the SDK worker really was started by the pool.
  assert sum(portable_run["launcher_tally"].values()) == 0, portable_run["launcher_tally"]
  assert "Starting worker with command" in portable_run["worker_log"]
  # The local job service reports the counters as committed (what read_counters prefers).
  [query] = portable_run["queries"]
  ours = [c for c in query["counters"] if c.key.metric.namespace == accounting.NAMESPACE]
  assert ours and all(c.committed is not None for c in ours)


def test_published_vines_are_the_corpus_expectation(stack, portable_run):
  summary = portable_run["summary"]
  assert summary["published"] == stack.manifest["expected_published"]
  out = read_outputs(portable_run["run_dir"])
  assert len(out["published"]) == summary["published"]
  planted = stack.manifest["planted"]
  assert sorted((d["stage"], d["event_id"]) for d in out["dead_letters"]) == sorted(
      [("migrate", planted["missing_openvine_video"]["event_id"]),
       ("read_events", planted["forged_signature"]["event_id"])]
      + [("sign", eid) for eid in planted["no_signing_key"]["event_ids"]])
  assert_relay_consistent(stack.relay_urls[0], out["published"])
  # One API call per migrated vine, and the outputs are where the launcher asked for them.
  calls = portable_run["emulator"]["migrate_calls"]
  assert calls and max(calls.values()) == 1
  # The job-wide cap holds in a worker the launcher knows nothing about.
  assert 1 <= portable_run["emulator"]["max_in_flight"] <= API_LIMIT
  assert not os.path.exists(os.path.join(portable_run["worker_dir"], "out"))


def _private_keys(db_path):
  with contextlib.closing(sqlite3.connect(db_path)) as conn:
    rows = conn.execute("SELECT nostr_private_key FROM user_migrations").fetchall()
  return [parse_private_key(priv) for (priv,) in rows]


def test_no_secret_in_what_the_job_service_received(stack, portable_run):
  [raw] = portable_run["sent"]
  request = beam_job_api_pb2.PrepareJobRequest.FromString(raw)
  haystacks = {"PrepareJobRequest": raw}
  components = request.pipeline.components
  for transform in components.transforms.values():
    payload = transform.spec.payload
    if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
      payload = beam_runner_api_pb2.ParDoPayload.FromString(payload).do_fn.payload
    haystacks["payload of " + transform.unique_name] = unwrap(payload)
  for coder_id, coder in components.coders.items():
    haystacks["coder " + coder_id] = unwrap(coder.spec.payload)
  # The decoding works: the configuration meant to travel is visible in what was sent.
  keys_db = os.path.join(stack.data_dir, "keys.db")
  assert any(keys_db.encode() in data for name, data in haystacks.items()
             if "SignEvent" in name)
  assert stack.relay_urls[0] in str(request.pipeline_options)
  secrets = {"token": token_forms(stack.token)}
  for number, priv in enumerate(_private_keys(keys_db)):
    secrets["key %d" % number] = key_forms(priv)
  assert len(secrets) > 2
  assert find_leaks(haystacks, secrets) == []
