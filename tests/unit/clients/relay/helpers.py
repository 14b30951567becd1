"""What the relay client tests share: signed events, publishing them, comparing ids."""

import time

from transforms.clients.relay.publisher import RelayPublisher
from transforms.core.records import VIDEO_KIND
from transforms.nostr.event import Signer, generate_private_key

_VIDEO_SIGNER = Signer(generate_private_key())


def signed_notes(signer, count, kind=1, base=None, per_second=1):
  """`count` events of `signer`, `per_second` per created_at second from `base` on."""
  base = base if base is not None else int(time.time()) - 100000
  return [signer.sign({"created_at": base + i // per_second, "kind": kind, "tags": [],
                       "content": "note %d" % i}) for i in range(count)]


def publish_all(url, events, **kwargs):
  """Publishes events with one RelayPublisher (tokens 0, 1, ...); returns the results."""
  with RelayPublisher(url, **kwargs) as pub:
    for i, event in enumerate(events):
      pub.submit(event, token=i)
    return pub.drain(timeout=30)


def video_event(created_at, n, tags=()):
  """A kind 32222 event with d tag vine<n>, signed by one key shared by the tests."""
  return _VIDEO_SIGNER.sign({"created_at": created_at, "kind": VIDEO_KIND,
                             "tags": [["d", "vine%07d" % n]] + [list(t) for t in tags],
                             "content": "video %d" % n})


def publish_accepted(url, events):
  """Publishes events and asserts the relay accepted every one."""
  with RelayPublisher(url) as pub:
    for event in events:
      pub.submit(event)
    results = pub.drain(timeout=20)
  assert all(r.accepted for r in results), [r.message for r in results]


def sorted_ids(events):
  return sorted(e["id"] for e in events)
