"""Nothing lost under faults and re-runs: the real pipeline on DirectRunner, real relays.

Four local stacks (relay process(es) + the migration API emulator), each module-scoped:

* API and thumbnail faults: a refused token, a 20 % mix of transient API faults with a
  fixed seed, a vine that always fails, and broken thumbnails (404, not an image,
  truncated, a decompression bomb, a hang), then the same with --require-blurhash.
* Relay faults, two relays, one behind a misbehaving proxy (`FaultyRelayProxy`):
  rate-limited:/error:/invalid:/blocked: answers, a connection dropped mid-publish, the
  relay restarted mid-run, a relay down at start, a relay that never comes up.
* Re-runs: incremental, --force-remigrate, --force-republish, update-existing.
* A crash: `python -m pipeline.main` killed mid-run, then a plain re-run; the relay
  ends as after a clean run.

Every run asserts the conservation check (`summary["balanced"]`).
"""

import collections
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http import HTTPStatus

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from devstack.emulator import keyed_fault, normalize_config
from devstack.relay import RelayProcess, free_port
from devstack.stack import LocalStack
from pipeline import main as pipeline_main
from tests.conftest import read_ndjson, run_pipeline
from tests.support.ws_server import ThreadedServer
from transforms.stages import build
from transforms.media.blurhash import DecoderCrash, IsolatedDecoder, ThumbnailError
from transforms.nostr.event import first_tag_value, validate_event
from transforms.clients.relay.reader import fetch_events

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_ENV = "CF_STREAM_MIGRATION_TOKEN"
# 20 % of migrate calls, every kind of transient fault the API or its CDN produces.
FAULT_RATES = {"fault_500": 0.04, "fault_502": 0.03, "fault_503": 0.03, "fault_429": 0.03,
               "fault_429_no_retry_after": 0.02, "fault_hang": 0.02, "fault_reset": 0.02,
               "fault_malformed": 0.01}
# With the sample data of seed 21 (30 vines) this seed draws every fault kind and no
# vine but the always-failing one gets five in a row (checked by the test itself).
FAULT_SEED = 23
THUMB_FAULTS = ("404", "garbage", "truncated", "bomb", "hang")


# ---------------------------------------------------------------------------
# Helpers.


def _outputs(run_dir):
  out = {}
  for name in ("dead_letters", "skipped", "published"):
    path = os.path.join(run_dir, name + ".ndjson")
    out[name] = read_ndjson(path) if os.path.exists(path) else []
  return out


def _assert_balanced(code, summary):
  assert summary is not None, "the run wrote no summary"
  assert summary["balanced"], summary
  assert summary["vines_in"] == summary["published"] + sum(summary["skipped"].values()) + sum(
      summary["dead_lettered"].values())
  assert code == 0


def _events(url):
  return list(fetch_events(url, {"kinds": [32222]}))


def _d(event):
  return first_tag_value(event["tags"], "d")


def _migrated(event):
  return any(t[:2] == ["migration", "openvine-to-stream"] for t in event["tags"])


def _assert_relay_consistent(url, published=()):
  """One valid version per (pubkey, d), and it is the published one for every published vine."""
  events = _events(url)
  per_address = collections.Counter((e["pubkey"], _d(e)) for e in events)
  assert max(per_address.values()) == 1, "a (pubkey, d) holds several versions"
  assert all(validate_event(e) is None for e in events)
  held = {e["id"] for e in events}
  for record in published:
    if url in record["relays"] or not record["relays"]:
      assert record["event_id"] in held, (url, record["vine_id"])
  return events


def _vine_ids(stack):
  return sorted({_d(e) for e in stack.relay_events()})


def _uid(vine_id):
  return hashlib.md5(vine_id.encode()).hexdigest()  # the emulator's deterministic uid


def _blurhash(event):
  for tag in event["tags"]:
    if tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith("blurhash "):
          return entry[len("blurhash "):]
  return None


def _run_with_token(stack, out_dir, token, extra=()):
  """Runs in-process with the given token; returns (code, stderr text, run dir, seconds)."""
  run_id = "t-" + uuid.uuid4().hex[:8]
  args = stack.pipeline_args(output_dir=str(out_dir), extra=[
      "--run-id", run_id, "--retry-base-delay", "0.01", "--api-timeout", "2"] + list(extra))
  old = os.environ.get(TOKEN_ENV)
  os.environ[TOKEN_ENV] = token
  err = io.StringIO()
  started = time.monotonic()
  try:
    with contextlib.redirect_stderr(err):
      code = pipeline_main.run(args)
  finally:
    if old is None:
      os.environ.pop(TOKEN_ENV, None)
    else:
      os.environ[TOKEN_ENV] = old
  return code, err.getvalue(), os.path.join(str(out_dir), run_id), time.monotonic() - started


