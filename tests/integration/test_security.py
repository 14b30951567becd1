"""Issue 4, proved on whole runs: keys stay put and no secret reaches any output.

1. Full runs of `python -m pipeline.main` in a subprocess (DEBUG logging) on a local
   stack whose relay requires NIP-42 for writes, with a keys database encrypted by
   `python -m pipeline.keys encrypt` and read through `--kek env:...`, a known
   token, the sample data's planted failures plus API faults, an always-failing
   vine and an undecodable thumbnail; then a second run with a wrong token. Every
   byte the runs produced (stdout, stderr, every output file, the relay's events)
   is scanned with tests/support/secret_scan.py.
2. The local job graph: the runner API proto and every DoFn pickled with Beam's
   pickler, decoded, scanned.

The rest of issue 4 is unit tests next to the modules they test: only configured hosts
(tests/unit/stages/test_blurhash.py, tests/unit/clients/test_migration_api_hardening.py,
tests/unit/pipeline/test_options.py), sanitising (test_migration_api_hardening.py,
tests/unit/stages/test_migrate.py), file permissions (tests/unit/keys/test_store.py,
tests/unit/pipeline/test_keys.py) and the token (tests/unit/clients/test_secrets.py).
"""

import base64
import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Dict, List

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from devstack import sampledata
from devstack.emulator_process import EmulatorProcess
from devstack.relay import RelayProcess
from devstack.stack import split_events
from pipeline import keys as keys_cli
from pipeline.graph import attach_local_sinks, build_graph
from pipeline.options import MigrationOptions, validate
from pipeline.run_record import EXIT_STOPPED
from tests.support.paths import ROOT
from tests.support.runs import TOKEN_ENV, read_ndjson
from tests.support.secret_scan import (
  find_leaks,
  kek_forms,
  key_forms,
  read_tree,
  token_forms,
  unwrap,
)
from tests.support.security import KEK, KEK_ENV, TOKEN
from transforms.clients.relay.publisher import RelayPublisher
from transforms.clients.relay.reader import fetch_events
from transforms.nostr.event import Signer, parse_private_key

# Made per test session, like the known values of tests/support/security.py.
WRONG_TOKEN = "wrong-" + os.urandom(16).hex()
N_VINES = 40
SEED = 404


def _private_keys(db_path: str) -> Dict[str, str]:
  """pubkey -> private key hex of every row of a plaintext keys database."""
  with contextlib.closing(sqlite3.connect(db_path)) as conn:
    rows = conn.execute("SELECT nostr_public_key, nostr_private_key FROM user_migrations")
    return {pub: parse_private_key(priv) for pub, priv in rows.fetchall()}


def _secrets(private_keys, tokens=(TOKEN,)) -> Dict[str, List[str]]:
  found = {"KEK": kek_forms(KEK)}
  for index, token in enumerate(tokens):
    found["token %d" % index] = token_forms(token)
  for pubkey, priv in private_keys.items():
    found["key of %s" % pubkey[:8]] = key_forms(priv)
  return found


# ---------------------------------------------------------------------------
# 1. Full runs on a local stack with a NIP-42 relay, scanned.


def _run(cmd, env, timeout=240) -> subprocess.CompletedProcess:
  return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True,
                        timeout=timeout, check=False)


# Runs pipeline.main with DEBUG logging from every library (main's own basicConfig
# is then a no-op), so the scan covers the most verbose logs a run can produce.
_DEBUG_MAIN = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, "
               "format='%(levelname)s %(name)s: %(message)s'); "
               "from pipeline.main import main; main()")


