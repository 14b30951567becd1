"""Tests for transforms.clients.relay.subscription (RelaySubscriptionClient) against real
LocalRelay processes (devstack.relay) and a scripted relay that caps stored events."""

import json
import threading
import time

from websockets.sync.server import serve

from devstack.relay import RelayProcess
from tests.support.hostile_messages import MESSAGES
from tests.unit.clients.relay.helpers import publish_accepted, sorted_ids, video_event
from transforms.clients.relay.subscription import RelaySubscriptionClient
from transforms.core.records import VIDEO_KIND


def _collect(client, want, timeout=10.0):
  """Polls until `want` events came (then 0.3 s more, to catch extras) or timeout."""
  got = []
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and len(got) < want:
    event = client.poll(deadline - time.monotonic())
    if event is not None:
      got.append(event)
  got.extend(client.events(max_seconds=0.3))
  return got


# ---------------------------------------------------------------------------
# The client against a real relay.


def test_client_reads_backlog_since_then_live_events_once(relay):
  now = int(time.time())
  before = [video_event(now - 30 + i, 100 + i) for i in range(5)]
  too_old = video_event(now - 500, 99)
  publish_accepted(relay.url, before + [too_old])
  with RelaySubscriptionClient(relay.url, {"kinds": [VIDEO_KIND]}, since=now - 60) as client:
    got = _collect(client, 5)
    assert sorted_ids(got) == sorted_ids(before)
    live = [video_event(int(time.time()), 200 + i) for i in range(3)]
    publish_accepted(relay.url, live)
    got_live = _collect(client, 3)
    assert sorted_ids(got_live) == sorted_ids(live)
    assert client.reconnects == 0 and client.received == 8


def test_client_reconnects_after_restart_and_misses_nothing(tmp_path):
  with RelayProcess(lmdb=str(tmp_path / "lmdb")) as proc:
    now = int(time.time())
    first = [video_event(now - 3, 300 + i) for i in range(4)]
    publish_accepted(proc.url, first)
    client = RelaySubscriptionClient(proc.url, {"kinds": [VIDEO_KIND]}, since=now - 60,
                                     backoff_base=0.1, backoff_cap=0.5)
    with client:
      assert sorted_ids(_collect(client, 4)) == sorted_ids(first)
      proc.stop()
      assert client.poll(0.5) is None and not client.connected
      proc.start()
      # Published while the client is still disconnected: one at the second it saw last,
      # which only an inclusive, overlapping `since` re-reads.
      during = [video_event(now - 3, 400), video_event(int(time.time()), 401)]
      publish_accepted(proc.url, during)
      got = _collect(client, 2)
      assert sorted_ids(got) == sorted_ids(during)
      assert client.reconnects >= 1 and client.duplicates >= 4  # the overlap was re-read
      after = [video_event(int(time.time()), 402)]
      publish_accepted(proc.url, after)
      assert sorted_ids(_collect(client, 1)) == sorted_ids(after)


def test_client_pages_back_when_the_relay_caps_stored_events():
  now = int(time.time())
  stored = [video_event(now - 100 + i // 3, 700 + i) for i in range(40)]  # 3 per second
  cap = 10

  def handle(conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "REQ":
        continue
      flt = msg[2]
      match = [e for e in stored if flt.get("since", 0) <= e["created_at"]
               <= flt.get("until", now + 10)]
      match.sort(key=lambda e: (-e["created_at"], e["id"]))
      for event in match[:min(cap, flt.get("limit", cap))]:
        conn.send(json.dumps(["EVENT", msg[1], event]))
      conn.send(json.dumps(["EOSE", msg[1]]))

  with serve(handle, "127.0.0.1", 0) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "ws://127.0.0.1:%d" % server.socket.getsockname()[1]
    with RelaySubscriptionClient(url, {"kinds": [VIDEO_KIND]}, since=now - 200,
                                 page_size=cap) as client:
      got = _collect(client, len(stored))
    server.shutdown()
  assert sorted_ids(got) == sorted_ids(stored)


def test_client_drops_hostile_messages_and_events_outside_its_filter():
  now = int(time.time())
  wanted = [video_event(now - 10 + i, 800 + i) for i in range(3)]
  other_kind = dict(video_event(now - 5, 900), kind=1)  # not asked for (kind 1)
  too_old = video_event(now - 500, 901)  # before `since`

  reqs = []

  def handle(conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "REQ":
        continue
      reqs.append(msg[1])
      for hostile in MESSAGES:
        conn.send(hostile)
      for event in [other_kind, too_old] + wanted:
        conn.send(json.dumps(["EVENT", msg[1], event]))
      conn.send(json.dumps(["EOSE", msg[1]]))

  with serve(handle, "127.0.0.1", 0, max_size=None) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "ws://127.0.0.1:%d" % server.socket.getsockname()[1]
    with RelaySubscriptionClient(url, {"kinds": [VIDEO_KIND]}, since=now - 60) as client:
      got = _collect(client, 3)
    server.shutdown()
  assert sorted_ids(got) == sorted_ids(wanted)
  # Each REQ (the subscription, then a page back over its stored events) got them all; the
  # first REQ's came before the events collected, a later one's may be cut by the close.
  assert len(MESSAGES) <= client.dropped <= len(MESSAGES) * len(reqs)
  assert 2 <= client.outside_filter <= 2 * len(reqs)
  assert client.reconnects == 0