# ---------------------------------------------------------------------------
# The isolated thumbnail decoder (unit level: a native crash cannot be injected end to end).


def test_decoder_crash_and_hang_cost_one_image_not_the_worker():
  from devstack.emulator import _make_bomb, _make_thumbnail  # pylint: disable=import-outside-toplevel
  from transforms.media.blurhash import blurhash_for_thumbnail  # pylint: disable=import-outside-toplevel
  good = _make_thumbnail("a" * 32)
  crashing = IsolatedDecoder("tests.support.hostile.crashers:segfault")
  hanging = IsolatedDecoder("tests.support.hostile.crashers:hang", timeout=0.5)
  decoder = IsolatedDecoder()
  try:
    with pytest.raises(DecoderCrash, match="died"):
      crashing(b"x")
    with pytest.raises(DecoderCrash, match="died"):
      crashing(b"x")  # a fresh child each time
    assert crashing.crashes == 2
    with pytest.raises(DecoderCrash, match="no answer within 0.5 s"):
      hanging(b"x")
    assert decoder(good) == blurhash_for_thumbnail(good)
    for bad, why in ((b"<html>", "not a recognised image"), (good[:len(good) // 2], "truncated"),
                     (_make_bomb(), "decompression-bomb")):
      with pytest.raises(ThumbnailError, match=why):
        decoder(bad)
    assert decoder(good) == blurhash_for_thumbnail(good) and decoder.crashes == 0
  finally:
    for d in (crashing, hanging, decoder):
      d.close()


# ---------------------------------------------------------------------------
# A. Migration API and thumbnail faults.


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory):
  knobs = dict(FAULT_RATES, seed=FAULT_SEED, fault_keyed=True, retry_after=1, hang_seconds=12)
  with LocalStack(str(tmp_path_factory.mktemp("api")), n_vines=30, seed=21, plant_failures=False,
                  emulator_knobs=knobs) as stack:
    yield stack


@pytest.fixture(scope="module")
def wrong_token_run(api_stack, tmp_path_factory):
  before = sorted(e["id"] for e in api_stack.relay_events())
  api_stack.emulator.reset_stats()
  code, err, run_dir, seconds = _run_with_token(api_stack, tmp_path_factory.mktemp("out"),
                                                "not-" + api_stack.token)
  after = sorted(e["id"] for e in api_stack.relay_events())
  return code, err, run_dir, seconds, before, after, api_stack.emulator.stats()


def test_refused_token_stops_the_run_at_once_naming_the_token(wrong_token_run):
  code, err, run_dir, seconds, before, after, stats = wrong_token_run
  assert code == 1
  assert "run stopped" in err and TOKEN_ENV in err and "HTTP 403" in err
  # No dead-letter flood and nothing published: the run wrote no outputs at all.
  assert _outputs(run_dir) == {"dead_letters": [], "skipped": [], "published": []}
  assert not os.path.exists(os.path.join(run_dir, "summary.json"))
  assert after == before
  # At most one window of --api-limit (20) calls was in flight when the first 403 came back.
  assert 1 <= stats["auth_refused"]["403"] <= 20
  assert stats["migrate_calls_total"] == 0 and seconds < 30


@pytest.fixture(scope="module")
def fault_run(api_stack, wrong_token_run, tmp_path_factory):
  vids = _vine_ids(api_stack)
  always_fail = vids[0]
  thumb = dict(zip(THUMB_FAULTS, vids[1:1 + len(THUMB_FAULTS)]))
  api_stack.emulator.reset_stats()
  api_stack.emulator.configure(always_fail_vine_ids=[always_fail],
                               **{"thumb_%s_uids" % k: [_uid(v)] for k, v in thumb.items()})
  config = normalize_config(dict(FAULT_RATES, seed=FAULT_SEED, always_fail_vine_ids=[always_fail]))
  predicted, kinds = {}, collections.Counter()
  for vid in vids:
    for call in range(1, 6):
      fault = keyed_fault(config, vid, call)
      if fault is None:
        break
      kinds[fault] += 1
    predicted[vid] = call
  code, run_dir, summary = run_pipeline(api_stack, tmp_path_factory.mktemp("out"),
                                        ["--api-timeout", "1.5"])
  return {"code": code, "run_dir": run_dir, "summary": summary, "vids": vids,
          "always_fail": always_fail, "thumb": thumb, "predicted": predicted, "kinds": kinds,
          "stats": api_stack.emulator.stats(), "out": _outputs(run_dir)}


def test_transient_api_faults_are_absorbed_by_retries(fault_run):
  _assert_balanced(fault_run["code"], fault_run["summary"])
  kinds = fault_run["kinds"]
  # The scenario: every fault kind happened, 20 % combined, at a fixed seed.
  assert set(kinds) == {k[len("fault_"):] for k in FAULT_RATES} | {"always_fail"}
  stats = fault_run["stats"]
  api_faults = {k: n for k, n in stats["faults_injected"].items() if not k.startswith("thumb_")}
  assert api_faults == dict(kinds)
  # Each vine was called until its first clean answer, as the seed's draws predict.
  assert stats["migrate_calls"] == fault_run["predicted"]
  counters = fault_run["summary"]["counters"]
  assert counters["migrate_calls"] == sum(fault_run["predicted"].values())
  assert counters["cumulativeThrottlingSeconds"] >= kinds["429"]  # Retry-After: 1 honoured
  published = {r["vine_id"] for r in fault_run["out"]["published"]}
  assert published == set(fault_run["vids"]) - {fault_run["always_fail"]}
  assert fault_run["summary"]["published"] == len(fault_run["vids"]) - 1


def test_vine_failing_every_attempt_is_dead_lettered_transient_exhausted(fault_run):
  dead = fault_run["out"]["dead_letters"]
  assert [(d["stage"], d["vine_id"], d["error_class"], d["attempts"]) for d in dead] == [
      ("migrate", fault_run["always_fail"], "transient_exhausted", 5)]
  assert "gave up after 5 attempts: HTTP 503" in dead[0]["error"]
  assert dead[0]["first_failure"] < dead[0]["last_failure"]
  payload = json.loads(dead[0]["payload"])
  assert payload["event"]["id"] == dead[0]["event_id"] and payload["openvine_id"]
  assert fault_run["summary"]["dead_lettered"] == {"migrate": 1}


def test_broken_thumbnails_publish_without_blurhash(api_stack, fault_run):
  thumb_vines = set(fault_run["thumb"].values())
  counters = fault_run["summary"]["counters"]
  assert counters["blurhash_missing"] == len(thumb_vines)
  for record in fault_run["out"]["published"]:
    assert ("blurhash_missing" in record["notes"]) == (record["vine_id"] in thumb_vines)
  events = _assert_relay_consistent(api_stack.relay_urls[0], fault_run["out"]["published"])
  for event in events:
    if _d(event) in thumb_vines:
      assert _migrated(event) and _blurhash(event) is None
    elif _d(event) != fault_run["always_fail"]:
      assert _migrated(event) and len(_blurhash(event)) == 28
  faults = fault_run["stats"]["faults_injected"]
  assert all(faults.get("thumb_" + k) for k in THUMB_FAULTS)


@pytest.fixture(scope="module")
def require_run(api_stack, fault_run, tmp_path_factory):
  # Faults off but the always-failing vine and four broken thumbnails; the hung one is
  # served again, so that vine is healed on this re-run.
  api_stack.emulator.reset_stats()
  api_stack.emulator.configure(thumb_hang_uids=[], **{k: 0.0 for k in FAULT_RATES})
  code, run_dir, summary = run_pipeline(api_stack, tmp_path_factory.mktemp("out"),
                                        ["--require-blurhash"])
  return code, run_dir, summary, _outputs(run_dir), api_stack.emulator.stats()


def test_require_blurhash_dead_letters_broken_thumbnails(api_stack, fault_run, require_run):
  code, _, summary, out, stats = require_run
  _assert_balanced(code, summary)
  thumb = fault_run["thumb"]
  dead = {(d["stage"], d["vine_id"]): d for d in out["dead_letters"]}
  assert set(dead) == {("blurhash", thumb[k]) for k in ("404", "garbage", "truncated", "bomb")} | {
      ("migrate", fault_run["always_fail"])}
  why = {"404": "thumbnail HTTP 404", "garbage": "not a recognised image",
         "truncated": "truncated image data", "bomb": "decompression-bomb cap"}
  for kind, fragment in why.items():
    letter = dead[("blurhash", thumb[kind])]
    assert letter["error_class"] == "permanent" and fragment in letter["error"], letter
  # The vine whose thumbnail hung last time gets its blurhash now: republished once.
  assert [r["vine_id"] for r in out["published"]] == [thumb["hang"]]
  healed = [e for e in api_stack.relay_events() if _d(e) == thumb["hang"]]
  assert len(healed) == 1 and len(_blurhash(healed[0])) == 28
  assert summary["skipped"] == {"up_to_date": len(fault_run["vids"]) - 6}
  # Finished vines cost no API call: only the always-failing one was tried (5 times).
  assert stats["migrate_calls"] == {fault_run["always_fail"]: 5}


# ---------------------------------------------------------------------------
# B. Relay faults.


class FaultyRelayProxy(ThreadedServer):
  """A websocket proxy in front of a real relay that misbehaves on EVENT messages.

  `rule(event, sends)` decides what happens to the sends-th EVENT of that id:
  None forwards it; ("reply", accepted, message) answers it here with an OK;
  ("close",) drops the client connection without an answer; ("hook", fn) calls fn and
  then forwards it. Reads (REQ) are always forwarded. While the upstream relay is down
  the handshake is refused with 502, as a load balancer in front of a relay does.
  """

  def __init__(self, upstream, rule=None):
    self.upstream = upstream
    self.rule = rule or (lambda event, sends: None)
    self.sends = collections.Counter()
    self.actions = collections.Counter()
    self.refused_handshakes = 0
    self._lock = threading.Lock()
    super().__init__(process_request=self._open_upstream, max_size=None, compression=None)
    self.start()

  def _open_upstream(self, connection, request):
    try:
      connection.upstream = connect(self.upstream, open_timeout=2, max_size=None, proxy=None,
                                    compression=None)
    except (OSError, InvalidHandshake, TimeoutError):
      with self._lock:
        self.refused_handshakes += 1
      return connection.respond(HTTPStatus.BAD_GATEWAY, "upstream relay unavailable\n")
    return None

  def _handle(self, client):
    upstream = client.upstream

    def pump():
      try:
        for message in upstream:
          client.send(message)
      except ConnectionClosed:
        pass
      finally:
        client.close()

    threading.Thread(target=pump, daemon=True).start()
    try:
      for raw in client:
        message = json.loads(raw)
        if message[0] != "EVENT":
          upstream.send(raw)
          continue
        event = message[1]
        with self._lock:
          self.sends[event["id"]] += 1
          action = self.rule(event, self.sends[event["id"]])
          self.actions[action[0] if action else "forward"] += 1
        if action is None:
          upstream.send(raw)
        elif action[0] == "reply":
          client.send(json.dumps(["OK", event["id"], action[1], action[2]]))
        elif action[0] == "close":
          return
        elif action[0] == "hook":
          action[1]()
          upstream.send(raw)
    except ConnectionClosed:
      pass
    finally:
      client.close()
      upstream.close()


@pytest.fixture(scope="module")
def relay_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("relays")), n_vines=20, seed=31, relays=2,
                  lmdb=True, plant_failures=False) as stack:
    yield stack


