"""Tests for transforms.io.relay_stream: the streaming source (SubscribeRelayEvents and its
splittable DoFn), against real LocalRelay processes (devstack.relay).

The FnApiRunner behind the DirectRunner cannot run an unbounded SDF through a
GroupByKey, so the SDF's process() is driven the way a runner drives it: a real
tracker and watermark estimator per call, the deferred residual fed to the next
call. The subscription client itself is tested in
tests/unit/clients/relay/test_subscription.py.
"""

import json
import time

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Duration, Timestamp

from devstack.relay import RelayProcess
from tests.support.hostile_messages import MESSAGES
from tests.support.memory_relay import MemoryRelay
from tests.unit.clients.relay.helpers import publish_accepted, sorted_ids, video_event
from transforms.io.relay_stream import (
    MAX_POSITION,
    OWN_EVENTS_IGNORED,
    STREAM_STATE_EXPIRED,
    KeepNewestPerAddressFn,
    ReadRelaySubscriptionFn,
    SubscribeRelayEvents,
    SubscriptionTracker,
    is_own_event,
)
from transforms.nostr.event import Signer, generate_private_key
from transforms.runtime import accounting
from transforms.runtime.accounting import NAMESPACE

_UID = "0123456789abcdef0123456789abcdef"


# ---------------------------------------------------------------------------
# Pure parts.


def test_is_own_event_needs_migration_tag_and_matching_stream_uid():
  own = {"tags": [["d", "x"], ["migration", "openvine-to-stream", _UID], ["stream_uid", _UID]]}
  assert is_own_event(own)
  other_uid = {"tags": [["migration", "openvine-to-stream", _UID], ["stream_uid", "f" * 32]]}
  assert not is_own_event(other_uid)
  assert not is_own_event({"tags": [["migration", "openvine-to-stream", _UID]]})
  assert not is_own_event({"tags": [["migration", "other-migration", _UID], ["stream_uid", _UID]]})
  assert not is_own_event({"tags": [["d", "x"]]})
  for junk in (None, "event", {}, {"tags": "x"}, {"tags": [7, None]}, {"tags": [["migration"]]}):
    assert not is_own_event(junk)


def test_tracker_repeats_claims_checkpoints_and_refuses_other_splits():
  tracker = SubscriptionTracker(OffsetRange(100, MAX_POSITION))
  assert tracker.try_claim(105) and tracker.try_claim(105) and tracker.try_claim(107)
  with pytest.raises(ValueError):
    tracker.try_claim(106)
  assert tracker.try_split(0.5) is None
  primary, residual = tracker.try_split(0)
  assert (primary, residual) == (OffsetRange(100, 108), OffsetRange(108, MAX_POSITION))
  assert not tracker.try_claim(107)
  tracker.check_done()
  idle = SubscriptionTracker(OffsetRange(100, MAX_POSITION))
  assert idle.try_split(0)[1] == OffsetRange(100, MAX_POSITION)
  idle.check_done()


def test_composite_drops_own_events_and_duplicates_across_relays():
  now = int(time.time())
  first, second = video_event(now - 5, 1), video_event(now - 4, 2)
  own = video_event(now - 3, 3,
                    tags=[["migration", "openvine-to-stream", _UID], ["stream_uid", _UID]])
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([first, own, second])
            .advance_processing_time(1)
            .add_elements([first, second])  # the same events from a second relay
            .advance_watermark_to_infinity())
  p = test_pipeline.TestPipeline(options=PipelineOptions(streaming=True))
  out = p | "Subscribe" >> SubscribeRelayEvents(["ws://127.0.0.1:1"], since=0, raw_events=stream)
  assert_that(out | beam.Map(lambda e: e["id"]), equal_to([first["id"], second["id"]]),
              label="CheckEvents")
  result = p.run()
  result.wait_until_finish()
  counters = result.metrics().query(
      MetricsFilter().with_namespace(NAMESPACE).with_name(OWN_EVENTS_IGNORED))["counters"]
  assert sum(c.committed for c in counters) == 1


# ---------------------------------------------------------------------------
# The SDF, driven the way a runner drives it.


def _bundle_or_none(fn, element, restriction, watermark=None):
  """One process() call as a runner makes it: (outputs, residual, delay, watermark)."""
  tracker = ThreadsafeRestrictionTracker(SubscriptionTracker(restriction))
  estimator = ManualWatermarkEstimator(watermark)
  out = list(fn.process(element, tracker=RestrictionTrackerView(tracker),
                        watermark_estimator=estimator))
  tracker.check_done()
  residual, delay = tracker.deferred_status() or (None, None)
  return out, residual, delay, estimator.current_watermark()


def _bundle(fn, element, restriction, watermark):
  out, residual, delay, mark = _bundle_or_none(fn, element, restriction, watermark)
  assert residual is not None  # an unbounded read always defers its remainder
  return out, residual, delay, mark