def _publish_before_state(relay_url, data_dir, signers):
  """Publishes the sample events to a NIP-42 relay, answering AUTH with each author's key.

  Events a relay refuses (forged, without d, and those of the author whose key is
  not in keys.db, which cannot authenticate) reach the pipeline through the
  archive file, as in devstack.stack.
  """
  archive = os.path.join(data_dir, "archive_events.ndjson")
  valid = sorted(split_events(os.path.join(data_dir, "events.ndjson"), archive),
                 key=lambda e: e["created_at"])
  with RelayPublisher(relay_url, max_in_flight=500, ack_timeout=20.0,
                      auth_signer=signers.get) as publisher:
    for event in valid:
      publisher.submit(event)
    results = publisher.drain(timeout=60)
  refused = {r.event_id: r.message for r in results if not r.accepted}
  with open(archive, "a", encoding="utf-8") as f:
    for event in valid:
      if event["id"] in refused:
        f.write(json.dumps(event, ensure_ascii=False) + "\n")
  return refused


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
  """The stack, the two runs and what they produced."""
  work = tmp_path_factory.mktemp("secured")
  data = str(work / "data")
  manifest = sampledata.generate(data, N_VINES, seed=SEED)
  plain_db = os.path.join(data, "keys.db")
  os.chmod(plain_db, 0o600)
  private_keys = _private_keys(plain_db)
  planted = manifest["planted"]
  planted_vines = {planted["missing_openvine_video"]["vine_id"],
                   planted["row_without_event"]["vine_id"],
                   planted["event_without_row"]["vine_id"]} | set(
                       planted["no_signing_key"]["vine_ids"])
  ordinary = sorted(r["vineId"] for r in read_ndjson(os.path.join(data, "rows.ndjson"))
                    if r["vineId"] not in planted_vines)
  always_fail, bad_thumbnail = ordinary[0], ordinary[1]

  env = dict(os.environ, PYTHONPATH=ROOT, **{KEK_ENV: base64.b64encode(KEK).decode()})
  env.pop(TOKEN_ENV, None)
  enc_db = str(work / "keys.enc.db")
  encrypt = _run([sys.executable, "-m", "pipeline.keys", "encrypt", "--in", plain_db,
                  "--out", enc_db, "--kek", "env:" + KEK_ENV], env)
  assert encrypt.returncode == 0, encrypt.stderr
  assert stat.S_IMODE(os.stat(enc_db).st_mode) == 0o600
  # Deliberately too open: the run must warn about it.
  os.chmod(enc_db, 0o640)
  with open(os.path.join(data, "openvine_ids.txt"), encoding="utf-8") as f:
    held = [line.strip() for line in f if line.strip()]

  out = str(work / "out")
  runs = {}
  with RelayProcess(nip42_write=True) as relay, EmulatorProcess(
      token=TOKEN, openvine_ids=held, seed=5, fault_503=0.1, fault_reset=0.1,
      fault_malformed=0.05, always_fail_vine_ids=[always_fail],
      thumb_garbage_uids=[bad_thumbnail]) as emulator:
    signers = {pub: Signer(priv) for pub, priv in private_keys.items()}
    refused = _publish_before_state(relay.url, data, signers)
    args = ["--relays", relay.url, "--rows", os.path.join(data, "rows.ndjson"),
            "--migration-api", emulator.url, "--cdn-base", emulator.url,
            "--keys-db", enc_db, "--kek", "env:" + KEK_ENV,
            "--events-file", os.path.join(data, "archive_events.ndjson"),
            "--output-dir", out, "--retry-base-delay", "0.01", "--retry-attempts", "10",
            "--api-timeout", "5"]
    # The wrong token's run must call the API: --force-remigrate, as every vine is migrated.
    for name, token, extra in (("right", TOKEN, []),
                               ("wrong", WRONG_TOKEN, ["--force-remigrate"])):
      runs[name] = _run([sys.executable, "-c", _DEBUG_MAIN, *args, "--run-id", name, *extra],
                        dict(env, **{TOKEN_ENV: token}))
    relay_events = list(fetch_events(relay.url, {"kinds": [32222]}))
    stats = emulator.stats()
  return {"work": str(work), "data": data, "out": out, "manifest": manifest,
          "private_keys": private_keys, "encrypt": encrypt, "runs": runs,
          "refused_before": refused, "relay_events": relay_events, "stats": stats,
          "always_fail": always_fail, "bad_thumbnail": bad_thumbnail}