def _publish_rule(by_vine, close_at=0):
  """Scripted answers by vine id (first `d`): one per send, a permanent refusal repeated;
  and the connection dropped once, at the close_at-th EVENT overall."""
  state = {"events": 0}

  def rule(event, sends):
    state["events"] += 1
    if state["events"] == close_at:
      return ("close",)
    script = by_vine.get(_d(event), ())
    if sends <= len(script):
      return script[sends - 1]
    if script and script[-1][2].split(":")[0] in ("invalid", "blocked"):
      return script[-1]
    return None

  return rule


@pytest.fixture(scope="module")
def relay_reply_run(relay_stack, tmp_path_factory):
  vids = _vine_ids(relay_stack)
  scripted = {
      vids[0]: [("reply", False, "rate-limited: slow down")],
      vids[1]: [("reply", False, "rate-limited: slow down"), ("reply", False, "error: busy")],
      vids[2]: [("reply", False, "error: internal error")],
      vids[3]: [("reply", False, "invalid: event rejected by policy")],
      vids[4]: [("reply", False, "blocked: pubkey is banned")],
  }
  proxy = FaultyRelayProxy(relay_stack.relay_urls[1], _publish_rule(scripted, close_at=8))
  relays = ",".join([relay_stack.relay_urls[0], proxy.url])
  try:
    code, run_dir, summary = run_pipeline(relay_stack, tmp_path_factory.mktemp("out"),
                                          ["--relays", relays])
  finally:
    proxy.close()
  return {"code": code, "summary": summary, "out": _outputs(run_dir), "vids": vids,
          "proxy": proxy, "scripted": scripted}


