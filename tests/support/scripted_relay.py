"""Scripted relays for publisher tests: a script of OK replies, or hostile messages before each OK."""

import json

from tests.support.hostile_messages import MESSAGES
from tests.support.ws_server import ThreadedServer


class ScriptedRelay(ThreadedServer):
  """Answers each EVENT with the next scripted reply (None: no answer) then `true`."""

  def __init__(self, replies):
    self.replies = list(replies)
    self.received = []
    super().__init__()

  def _handle(self, conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "EVENT":
        continue
      self.received.append(msg[1]["id"])
      reply = self.replies.pop(0) if self.replies else (True, "")
      if reply is not None:
        conn.send(json.dumps(["OK", msg[1]["id"], reply[0], reply[1]]))


class HostileAckRelay(ThreadedServer):
  """Sends the hostile messages before each OK (true)."""

  def __init__(self):
    super().__init__(max_size=None)

  def _handle(self, conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] == "EVENT":
        for hostile in MESSAGES:
          conn.send(hostile)
        conn.send(json.dumps(["OK", msg[1]["id"], True, ""]))
