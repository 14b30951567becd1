"""RelayPublisher's logs: a relay that drops the connection gets one WARNING for the loss, with
the relay and the reason, and one INFO for the reconnect; events stay at DEBUG."""

import json
import logging
import socket

from tests.support.ws_server import ThreadedServer
from transforms.clients.relay.outcomes import OUTCOME_ACCEPTED, OUTCOME_PERMANENT
from transforms.clients.relay.publisher import RelayPublisher
from transforms.nostr.event import Signer, generate_private_key


class _DroppingRelay(ThreadedServer):
  """Closes its first connection on the first EVENT without answering; then answers OK,
  or `invalid:` for events whose content says "refuse"."""

  def __init__(self):
    self.connections = 0
    super().__init__()

  def _handle(self, conn):
    self.connections += 1
    first = self.connections == 1
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "EVENT":
        continue
      if first:  # dropped, no closing handshake: as when a relay or its proxy dies
        conn.socket.shutdown(socket.SHUT_RDWR)
        return
      refuse = msg[1]["content"].endswith("refuse")
      conn.send(json.dumps(["OK", msg[1]["id"], not refuse, "invalid: no" if refuse else ""]))


def test_a_relay_reconnect_is_logged_once_with_the_relay_and_reason(caplog):
  signer = Signer(generate_private_key())
  events = [signer.sign({"created_at": 1700000000 + i, "kind": 1, "tags": [],
                         "content": "n %d%s" % (i, " refuse" if i % 2 else "")})
            for i in range(5)]
  with _DroppingRelay() as relay, caplog.at_level(logging.DEBUG, "transforms.clients.relay.publisher"):
    with RelayPublisher(relay.url, sleep=lambda s: None) as pub:
      for event in events:
        pub.submit(event)
      results = pub.drain(timeout=20)
  outcomes = {r.event_id: r.outcome for r in results}
  assert [outcomes[e["id"]] for e in events] == [OUTCOME_ACCEPTED, OUTCOME_PERMANENT] * 2 + [
      OUTCOME_ACCEPTED]
  lost = [r for r in caplog.records if "lost" in r.getMessage()]
  assert len(lost) == 1 and lost[0].levelno == logging.WARNING
  assert relay.url in lost[0].getMessage() and "connection 1 lost (" in lost[0].getMessage()
  back = [r for r in caplog.records if "reconnected" in r.getMessage()]
  assert len(back) == 1 and back[0].levelno == logging.INFO
  assert relay.url in back[0].getMessage()
  done = [r.getMessage() for r in caplog.records if ": done (" in r.getMessage()]
  assert len(done) == 1 and "accepted 3, duplicate 0, refused 2" in done[0]
  assert "reconnects 1" in done[0]
  # Events themselves, refused or not, are never above DEBUG (the DoFn reports its vines).
  assert not [r for r in caplog.records if r.levelno >= logging.INFO
              and any(e["id"] in r.getMessage() for e in events)]
