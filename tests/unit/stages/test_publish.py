"""Tests for transforms.stages.publish (PublishEvents) against scripted relays.

The stage is driven directly (setup, bundles, teardown); its relay clients are real
and talk to a scripted relay over a real socket.
"""

import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from tests.support.hostile_messages import MESSAGES
from tests.support.scripted_relay import HostileAckRelay, ScriptedRelay
from transforms.clients.relay.publisher import RelayPublisher
from transforms.core import records
from transforms.core.records import WorkItem
from transforms.nostr.event import Signer, generate_private_key
from transforms.runtime import accounting
from transforms.stages.publish import PublishEventsFn, monitor_republished, result_record

VINE = "MYxVapFvz2z"


def _item(signer, kinds=(32222,)):
  old = signer.sign({"kind": 32222, "created_at": 1, "content": "", "tags": [["d", VINE]]})
  new = {kind: signer.sign({"kind": kind, "created_at": 2, "content": "",
                            "tags": [["d", VINE]]}) for kind in kinds}
  return WorkItem(vine_id=VINE, source=records.to_source_event(old),
                  migration={"uid": "0" * 32, "hls": None, "mp4": "https://cdn/x.mp4"},
                  signed=new.get(32222), signed_video=new.get(34236))


def _run_bundle(fn, items):
  windowed = WindowedValue(None, 0, [GlobalWindow()])
  fn.setup()
  try:
    fn.start_bundle()
    outputs = [o for item in items for o in fn.process(item, windowed)]
    return outputs + list(fn.finish_bundle())
  finally:
    fn.teardown()


def _tagged(outputs, tag):
  return [o.value.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == tag]


def test_publish_stage_answers_every_item_even_when_an_event_repeats_in_a_bundle():
  """Both events of an --event-kind both item go out; an item listed twice (a dead letter
  replayed twice) is sent once and both copies are answered: no vine goes missing."""
  signer = Signer(generate_private_key())
  old, new, video = [signer.sign({"kind": kind, "created_at": at, "content": "",
                                  "tags": [["d", "MYxVapFvz2z"]]})
                     for kind, at in ((32222, 1), (32222, 2), (34236, 2))]
  item = WorkItem(vine_id="MYxVapFvz2z", source=records.to_source_event(old),
                  migration={"uid": "0" * 32}, signed=new, signed_video=video)
  windowed = WindowedValue(None, 0, [GlobalWindow()])
  with ScriptedRelay([]) as fake:
    fn = PublishEventsFn([fake.url], "run-1", max_attempts=1)
    fn.setup()
    try:
      fn.start_bundle()
      outputs = (list(fn.process(item, windowed)) + list(fn.process(item, windowed))
                 + list(fn.finish_bundle()))
    finally:
      fn.teardown()
  results = [o.value for o in outputs if not isinstance(o, TaggedOutput)]
  assert [(r["event_id"], r["video_event_id"], r["kinds"], r["relays"]) for r in results] == [
      (new["id"], video["id"], [32222, 34236], [fake.url])] * 2
  assert sorted(fake.received) == sorted([new["id"], video["id"]])
  assert not [o for o in outputs if isinstance(o, TaggedOutput) and o.tag == "dead_letter"]


@pytest.mark.usefixtures("clean_tally")
def test_a_refused_vine_is_one_dead_letter_naming_the_relay_and_its_message():
  item = _item(Signer(generate_private_key()))
  with ScriptedRelay([(False, "blocked: not on the list")]) as fake:
    outputs = _run_bundle(PublishEventsFn([fake.url], "run-1", max_attempts=1), [item])
  dead = _tagged(outputs, "dead_letter")
  assert len(dead) == 1 and not [o for o in outputs if not isinstance(o, TaggedOutput)]
  assert (dead[0]["stage"], dead[0]["error_class"], dead[0]["vine_id"]) == (
      "publish", "permanent", VINE)
  assert fake.url in dead[0]["error"] and "blocked: not on the list" in dead[0]["error"]
  live = accounting.live_counts()
  assert live.get("dead_letters_publish") == 1 and not live.get("published")


@pytest.mark.usefixtures("clean_tally")
def test_hostile_relay_messages_are_counted_and_the_vine_is_still_published():
  item = _item(Signer(generate_private_key()))
  with HostileAckRelay() as fake:
    outputs = _run_bundle(PublishEventsFn([fake.url], "run-1", max_attempts=1), [item])
  results = [o for o in outputs if not isinstance(o, TaggedOutput)]
  assert [r.value["vine_id"] for r in results] == [VINE] and not _tagged(outputs, "dead_letter")
  assert accounting.live_counts()[accounting.RELAY_MESSAGES_DROPPED] == len(MESSAGES)


def test_result_record_and_monitor_line_carry_public_data_only():
  item = _item(Signer(generate_private_key()), kinds=(32222, 34236))
  record = result_record(item, {"wss://b", "wss://a"}, "run-1")
  assert (record["event_id"], record["video_event_id"], record["kinds"]) == (
      item.signed["id"], item.signed_video["id"], [32222, 34236])
  assert record["relays"] == ["wss://a", "wss://b"] and record["previous_event_id"] == item.event_id
  assert record["stream_uid"] == "0" * 32 and record["mp4_url"] == "https://cdn/x.mp4"
  assert monitor_republished(record) == "REPUBLISHED,%s,%s,%s,,https://cdn/x.mp4" % (
      item.signed["id"], VINE, "0" * 32)


def test_groups_hold_one_item_each_in_flight_and_publish_all(monkeypatch):
  """takes_groups(): (shard, [(item, micros)]) groups; at most one item per group is in
  flight on a relay, every item of every group is published, each with its own timestamp."""
  peaks = []
  submit = RelayPublisher.submit

  def recording_submit(self, event, token=None):
    submit(self, event, token)
    peaks.append(self.unresolved())
  monkeypatch.setattr(RelayPublisher, "submit", recording_submit)
  signer = Signer(generate_private_key())
  items = []
  for n in range(12):
    vine = "MYxVapFvz%02d" % n
    event = signer.sign({"kind": 32222, "created_at": 2, "content": "", "tags": [["d", vine]]})
    items.append(WorkItem(vine_id=vine, source=records.to_source_event(event),
                          migration={"uid": "0" * 32}, signed=event))
  groups = [(shard, [(item, (100 + n) * 10**6) for n, item in enumerate(items) if n % 3 == shard])
            for shard in range(3)]
  windowed = WindowedValue(None, 0, [GlobalWindow()])
  with ScriptedRelay([]) as fake:
    fn = PublishEventsFn([fake.url], "run-1", max_attempts=1).takes_groups()
    fn.setup()
    try:
      fn.start_bundle()
      outputs = [o for group in groups for o in fn.process(group, windowed)]
      outputs += list(fn.finish_bundle())
    finally:
      fn.teardown()
  published = [o for o in outputs if not isinstance(o, TaggedOutput)]
  assert sorted(o.value["vine_id"] for o in published) == sorted(i.vine_id for i in items)
  assert sorted(o.timestamp.micros // 10**6 for o in published) == list(range(100, 112))
  assert len(fake.received) == 12 and peaks and max(peaks) <= 3