@pytest.mark.integration
def test_nip42_relay_gets_every_vine_signed_and_authenticated_by_its_author(secured):
  run = secured["runs"]["right"]
  assert run.returncode == 0, run.stderr.decode()[-3000:]
  planted = secured["manifest"]["planted"]
  # The relay really requires AUTH: the author without a key could not write before the run.
  assert set(secured["refused_before"].values()) == {"auth-required: no key"}
  assert len(secured["refused_before"]) == len(planted["no_signing_key"]["event_ids"])
  run_dir = os.path.join(secured["out"], "right")
  with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  letters = read_ndjson(os.path.join(run_dir, "dead_letters.ndjson"))
  why = json.dumps({"summary": summary, "dead": [(d["stage"], d["error"][:300]) for d in letters]})
  assert summary["balanced"], why
  # Every vine that can be published was, less the one the API always fails.
  assert summary["published"] == secured["manifest"]["expected_published"] - 1, why
  published = read_ndjson(os.path.join(run_dir, "published.ndjson"))
  on_relay = {e["id"] for e in secured["relay_events"]}
  assert published and all(r["event_id"] in on_relay for r in published)
  by_vine = {r["vine_id"]: r for r in published}
  assert "blurhash_missing" in by_vine[secured["bad_thumbnail"]]["notes"]
  dead = sorted((d["stage"], d["error_class"], d["vine_id"]) for d in letters)
  assert dead == sorted(
      [("migrate", "permanent", planted["missing_openvine_video"]["vine_id"]),
       ("migrate", "transient_exhausted", secured["always_fail"]),
       ("read_events", "bad_input", planted["forged_signature"]["vine_id"])]
      + [("sign", "permanent", v) for v in planted["no_signing_key"]["vine_ids"]])
  # The error paths really ran: injected faults, retries, the always-failing vine.
  faults = secured["stats"]["faults_injected"]
  assert faults.get("reset") and faults.get("503") and faults.get("always_fail") == 10


@pytest.mark.integration
def test_many_authors_pipelined_on_a_nip42_relay():
  signers = [Signer(os.urandom(32).hex()) for _ in range(60)]
  by_pubkey = {s.pubkey: s for s in signers}
  events = [s.sign({"created_at": int(time.time()), "kind": 1, "tags": [], "content": "hi"})
            for s in signers]
  with RelayProcess(nip42_write=True) as relay, RelayPublisher(
      relay.url, max_in_flight=200, ack_timeout=10.0, auth_signer=by_pubkey.get) as publisher:
    for event in events:
      publisher.submit(event)
    results = publisher.drain(timeout=60)
  refused = sorted({r.message for r in results if not r.accepted})
  assert not refused, refused


@pytest.mark.integration
def test_keys_were_encrypted_and_the_loose_mode_was_warned(secured):
  stderr = secured["runs"]["right"].stderr.decode()
  n_keys = len(secured["private_keys"])
  assert "%d usable keys, 0 rows refused (%d encrypted, 0 plaintext)" % (n_keys, n_keys) in stderr
  assert "accessible by group or others (mode 0640); chmod 600 it" in stderr
  assert "keys database is plaintext" not in stderr


