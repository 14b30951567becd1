"""JoinOnVineId under TestPipeline: each author's event with its row, rows without event skipped."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.support.vine_events import A, B, vine_event
from transforms.core.rows import parse_row
from transforms.runtime import outcomes as dl
from transforms.stages.join import JoinOnVineId


def test_join_outcomes():
  ev1 = vine_event(A, "MYxVapFvz2z", 100)
  ev2 = vine_event(B, "MYxVapFvz2z", 100)
  ev3 = vine_event(A, "e192BnZnZ9V", 100)
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