def test_relay_transient_answers_and_a_dropped_connection_lose_nothing(relay_stack,
                                                                       relay_reply_run):
  run = relay_reply_run
  _assert_balanced(run["code"], run["summary"])
  vids, proxy = run["vids"], run["proxy"]
  refused = {vids[3], vids[4]}
  published = run["out"]["published"]
  assert {r["vine_id"] for r in published} == set(vids) - refused
  for record in published:
    assert record["relays"] == sorted([relay_stack.relay_urls[0], proxy.url])
  assert proxy.actions["close"] == 1 and proxy.actions["reply"] >= 6
  # Retried until accepted: one send per scripted answer, then the one that got through.
  for vid, sends in ((vids[0], 2), (vids[1], 3), (vids[2], 2)):
    record = next(r for r in published if r["vine_id"] == vid)
    assert proxy.sends[record["event_id"]] >= sends
  for index in (0, 1):
    _assert_relay_consistent(relay_stack.relay_urls[index], published)


def test_permanent_relay_refusals_are_dead_lettered_naming_the_relay(relay_stack, relay_reply_run):
  run = relay_reply_run
  vids, proxy = run["vids"], run["proxy"]
  dead = {d["vine_id"]: d for d in run["out"]["dead_letters"]}
  assert set(dead) == {vids[3], vids[4]}
  for vid, message in ((vids[3], "invalid: event rejected by policy"),
                       (vids[4], "blocked: pubkey is banned")):
    letter = dead[vid]
    assert letter["stage"] == "publish" and letter["error_class"] == "permanent"
    assert "accepted by 1 of 2 relays, 2 required" in letter["error"]
    assert "%s: %s (permanent)" % (proxy.url, message) in letter["error"]
    assert relay_stack.relay_urls[0] not in letter["error"].split("refused:")[1]
    signed = json.loads(letter["payload"])["signed"]  # what a replay needs: the signed event
    assert _d(signed) == vid and validate_event(signed) is None
  # The refusing relay still holds the old version; the other took the new one.
  old = {_d(e): e for e in relay_stack.relay_events(1)}
  assert not _migrated(old[vids[3]]) and not _migrated(old[vids[4]])