@pytest.mark.integration
def test_wrong_token_stops_the_run_with_a_clear_message(secured):
  run = secured["runs"]["wrong"]
  assert run.returncode == EXIT_STOPPED
  assert "migration API refused the token (HTTP 403)" in run.stderr.decode()
  with open(os.path.join(secured["out"], "wrong", "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["status"] == "stopped" and "refused the token" in summary["stop_reason"]


@pytest.mark.integration
def test_no_secret_in_anything_the_runs_produced(secured):
  haystacks = {}
  for name in ("right", "wrong"):
    run = secured["runs"][name]
    haystacks["%s run stdout" % name] = run.stdout
    haystacks["%s run stderr" % name] = run.stderr
  haystacks["encrypt stdout"] = secured["encrypt"].stdout
  haystacks["encrypt stderr"] = secured["encrypt"].stderr
  for path, data in read_tree(secured["out"]).items():
    haystacks["output " + path] = data
  haystacks["relay events"] = json.dumps(secured["relay_events"]).encode()
  # The scan is not vacuous: the outputs exist and carry the planted failures' errors.
  assert {"right/dead_letters.ndjson", "right/published.ndjson", "right/monitor.log",
          "right/skipped.ndjson", "right/summary.json"} <= {
              p[len("output "):] for p in haystacks if p.startswith("output ")}
  assert b"source missing" in haystacks["output right/dead_letters.ndjson"]
  assert b"gave up after 10 attempts" in haystacks["output right/dead_letters.ndjson"]
  assert b"DEBUG" in haystacks["right run stderr"]
  secrets = _secrets(secured["private_keys"], tokens=(TOKEN, WRONG_TOKEN))
  assert len(secrets) == 3 + len(secured["private_keys"])
  assert find_leaks(haystacks, secrets) == []


# ---------------------------------------------------------------------------
# 2. The local job graph.


class _Canary(beam.DoFn):
  """Holds a secret in its constructor: what the graph test must catch."""

  def __init__(self, value):
    super().__init__()
    self.value = value

  def process(self, element):
    yield element


def _graph_haystacks(p: beam.Pipeline) -> Dict[str, bytes]:
  """The runner API proto, its decoded DoFn payloads and every DoFn pickled by Beam."""
  proto = p.to_runner_api()
  found = {"runner api proto": proto.SerializeToString()}
  for transform_id, transform in proto.components.transforms.items():
    if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
      payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
      found["proto DoFn " + transform.unique_name] = unwrap(payload.do_fn.payload)
    elif transform.spec.payload:
      found["proto payload " + transform_id] = unwrap(transform.spec.payload)

  class Visitor(beam.pipeline.PipelineVisitor):
    def visit_transform(self, node):
      fn = getattr(node.transform, "fn", None)
      if isinstance(fn, beam.DoFn):
        found["pickled " + node.full_label] = unwrap(pickler.dumps(fn))

  p.visit(Visitor())
  return found


def test_graph_scanner_catches_a_secret_in_a_dofn():
  p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
  _ = p | beam.Create([1]) | "Leaky" >> beam.ParDo(_Canary(TOKEN))
  haystacks = _graph_haystacks(p)
  leaks = find_leaks(haystacks, {"token": token_forms(TOKEN)})
  assert any(" in proto DoFn Leaky" in leak for leak in leaks)
  assert any(" in pickled Leaky" in leak for leak in leaks)


def test_local_job_graph_holds_no_key_kek_or_token(tmp_path, monkeypatch):
  data = str(tmp_path / "data")
  sampledata.generate(data, 6, seed=SEED)
  plain_db = os.path.join(data, "keys.db")
  private_keys = _private_keys(plain_db)
  enc_db = str(tmp_path / "keys.enc.db")
  monkeypatch.setenv(KEK_ENV, base64.b64encode(KEK).decode())
  monkeypatch.setenv(TOKEN_ENV, TOKEN)
  assert keys_cli.main(["encrypt", "--in", plain_db, "--out", enc_db,
                        "--kek", "env:" + KEK_ENV]) == 0
  options = PipelineOptions([
      "--runner=DirectRunner", "--relays", "ws://127.0.0.1:1",
      "--rows", os.path.join(data, "rows.ndjson"), "--migration-api", "http://127.0.0.1:2",
      "--cdn-base", "http://127.0.0.1:2", "--keys-db", enc_db, "--kek", "env:" + KEK_ENV,
      "--events-file", os.path.join(data, "events.ndjson")])
  opts = options.view_as(MigrationOptions)
  validate(opts)  # loads the KEK from the environment, as a real run does
  p = beam.Pipeline(options=options)
  attach_local_sinks(build_graph(p, opts, "graph-test"), str(tmp_path / "out"))
  haystacks = _graph_haystacks(p)
  haystacks["pipeline options"] = json.dumps(options.get_all_options(), default=str).encode()
  # The decoding works: the configuration that is meant to travel is visible.
  assert any(enc_db.encode() in data for name, data in haystacks.items()
             if name.startswith("pickled") and "SignEvent" in name)
  assert any(("env:" + KEK_ENV).encode() in data for data in haystacks.values())
  assert find_leaks(haystacks, _secrets(private_keys)) == []
