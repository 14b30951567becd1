"""A websocket proxy in front of a real relay that misbehaves on EVENT messages."""

import collections
import json
import threading
from http import HTTPStatus

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from tests.support.ws_server import ThreadedServer


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
