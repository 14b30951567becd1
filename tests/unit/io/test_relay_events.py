"""ReadRelayEvents under TestPipeline: verifies, de-duplicates and keeps the newest version."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.support.vine_events import A, B, vine_event
from transforms.io.relay_events import ReadRelayEvents
from transforms.runtime import outcomes as dl


def test_read_relay_events_verifies_dedupes_and_keeps_newest():
  old = vine_event(A, "MYxVapFvz2z", 100)
  new = vine_event(A, "MYxVapFvz2z", 200)
  other_author = vine_event(B, "MYxVapFvz2z", 50)
  junk = vine_event(A, "openvine_17", 100)
  no_d = vine_event(B, None, 100)
  forged = dict(vine_event(A, "e192BnZnZ9V", 100), content="tampered")
  raw = [old, new, dict(new), other_author, junk, no_d, forged, dict(forged)]  # dupes: 2 relays
  with TestPipeline() as p:
    out = p | ReadRelayEvents(["ws://unused"], "run", raw_events=beam.Create(raw))
    assert_that(out["main"] | beam.Map(lambda kv: (kv[0], kv[1].event["id"])),
                equal_to([("MYxVapFvz2z", new["id"]), ("MYxVapFvz2z", other_author["id"])]),
                label="NewestPerAuthor")
    assert_that(out[dl.SKIPPED] | beam.Map(lambda s: (s["reason"], s["event_id"])),
                equal_to([("no_vine_id", junk["id"]), ("no_vine_id", no_d["id"])]),
                label="Skips")
    assert_that(out[dl.DEAD_LETTER] | beam.Map(
        lambda d: (d["stage"], d["error_class"], d["event_id"], "id does not match" in d["error"])),
        equal_to([("read_events", "bad_input", forged["id"], True)]), label="DeadLetters")