def test_rerun_brings_a_relay_that_refused_up_to_date(relay_stack, relay_reply_run, tmp_path):
  vids = relay_reply_run["vids"]
  behind = {vids[3], vids[4]}  # refused by relay 1 in relay_reply_run, taken by relay 0
  relay_stack.emulator.reset_stats()
  code, run_dir, summary = run_pipeline(relay_stack, tmp_path)
  _assert_balanced(code, summary)
  # Read side: the versions relay 1 lacks are found (one relay behind for each).
  assert summary["counters"]["relays_behind"] == len(behind)
  assert relay_stack.emulator.stats()["migrate_calls_total"] == 0
  out = _outputs(run_dir)
  assert {r["vine_id"] for r in out["published"]} == behind
  for record in out["published"]:  # the very same event, no new version
    assert record["event_id"] == record["previous_event_id"]
    assert record["relays"] == sorted(relay_stack.relay_urls)
  assert summary["skipped"] == {"up_to_date": len(vids) - len(behind)}
  assert summary["counters"][build.CATCH_UP] == len(behind)
  held = {_d(e): e for e in relay_stack.relay_events(1)}
  assert all(_migrated(held[v]) for v in behind)
  for index in (0, 1):
    _assert_relay_consistent(relay_stack.relay_urls[index], out["published"])


