"""The streaming graph on the DirectRunner with TestStream as the relay subscription.

The stages talk to the real relay process and the emulator; TestStream drives event
arrival, watermark advance, duplicates across relays, an older version after a newer
one, the pipeline's own output coming back, and a late event.
"""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms import window

from devstack.stack import LocalStack
from pipeline.graph import DEAD_LETTERS, PUBLISHED, SKIPPED, IOSet, build_graph
from pipeline.options import MigrationOptions
from tests.support.runs import read_ndjson
from transforms.keys.store import KeyStore
from transforms.nostr.event import Signer, first_tag_value, generate_private_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("stream")), n_vines=12, seed=3,
                  publish=False) as s:
    yield s


def test_streaming_graph_with_test_stream(stack, monkeypatch):
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", stack.token)
  events = read_ndjson(stack.path("events.ndjson"))
  planted = stack.manifest["planted"]
  by_id = {e["id"]: e for e in events}
  for superseded in stack.manifest["superseded"]:
    events.remove(by_id[superseded["event_id"]])
  # An older version of one address, signed by its author, arriving after the newest.
  keys = KeyStore.load(stack.path("keys.db"))
  newest = next(e for e in events if keys.signer_for(e["pubkey"]) and first_tag_value(e["tags"], "d")
                and e["id"] != planted["missing_openvine_video"]["event_id"])
  older = keys.signer_for(newest["pubkey"]).sign(dict(newest, created_at=newest["created_at"] - 9))
  late = events.pop()  # arrives after the watermark passed its timestamp
  first, second = events[:len(events) // 2], events[len(events) // 2:]
  own = Signer(generate_private_key()).sign({
      "kind": 32222, "created_at": 1, "content": "",
      "tags": [["d", "MYxVapFvz2z"], ["stream_uid", "0" * 32],
               ["migration", "openvine-to-stream", "0" * 32]]})

  stream = (TestStream()
            .add_elements([window.TimestampedValue(e, 10) for e in first])
            .advance_watermark_to(20)
            # The same events again, as from a second relay; our own output; an older version.
            .add_elements([window.TimestampedValue(e, 25) for e in first[:5]]
                          + [window.TimestampedValue(own, 25), window.TimestampedValue(older, 26)]
                          + [window.TimestampedValue(e, 30) for e in second])
            .advance_watermark_to(40)
            .add_elements([window.TimestampedValue(late, 5)])
            .advance_watermark_to_infinity())
  options = PipelineOptions(stack.pipeline_args(extra=[
      "--streaming", "--run-id", "stream-test", "--retry-base-delay", "0.01"]))
  options.view_as(StandardOptions).streaming = True
  p = beam.Pipeline(options=options)
  outputs = build_graph(p, options.view_as(MigrationOptions), "stream-test",
                        IOSet(raw_events=stream))

  no_key = set(planted["no_signing_key"]["vine_ids"])
  rows_vines = {first_tag_value(e["tags"], "d") for e in events + [late]} - {None}
  expected_published = sorted(rows_vines - no_key - {planted["missing_openvine_video"]["vine_id"],
                                                     planted["forged_signature"]["vine_id"]})
  assert_that(outputs[PUBLISHED] | "PublishedIds" >> beam.Map(lambda r: r["vine_id"]),
              equal_to(expected_published), label="Published")
  assert_that(outputs[DEAD_LETTERS] | "DeadKinds" >> beam.Map(
      lambda d: (d["stage"], d["error_class"], d["event_id"])),
      equal_to(sorted([("migrate", "permanent", planted["missing_openvine_video"]["event_id"]),
                       ("read_events", "bad_input", planted["forged_signature"]["event_id"])]
                      + [("sign", "permanent", e) for e in planted["no_signing_key"]["event_ids"]])),
      label="DeadLetters")
  assert_that(outputs[SKIPPED] | "SkipReasons" >> beam.Map(lambda s: (s["reason"], s["event_id"])),
              equal_to([("superseded", older["id"]),
                        ("no_vine_id", planted["event_without_d"]["event_id"])]),
              label="Skips")
  # Outputs keep the arrival time of their event: the late one lands in its own window.
  def vines(batch):
    return sorted({first_tag_value(e["tags"], "d") for e in batch} & set(expected_published))
  per_window = {window.IntervalWindow(0, 20): vines(first + [late]),
                window.IntervalWindow(20, 40): vines(second)}
  assert per_window[window.IntervalWindow(20, 40)] and per_window[window.IntervalWindow(0, 20)]
  assert_that(outputs[PUBLISHED]
              | "WindowPublished" >> beam.WindowInto(window.FixedWindows(20))
              | "PublishedIdsPerWindow" >> beam.Map(lambda r: r["vine_id"]),
              equal_to_per_window(per_window), use_global_window=False, label="PerWindow")
  result = p.run()
  result.wait_until_finish()
  relay = stack.relay_events()
  assert sorted(first_tag_value(e["tags"], "d") for e in relay) == expected_published
  assert newest["id"] not in {e["id"] for e in relay}  # replaced by its migrated version