def test_sdf_checkpoints_resumes_and_survives_a_restart(tmp_path):
  fn = ReadRelaySubscriptionFn(max_bundle_events=3, max_bundle_seconds=5.0, idle_seconds=0.5,
                               resume_delay_seconds=1.0, watermark_lag_seconds=2.0)
  fn.setup()
  try:
    with RelayProcess(lmdb=str(tmp_path / "lmdb")) as proc:
      now = int(time.time())
      backlog = [video_event(now - 20 + i, 500 + i) for i in range(5)]
      publish_accepted(proc.url, backlog)
      element = (proc.url, now - 60)
      restriction, watermark = OffsetRange((now - 60) * 1000, MAX_POSITION), None
      seen, delays = [], []
      for _ in range(3):
        out, restriction, delay, new_mark = _bundle(fn, element, restriction, watermark)
        for value in out:
          assert watermark is None or value.timestamp >= watermark
        assert watermark is None or new_mark >= watermark
        watermark = new_mark
        seen.extend(v.value for v in out)
        delays.append(delay)
      # 5 events with a budget of 3: a full bundle resumes at once, an idle one after a delay.
      assert sorted_ids(seen) == sorted_ids(backlog)
      assert delays[0] == Duration(0) and Duration(0.5) < delays[-1] <= Duration(1.0)
      # Two checkpoints inside the newest event's second, no drift past it.
      assert restriction.start == max(e["created_at"] for e in backlog) * 1000 + 2
      assert watermark <= Timestamp.now() - 1.9

      proc.stop()
      out, restriction, _, watermark = _bundle(fn, element, restriction, watermark)
      assert out == []
      proc.start()
      during = [video_event(int(time.time()) - 1, 600), video_event(int(time.time()), 601)]
      publish_accepted(proc.url, during)
      got = []
      for _ in range(6):
        out, restriction, _, watermark = _bundle(fn, element, restriction, watermark)
        got.extend(v.value for v in out)
        if len(got) >= 2:
          break
      assert sorted_ids(got) == sorted_ids(during)

      # The residual moves to another worker: a new subscription from start - overlap.
      # It may re-read the overlap (the composite's dedupe drops those), never loses.
      other = ReadRelaySubscriptionFn(idle_seconds=0.5, max_bundle_seconds=3.0)
      other.setup()
      try:
        last = [video_event(int(time.time()), 602)]
        publish_accepted(proc.url, last)
        out, _, _, _ = _bundle(other, element, restriction, watermark)
        ids = {v.value["id"] for v in out}
        assert last[0]["id"] in ids
        assert ids <= {e["id"] for e in seen + got + last}
      finally:
        other.teardown()
  finally:
    fn.teardown()


def test_sdf_ends_the_restriction_of_a_bad_url_instead_of_failing():
  fn = ReadRelaySubscriptionFn()
  fn.setup()
  out, residual, _, _ = _bundle_or_none(fn, ("http://relay.example", 0),
                                        OffsetRange(0, MAX_POSITION))
  assert out == [] and residual is None


@pytest.mark.usefixtures("clean_tally")
def test_sdf_counts_dropped_messages_and_events_outside_the_filter():
  now = int(time.time())
  event = video_event(now - 5, 700)
  note = Signer(generate_private_key()).sign({"kind": 1, "created_at": now - 5, "content": "",
                                              "tags": [["d", "vine0000700"]]})
  fn = ReadRelaySubscriptionFn(max_bundle_events=5, max_bundle_seconds=5.0, idle_seconds=1.0)
  seen = []
  # Ahead of each REQ's answer: the hostile messages and a kind-1 note (outside the filter).
  def before_events(sub):
    return list(MESSAGES) + [json.dumps(["EVENT", sub, note])]

  with MemoryRelay([event], before_events=before_events) as relay:
    fn.setup()  # torn down before the relay: its server waits for the client to close
    try:
      element = (relay.url, now - 60)
      restriction = OffsetRange((now - 60) * 1000, MAX_POSITION)
      for _ in range(10):  # bundles until the event arrived: how soon is the machine's business
        out, restriction, _, _ = _bundle(fn, element, restriction, None)
        seen.extend(v.value["id"] for v in out)
        if seen:
          break
    finally:
      fn.teardown()
  assert seen == [event["id"]]
  # The first REQ's messages came before the event, so they were counted; a later REQ's
  # (a page backwards) may still be in flight when the bundle ends: at most every REQ's.
  live = accounting.live_counts()
  assert len(MESSAGES) <= live[accounting.RELAY_MESSAGES_DROPPED] <= len(MESSAGES) * relay.reqs
  assert 1 <= live[accounting.EVENTS_OUTSIDE_FILTER] <= relay.reqs


# ---------------------------------------------------------------------------
# The newest version per address, and its expiry.


@pytest.mark.usefixtures("clean_tally")
def test_newest_version_state_expires_after_its_ttl():
  """Before the timer fires an older version is superseded; after it, the state is gone
  and the same older version passes (the ttl is processing time: TestStream's clock)."""
  signer = Signer(generate_private_key())
  newer, older = (signer.sign({"kind": 32222, "created_at": at, "content": "",
                               "tags": [["d", "MYxVapFvz2z"]]}) for at in (200, 100))
  key = (signer.pubkey, "MYxVapFvz2z")
  ttl = 60
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([(key, newer)])
            .add_elements([(key, older)])  # superseded: the newer one is remembered
            # TestStream's processing-time clock starts at 0; timers are set from wall time.
            .advance_processing_time(int(time.time()) + 100 * ttl)
            .add_elements([(key, older)])  # the state expired: it passes
            .advance_watermark_to_infinity())
  p = test_pipeline.TestPipeline(options=PipelineOptions(streaming=True))
  out = (p | stream | beam.ParDo(KeepNewestPerAddressFn(ttl_seconds=ttl)).with_outputs(
      "skipped", main="main"))
  assert_that(out.main | "Ids" >> beam.Map(lambda kv: kv[1]["id"]),
              equal_to([newer["id"], older["id"]]), label="Kept")
  assert_that(out.skipped | "Skips" >> beam.Map(lambda s: (s["reason"], s["event_id"])),
              equal_to([("superseded", older["id"])]), label="Skipped")
  p.run().wait_until_finish()
  # Both kept versions expired: the test clock is past the second timer too. (The live
  # tally: a timer callback may run outside a metrics container on this runner.)
  assert accounting.live_counts()[STREAM_STATE_EXPIRED] == 2