def test_min_relays_counts_a_vine_published_by_the_relays_that_took_it(relay_stack,
                                                                      relay_reply_run,
                                                                      tmp_path_factory):
  vids = relay_reply_run["vids"]
  scripted = {vids[3]: [("reply", False, "invalid: event rejected by policy")]}
  proxy = FaultyRelayProxy(relay_stack.relay_urls[1], _publish_rule(scripted))
  relays = ",".join([relay_stack.relay_urls[0], proxy.url])
  try:
    code, run_dir, summary = run_pipeline(relay_stack, tmp_path_factory.mktemp("out"),
                                          ["--relays", relays, "--min-relays", "1",
                                           "--force-republish"])
  finally:
    proxy.close()
  _assert_balanced(code, summary)
  out = _outputs(run_dir)
  assert summary["published"] == len(vids) and not out["dead_letters"]
  by_vine = {r["vine_id"]: r for r in out["published"]}
  assert by_vine[vids[3]]["relays"] == [relay_stack.relay_urls[0]]
  assert all(r["relays"] == sorted([relay_stack.relay_urls[0], proxy.url])
             for v, r in by_vine.items() if v != vids[3])
  _assert_relay_consistent(relay_stack.relay_urls[0], out["published"])


def test_relay_restarted_mid_publish_resumes(relay_stack, relay_reply_run, tmp_path_factory):
  relay = relay_stack.relays[1]
  restarted = threading.Event()

  def restart():
    relay.stop()
    threading.Timer(1.5, lambda: (relay.start(), restarted.set())).start()

  state = {"events": 0}

  def rule(event, sends):
    state["events"] += 1
    return ("hook", restart) if state["events"] == 5 else None

  proxy = FaultyRelayProxy(relay_stack.relay_urls[1], rule)
  relays = ",".join([relay_stack.relay_urls[0], proxy.url])
  try:
    code, run_dir, summary = run_pipeline(relay_stack, tmp_path_factory.mktemp("out"),
                                          ["--relays", relays, "--force-republish"])
  finally:
    assert restarted.wait(20)
    proxy.close()
  _assert_balanced(code, summary)
  out = _outputs(run_dir)
  assert summary["published"] == len(relay_reply_run["vids"]) and not out["dead_letters"]
  assert proxy.refused_handshakes >= 1  # the client did meet the relay down
  for index in (0, 1):
    _assert_relay_consistent(relay_stack.relay_urls[index], out["published"])


def test_relay_down_at_start_comes_up_and_gets_everything(relay_stack, relay_reply_run,
                                                         tmp_path_factory):
  late = RelayProcess(port=free_port())
  starter = threading.Timer(1.0, late.start)
  starter.start()
  try:
    code, run_dir, summary = run_pipeline(
        relay_stack, tmp_path_factory.mktemp("out"),
        ["--relays", ",".join([relay_stack.relay_urls[0], late.url]), "--force-republish"])
    starter.join()
    _assert_balanced(code, summary)
    out = _outputs(run_dir)
    assert summary["published"] == len(relay_reply_run["vids"])
    assert all(len(r["relays"]) == 2 for r in out["published"])
    events = _assert_relay_consistent(late.url, out["published"])
    assert len(events) == len(relay_reply_run["vids"]) and all(map(_migrated, events))
  finally:
    starter.join()
    late.stop()


def test_relay_that_never_comes_up_with_min_relays_1(relay_stack, relay_reply_run,
                                                    tmp_path_factory):
  dead_url = "ws://127.0.0.1:%d" % free_port()
  code, run_dir, summary = run_pipeline(
      relay_stack, tmp_path_factory.mktemp("out"),
      ["--relays", ",".join([relay_stack.relay_urls[0], dead_url]), "--min-relays", "1",
       "--force-republish"])
  _assert_balanced(code, summary)
  out = _outputs(run_dir)
  assert summary["counters"]["relays_unreadable"] == 1
  assert summary["published"] == len(relay_reply_run["vids"]) and not out["dead_letters"]
  assert all(r["relays"] == [relay_stack.relay_urls[0]] for r in out["published"])
  _assert_relay_consistent(relay_stack.relay_urls[0], out["published"])


def test_no_readable_relay_stops_the_run(relay_stack, tmp_path_factory):
  dead_url = "ws://127.0.0.1:%d" % free_port()
  code, err, run_dir, _ = _run_with_token(relay_stack, tmp_path_factory.mktemp("out"),
                                          relay_stack.token, ["--relays", dead_url])
  assert code == 1 and "no relay could be read" in err and dead_url in err
  assert _outputs(run_dir)["skipped"] == []


# ---------------------------------------------------------------------------
# C. Re-runs.

N_RERUN, SEED_RERUN = 25, 41


