"""Checks on a finished run and on a relay's state, for the fault and re-run tests."""

import collections
import os

from tests.support.runs import read_ndjson
from transforms.clients.relay.reader import fetch_events
from transforms.nostr.event import first_tag_value, validate_event


def read_outputs(run_dir):
  """A run's dead letters, skips and published records; [] for a missing file."""
  out = {}
  for name in ("dead_letters", "skipped", "published"):
    path = os.path.join(run_dir, name + ".ndjson")
    out[name] = read_ndjson(path) if os.path.exists(path) else []
  return out


def assert_balanced(code, summary):
  """The run ended with exit code 0 and every vine accounted for once."""
  assert summary is not None, "the run wrote no summary"
  assert summary["balanced"], summary
  assert summary["vines_in"] == summary["published"] + sum(summary["skipped"].values()) + sum(
      summary["dead_lettered"].values())
  assert code == 0


def relay_video_events(url):
  """Every kind 32222 event the relay holds."""
  return list(fetch_events(url, {"kinds": [32222]}))


def d_tag(event):
  """The event's first `d` tag value."""
  return first_tag_value(event["tags"], "d")


def is_migrated(event):
  """Whether the event carries our migration tag."""
  return any(t[:2] == ["migration", "openvine-to-stream"] for t in event["tags"])


def assert_relay_consistent(url, published=()):
  """One valid version per (pubkey, d), and it is the published one for every published vine."""
  events = relay_video_events(url)
  per_address = collections.Counter((e["pubkey"], d_tag(e)) for e in events)
  assert max(per_address.values()) == 1, "a (pubkey, d) holds several versions"
  assert all(validate_event(e) is None for e in events)
  held = {e["id"] for e in events}
  for record in published:
    if url in record["relays"] or not record["relays"]:
      assert record["event_id"] in held, (url, record["vine_id"])
  return events


def vine_ids_on_relay(stack):
  """The vine ids (d tags) of the stack's relay events, sorted."""
  return sorted({d_tag(e) for e in stack.relay_events()})


def blurhash_of(event):
  """The blurhash in the event's imeta tag; None without one."""
  for tag in event["tags"]:
    if tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith("blurhash "):
          return entry[len("blurhash "):]
  return None
