"""Graph tests with TestPipeline: reading events, the join, and AsyncDoFn's windowing."""

import asyncio

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from transforms.runtime import outcomes as dl
from transforms.runtime.async_dofn import AsyncDoFn
from transforms.stages.join import JoinOnVineId
from transforms.nostr.event import Signer, generate_private_key
from transforms.core.records import parse_row
from transforms.io.relay_events import ReadRelayEvents

A = Signer(generate_private_key())
B = Signer(generate_private_key())


def _ev(signer, d, created_at, extra=()):
  tags = ([["d", d]] if d else []) + [
      ["url", "https://api.openvine.co/media/1751085897568-0fd41442"]] + list(extra)
  return signer.sign({"kind": 32222, "created_at": created_at, "tags": tags, "content": "c"})


def test_read_relay_events_verifies_dedupes_and_keeps_newest():
  old = _ev(A, "MYxVapFvz2z", 100)
  new = _ev(A, "MYxVapFvz2z", 200)
  other_author = _ev(B, "MYxVapFvz2z", 50)
  junk = _ev(A, "openvine_17", 100)
  no_d = _ev(B, None, 100)
  forged = dict(_ev(A, "e192BnZnZ9V", 100), content="tampered")
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


def test_join_outcomes():
  ev1 = _ev(A, "MYxVapFvz2z", 100)
  ev2 = _ev(B, "MYxVapFvz2z", 100)
  ev3 = _ev(A, "e192BnZnZ9V", 100)
  from transforms.core.records import to_source_event
  rows = [parse_row({"vineId": "MYxVapFvz2z", "loops": 1}),
          parse_row({"vineId": "5002wXwQOKX", "loops": 2})]
  with TestPipeline() as p:
    r = p | "Rows" >> beam.Create([(x.vine_id, x) for x in rows])
    e = p | "Events" >> beam.Create([(s.vine_id, s) for s in map(to_source_event, [ev1, ev2, ev3])])
    out = (r, e) | JoinOnVineId()
    assert_that(out["main"] | beam.Map(lambda i: (i.vine_id, i.pubkey, i.row is not None,
                                                  i.notes)),
                equal_to([("MYxVapFvz2z", A.pubkey, True, ()),
                          ("MYxVapFvz2z", B.pubkey, True, ()),
                          ("e192BnZnZ9V", A.pubkey, False, ("metadata_missing",))]),
                label="Items")
    assert_that(out[dl.SKIPPED] | beam.Map(lambda s: (s["vine_id"], s["reason"])),
                equal_to([("5002wXwQOKX", "no_event")]), label="Skips")


class _SlowEcho(AsyncDoFn):
  """Completes elements out of order: larger values finish sooner."""

  async def handle(self, element):
    await asyncio.sleep((10 - element % 10) / 1000.0)
    if element == 13:
      raise ValueError("boom")
    return [element * 2, beam.pvalue.TaggedOutput("odd", element)] if element % 2 else [element * 2]

  def on_unexpected(self, element, exc):
    return [beam.pvalue.TaggedOutput("failed", (element, str(exc)))]


def test_async_dofn_keeps_windows_and_loses_nothing():
  with TestPipeline() as p:
    out = (p | beam.Create(list(range(40)))
           | beam.Map(lambda x: window.TimestampedValue(x, x))
           | beam.WindowInto(window.FixedWindows(10))
           | beam.ParDo(_SlowEcho(max_in_flight=4)).with_outputs("odd", "failed", main="main"))
    sums = (out.main | beam.Map(lambda x: ("k", x)) | beam.CombinePerKey(sum)
            | beam.Map(lambda kv: kv[1]))
    # Per-window sums prove each output kept its input's window.
    expected = [sum(2 * x for x in range(w, w + 10) if x != 13) for w in (0, 10, 20, 30)]
    assert_that(sums, equal_to(expected), label="PerWindow")
    assert_that(out.odd, equal_to([x for x in range(40) if x % 2 and x != 13]), label="Odd")
    assert_that(out.failed, equal_to([(13, "boom")]), label="Failed")