def _normalised(events, emulator_url):
  """Relay state without what differs between two runs: ids, signatures, created_at, ports."""
  return sorted((e["pubkey"], _d(e), e["kind"], e["content"],
                 json.dumps(e["tags"], ensure_ascii=False).replace(emulator_url, "EMU"))
                for e in events)


@pytest.fixture(scope="module")
def rerun_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("rerun")), n_vines=N_RERUN,
                  seed=SEED_RERUN) as stack:
    yield stack


@pytest.fixture(scope="module")
def clean_run(rerun_stack, tmp_path_factory):
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path_factory.mktemp("out"))
  _assert_balanced(code, summary)
  events = rerun_stack.relay_events()
  return {"summary": summary, "out": _outputs(run_dir), "events": events,
          "normalised": _normalised(events, rerun_stack.emulator.url)}


def _unfinished(stack):
  planted = stack.manifest["planted"]
  return {planted["missing_openvine_video"]["vine_id"]} | set(
      planted["no_signing_key"]["vine_ids"])


def test_second_run_makes_no_calls_publishes_nothing_and_says_so(rerun_stack, clean_run,
                                                                 tmp_path):
  rerun_stack.emulator.reset_stats()
  before = sorted(e["id"] for e in rerun_stack.relay_events())
  code, _, summary = run_pipeline(rerun_stack, tmp_path)
  _assert_balanced(code, summary)
  done = rerun_stack.manifest["expected_published"]
  counters = summary["counters"]
  assert summary["published"] == 0 and summary["skipped"]["up_to_date"] == done
  assert counters["migrations_reused"] == done and counters.get("videos_migrated", 0) == 0
  # Only the vines that did not end published last time were tried again, once each.
  calls = rerun_stack.emulator.stats()["migrate_calls"]
  assert set(calls) == _unfinished(rerun_stack) and counters["migrate_calls"] == len(calls)
  assert sorted(e["id"] for e in rerun_stack.relay_events()) == before


def test_force_remigrate_calls_the_api_but_changes_nothing(rerun_stack, clean_run, tmp_path):
  rerun_stack.emulator.reset_stats()
  before = sorted(e["id"] for e in rerun_stack.relay_events())
  code, _, summary = run_pipeline(rerun_stack, tmp_path, ["--force-remigrate"])
  _assert_balanced(code, summary)
  stats = rerun_stack.emulator.stats()
  done = rerun_stack.manifest["expected_published"]
  assert stats["migrate_calls_total"] == done + len(_unfinished(rerun_stack))
  assert stats["migrations"] == 0  # the API's idempotency: all already_migrated
  assert summary["published"] == 0 and summary["skipped"]["up_to_date"] == done
  assert sorted(e["id"] for e in rerun_stack.relay_events()) == before


def test_force_republish_publishes_new_versions_without_calls(rerun_stack, clean_run, tmp_path):
  rerun_stack.emulator.reset_stats()
  old = {(e["pubkey"], _d(e)): e for e in rerun_stack.relay_events()}
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path, ["--force-republish"])
  _assert_balanced(code, summary)
  out = _outputs(run_dir)
  assert summary["published"] == rerun_stack.manifest["expected_published"]
  calls = rerun_stack.emulator.stats()["migrate_calls"]
  assert set(calls) == _unfinished(rerun_stack)
  events = _assert_relay_consistent(rerun_stack.relay_urls[0], out["published"])
  republished = {r["event_id"] for r in out["published"]}
  for event in events:
    if event["id"] in republished:
      previous = old[(event["pubkey"], _d(event))]
      assert event["created_at"] > previous["created_at"]
      assert [t for t in event["tags"]] == [t for t in previous["tags"]]


