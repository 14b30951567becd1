"""Tests for transforms.clients.relay.reader (fetch_events) against a real LocalRelay process
(devstack.relay) and a scripted relay built on the websockets package."""

import json
import logging
import threading
import time

from websockets.sync.server import serve

from tests.unit.clients.relay.helpers import publish_all, signed_notes, sorted_ids
from transforms.clients.relay.reader import ReadReport, fetch_events
from transforms.nostr.event import Signer, generate_private_key

# ---------------------------------------------------------------------------
# Real relay


def test_fetch_pages_1200_events_with_small_pages(relay):
  signer = Signer(generate_private_key())
  events = signed_notes(signer, 1200, per_second=4)
  assert all(r.accepted for r in publish_all(relay.url, events))
  fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=500))
  ids = [e["id"] for e in fetched]
  assert len(ids) == len(set(ids)) == 1200
  # max_pages bounds the read.
  assert len(list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=500,
                               max_pages=1))) == 500


def test_fetch_reads_a_second_holding_more_events_than_a_page(relay, caplog):
  signer = Signer(generate_private_key())
  base = int(time.time()) - 50000
  crowded = signed_notes(signer, 30, base=base, per_second=30)  # one second, 30 events
  older = signed_notes(signer, 10, base=base - 100)
  assert all(r.accepted for r in publish_all(relay.url, crowded + older))
  report = ReadReport()
  with caplog.at_level(logging.WARNING, logger="transforms.clients.relay.reader"):
    fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=4,
                                report=report))
  assert sorted_ids(fetched) == sorted_ids(crowded + older)
  assert len(fetched) == 40  # each id once
  assert report.seconds_incomplete == []
  assert "holds more events" not in caplog.text


def test_fetch_reads_a_filter_whose_only_second_exceeds_a_page(relay):
  signer = Signer(generate_private_key())
  events = signed_notes(signer, 7, per_second=7)  # all in one second, nothing else
  assert all(r.accepted for r in publish_all(relay.url, events))
  report = ReadReport()
  fetched = list(fetch_events(relay.url, {"authors": [signer.pubkey]}, page_size=3,
                              report=report))
  assert sorted_ids(fetched) == sorted_ids(events)
  assert report.seconds_incomplete == []


# ---------------------------------------------------------------------------
# Scripted relay


def test_fetch_skips_malformed_messages_closes_and_survives_a_dropped_connection():
  signer = Signer(generate_private_key())
  good = signed_notes(signer, 3)
  seen = {"connections": 0, "closes": 0}

  def handle(conn):
    seen["connections"] += 1
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] == "CLOSE":
        seen["closes"] += 1
        continue
      if seen["connections"] == 1:
        return  # drop the first connection mid-read
      sub, until = msg[1], msg[2].get("until")
      conn.send("not json")
      conn.send(json.dumps(["EVENT", sub, {"no": "id"}]))
      conn.send(json.dumps(["EVENT", "other-sub", good[0]]))
      for event in good:
        if until is None or event["created_at"] <= until:
          conn.send(json.dumps(["EVENT", sub, event]))
      conn.send(json.dumps(["EOSE", sub]))

  with serve(handle, "127.0.0.1", 0) as server:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "ws://127.0.0.1:%d" % server.socket.getsockname()[1]
    fetched = list(fetch_events(url, {"kinds": [1]}, page_size=10, timeout=5))
    server.shutdown()
  assert [e["id"] for e in fetched] == [e["id"] for e in good]
  assert seen["connections"] == 2
  assert seen["closes"] == 2  # one per page: the second page was short
