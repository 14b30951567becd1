"""JoinOnVineId under TestPipeline: each author's event with its row, rows without event skipped
(in --test mode: neither skipped nor counted in)."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.support.vine_events import A, B, vine_event
from transforms.core import records
from transforms.core.rows import parse_row
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.stages.join import ROWS_OUTSIDE_TEST_PAGE, JoinOnVineId, classify_group


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


def test_test_mode_neither_skips_nor_counts_rows_without_a_read_event(clean_tally):
  row = parse_row({"vineId": "5002wXwQOKX", "loops": 2})
  grouped = {"rows": [row], "events": []}
  assert list(classify_group("5002wXwQOKX", grouped, only_read_events=True)) == []
  live = accounting.live_counts()
  assert live.get(accounting.VINES_IN, 0) == 0 and live[ROWS_OUTSIDE_TEST_PAGE] == 1
  (skip,) = classify_group("5002wXwQOKX", grouped)  # a full read: it is a no_event skip
  assert skip.value["reason"] == "no_event" and accounting.live_counts()[accounting.VINES_IN] == 1
  source = records.to_source_event(vine_event(A, "MYxVapFvz2z", 100))
  (item,) = classify_group("MYxVapFvz2z", {"rows": [parse_row({"vineId": "MYxVapFvz2z"})],
                                           "events": [source]}, only_read_events=True)
  assert item.row is not None and accounting.live_counts()[accounting.VINES_IN] == 2
