"""An in-memory NIP-01 relay for reads, honest or hostile, on ThreadedServer.

It answers REQs over a fixed list of events as NIP-01 says (the newest `limit` events
matching kinds, authors, since and until, newest first, then EOSE), with a cap on
`limit` like a real relay's, and can be told to misbehave the ways a read must survive.
"""

import json

from tests.support.ws_server import ThreadedServer
from transforms.clients.relay.common import matches_filter

# Misbehaviours (the `mode` argument).
HONEST = "honest"
IGNORES_UNTIL = "ignores_until"  # answers as if no until was asked, one new event on top
OLDEST_FIRST = "oldest_first"  # returns the oldest `limit` events, oldest first
ENDLESS = "endless"  # honours until, but always has one event more, one second older


class MemoryRelay(ThreadedServer):
  """Serves `events` to REQs; `before_events(sub)` gives raw messages sent ahead of a
  REQ's events (malformed, oversized, nested ...). `reqs` counts the REQs answered."""

  def __init__(self, events, cap=None, mode=HONEST, before_events=None, make_event=None):
    self.events = list(events)
    self.cap = cap
    self.mode = mode
    self.before_events = before_events or (lambda sub: [])
    self.make_event = make_event  # created_at -> a new signed event (IGNORES_UNTIL, ENDLESS)
    self.reqs = 0
    super().__init__(max_size=None)

  def _answer(self, flt):
    limit = flt.get("limit", 500)
    if self.cap is not None:
      limit = min(limit, self.cap)
    if self.mode == IGNORES_UNTIL:
      newest = max(e["created_at"] for e in self.events)
      self.events.append(self.make_event(newest + 1))
      flt = {k: v for k, v in flt.items() if k != "until"}
    elif self.mode == ENDLESS:
      oldest = min(e["created_at"] for e in self.events)
      self.events.append(self.make_event(oldest - 1))
    matching = [e for e in self.events if matches_filter(e, flt)]
    if self.mode == OLDEST_FIRST:
      return sorted(matching, key=lambda e: (e["created_at"], e["id"]))[:limit]
    return sorted(matching, key=lambda e: (-e["created_at"], e["id"]))[:limit]

  def _handle(self, conn):
    for raw in conn:
      msg = json.loads(raw)
      if msg[0] != "REQ":
        continue
      self.reqs += 1
      sub = msg[1]
      for extra in self.before_events(sub):
        conn.send(extra)
      for event in self._answer(msg[2]):
        conn.send(json.dumps(["EVENT", sub, event]))
      conn.send(json.dumps(["EOSE", sub]))
