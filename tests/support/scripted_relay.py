"""A scripted relay: answers each EVENT with the next reply of a script (publisher tests)."""

import json

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