def test_update_existing_adds_metadata_once_and_keeps_stream_urls(rerun_stack, clean_run,
                                                                  tmp_path):
  orphan = rerun_stack.manifest["planted"]["event_without_row"]["vine_id"]
  before = next(e for e in rerun_stack.relay_events() if _d(e) == orphan)
  assert _migrated(before) and first_tag_value(before["tags"], "loops") is None
  rows = tmp_path / "rows.ndjson"
  with open(rerun_stack.path("rows.ndjson"), encoding="utf-8") as f:
    text = f.read()
  row = {"vineId": orphan, "username": "Orphan Annie", "description": "found my row #Found",
         "loops": 4242, "likes": 42, "comment_count": 4, "repost_count": 2,
         "created_timestamp": 1400000000, "hashtags": ["found"]}
  rows.write_text(text + json.dumps(row) + "\n", encoding="utf-8")
  rerun_stack.emulator.reset_stats()
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path / "a", ["--rows", str(rows)])
  _assert_balanced(code, summary)
  assert [r["vine_id"] for r in _outputs(run_dir)["published"]] == [orphan]
  assert orphan not in rerun_stack.emulator.stats()["migrate_calls"]
  after = next(e for e in rerun_stack.relay_events() if _d(e) == orphan)
  tags = {t[0]: t[1:] for t in after["tags"]}
  assert tags["loops"] == ["4242"] and tags["published_at"] == ["1400000000"]
  assert tags["username"] == ["Orphan Annie"] and after["content"] == row["description"]
  assert ["t", "found"] in after["tags"]
  for name in ("url", "streaming", "r", "thumb", "preview", "stream_uid", "migration"):
    assert tags[name] == [t for t in before["tags"] if t[0] == name][0][1:], name
  assert _blurhash(after) == _blurhash(before)
  # Once: the next run finds it up to date.
  code, run_dir, summary = run_pipeline(rerun_stack, tmp_path / "b", ["--rows", str(rows)])
  _assert_balanced(code, summary)
  assert summary["published"] == 0


# ---------------------------------------------------------------------------
# D. A crash mid-run, then a plain re-run.


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory):
  # Same seed and size as rerun_stack: the same vines, keys and events.
  with LocalStack(str(tmp_path_factory.mktemp("crash")), n_vines=N_RERUN,
                  seed=SEED_RERUN) as stack:
    yield stack


def _kill_mid_run(stack, out_dir, at_least=3, timeout=90.0):
  """Runs `python -m pipeline.main` and SIGKILLs it once at_least vines are on the relay.

  The DirectRunner materialises each stage's output before the next stage starts, so
  all events reach PublishEvents together; a proxy that holds each EVENT 150 ms, with
  one event in flight (--publish-limit 1), spreads publishing over a few seconds.
  """
  proxy = FaultyRelayProxy(stack.relay_urls[0],
                           lambda event, sends: ("hook", lambda: time.sleep(0.15)))
  env = dict(os.environ, PYTHONPATH=ROOT, **{TOKEN_ENV: stack.token})
  args = stack.pipeline_args(output_dir=str(out_dir), extra=[
      "--run-id", "killed", "--relays", proxy.url, "--publish-limit", "1",
      "--retry-base-delay", "0.01"])
  try:
    with open(os.path.join(str(out_dir), "killed.log"), "w", encoding="utf-8") as log:
      proc = subprocess.Popen([sys.executable, "-m", "pipeline.main"] + args, cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
      try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
          if sum(map(_migrated, stack.relay_events())) >= at_least:
            break
          time.sleep(0.05)
      finally:
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  finally:
    proxy.close()
  return proc.returncode


def test_killed_run_then_plain_rerun_ends_like_a_clean_run(crash_stack, clean_run,
                                                           tmp_path):
  returncode = _kill_mid_run(crash_stack, tmp_path)
  assert returncode == -signal.SIGKILL, "the run ended before it could be killed"
  first = {_d(e) for e in crash_stack.relay_events() if _migrated(e)}
  expected = crash_stack.manifest["expected_published"]
  assert 3 <= len(first) < expected
  calls_before = collections.Counter(crash_stack.emulator.stats()["migrate_calls"])
  code, run_dir, summary = run_pipeline(crash_stack, tmp_path / "rerun")
  _assert_balanced(code, summary)
  stats = crash_stack.emulator.stats()
  calls_after = collections.Counter(stats["migrate_calls"]) - calls_before
  # Nothing published before the crash was migrated again...
  assert not first & set(calls_after)
  # ...and the emulator copied each video once: repeats were answered already_migrated.
  assert stats["migrations"] == expected + len(
      crash_stack.manifest["planted"]["no_signing_key"]["vine_ids"])
  assert summary["published"] == expected - len(first)
  assert summary["counters"]["migrations_reused"] == len(first)
  # The relay ends exactly as after a clean run of the same input.
  events = _assert_relay_consistent(crash_stack.relay_urls[0],
                                    _outputs(run_dir)["published"])
  assert _normalised(events, crash_stack.emulator.url) == clean_run["normalised"]
