"""Nothing lost under relay faults: the real pipeline on DirectRunner, two real relays.

One local stack, module-scoped, one relay behind a misbehaving proxy
(tests/support/faulty_relay.py): rate-limited:/error:/invalid:/blocked: answers, a
connection dropped mid-publish, the relay restarted mid-run, a relay down at start, a
relay that never comes up, no readable relay at all.

Every run asserts the conservation check (`summary["balanced"]`).
"""

import json
import threading

import pytest

from devstack.relay import RelayProcess, free_port
from devstack.stack import LocalStack
from pipeline.run_record import EXIT_STOPPED
from tests.support.faulty_relay import FaultyRelayProxy
from tests.support.run_checks import (
  assert_balanced,
  assert_relay_consistent,
  d_tag,
  is_migrated,
  read_outputs,
  vine_ids_on_relay,
)
from tests.support.runs import run_pipeline, run_with_token
from transforms.nostr.event import validate_event
from transforms.stages import build

pytestmark = pytest.mark.integration


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
    script = by_vine.get(d_tag(event), ())
    if sends <= len(script):
      return script[sends - 1]
    if script and script[-1][2].split(":")[0] in ("invalid", "blocked"):
      return script[-1]
    return None

  return rule


@pytest.fixture(scope="module")
def relay_reply_run(relay_stack, tmp_path_factory):
  vids = vine_ids_on_relay(relay_stack)
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
  return {"code": code, "summary": summary, "out": read_outputs(run_dir), "vids": vids,
          "proxy": proxy, "scripted": scripted}


def test_relay_transient_answers_and_a_dropped_connection_lose_nothing(relay_stack,
                                                                       relay_reply_run):
  run = relay_reply_run
  assert_balanced(run["code"], run["summary"])
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
    assert_relay_consistent(relay_stack.relay_urls[index], published)


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
    assert d_tag(signed) == vid and validate_event(signed) is None
  # The refusing relay still holds the old version; the other took the new one.
  old = {d_tag(e): e for e in relay_stack.relay_events(1)}
  assert not is_migrated(old[vids[3]]) and not is_migrated(old[vids[4]])


def test_rerun_brings_a_relay_that_refused_up_to_date(relay_stack, relay_reply_run, tmp_path):
  vids = relay_reply_run["vids"]
  behind = {vids[3], vids[4]}  # refused by relay 1 in relay_reply_run, taken by relay 0
  relay_stack.emulator.reset_stats()
  code, run_dir, summary = run_pipeline(relay_stack, tmp_path)
  assert_balanced(code, summary)
  # Read side: the versions relay 1 lacks are found (one relay behind for each).
  assert summary["counters"]["relays_behind"] == len(behind)
  assert relay_stack.emulator.stats()["migrate_calls_total"] == 0
  out = read_outputs(run_dir)
  assert {r["vine_id"] for r in out["published"]} == behind
  for record in out["published"]:  # the very same event, no new version
    assert record["event_id"] == record["previous_event_id"]
    assert record["relays"] == sorted(relay_stack.relay_urls)
  assert summary["skipped"] == {"up_to_date": len(vids) - len(behind)}
  assert summary["counters"][build.CATCH_UP] == len(behind)
  held = {d_tag(e): e for e in relay_stack.relay_events(1)}
  assert all(is_migrated(held[v]) for v in behind)
  for index in (0, 1):
    assert_relay_consistent(relay_stack.relay_urls[index], out["published"])


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
  assert_balanced(code, summary)
  out = read_outputs(run_dir)
  assert summary["published"] == len(vids) and not out["dead_letters"]
  by_vine = {r["vine_id"]: r for r in out["published"]}
  assert by_vine[vids[3]]["relays"] == [relay_stack.relay_urls[0]]
  assert all(r["relays"] == sorted([relay_stack.relay_urls[0], proxy.url])
             for v, r in by_vine.items() if v != vids[3])
  assert_relay_consistent(relay_stack.relay_urls[0], out["published"])


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
  assert_balanced(code, summary)
  out = read_outputs(run_dir)
  assert summary["published"] == len(relay_reply_run["vids"]) and not out["dead_letters"]
  assert proxy.refused_handshakes >= 1  # the client did meet the relay down
  for index in (0, 1):
    assert_relay_consistent(relay_stack.relay_urls[index], out["published"])


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
    assert_balanced(code, summary)
    out = read_outputs(run_dir)
    assert summary["published"] == len(relay_reply_run["vids"])
    assert all(len(r["relays"]) == 2 for r in out["published"])
    events = assert_relay_consistent(late.url, out["published"])
    assert len(events) == len(relay_reply_run["vids"]) and all(map(is_migrated, events))
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
  assert_balanced(code, summary)
  out = read_outputs(run_dir)
  assert summary["counters"]["relays_unreadable"] == 1
  assert summary["published"] == len(relay_reply_run["vids"]) and not out["dead_letters"]
  assert all(r["relays"] == [relay_stack.relay_urls[0]] for r in out["published"])
  assert_relay_consistent(relay_stack.relay_urls[0], out["published"])


def test_no_readable_relay_stops_the_run(relay_stack, tmp_path_factory):
  dead_url = "ws://127.0.0.1:%d" % free_port()
  code, err, run_dir, _ = run_with_token(relay_stack, tmp_path_factory.mktemp("out"),
                                         relay_stack.token, ["--relays", dead_url])
  assert code == EXIT_STOPPED and "no relay could be read" in err and dead_url in err
  assert read_outputs(run_dir)["skipped"] == []
