"""JoinOnVineId: CoGroupByKey of metadata rows and relay events on the Vine id.

Input: (vine_id, VineRow) and (vine_id, SourceEvent). Output: one WorkItem per event
(several authors claiming one vine id: each under its own key), with the row when
there is one (else `metadata_missing`); a vine with rows but no event is skipped
(`no_event`). Every output is one unit of the accounting (`vines_in`).
"""

from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms import accounting
from transforms import dead_letters as dl
from transforms.records import SKIP_NO_EVENT, WorkItem

ROWS = "rows"
EVENTS = "events"


def classify_group(vine_id: str, grouped: Dict[str, Any]) -> Iterator[Any]:
  """The pure join decision for one vine id."""
  rows = list(grouped.get(ROWS) or ())
  events = sorted(grouped.get(EVENTS) or (), key=lambda s: s.event["id"])
  if not events:
    accounting.born()
    accounting.skipped(SKIP_NO_EVENT)
    yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_JOIN, SKIP_NO_EVENT, vine_id, None))
    return
  if len(rows) > 1:
    accounting.inc("duplicate_rows", len(rows) - 1)
  row = min(rows, key=lambda r: repr(r)) if rows else None
  for source in events:
    accounting.born()
    item = WorkItem(vine_id=vine_id, source=source, row=row,
                    openvine_id=source.openvine_ids[0] if source.openvine_ids else None)
    if row is None:
      accounting.inc(accounting.METADATA_MISSING)
      item = item.with_note(accounting.METADATA_MISSING)
    yield item


class _ClassifyJoinFn(beam.DoFn):

  def process(self, keyed: Tuple[str, Dict[str, Any]]) -> Iterator[Any]:
    vine_id, grouped = keyed
    yield from classify_group(vine_id, grouped)


class JoinOnVineId(beam.PTransform):
  """(rows, events) -> {main: WorkItem, skipped}."""

  def expand(self, inputs):
    rows, events = inputs
    joined = ({ROWS: rows, EVENTS: events}
              | "CoGroupByVineId" >> beam.CoGroupByKey()
              | "ClassifyJoined" >> beam.ParDo(_ClassifyJoinFn()).with_outputs(
                  dl.SKIPPED, main="main"))
    return {"main": joined.main, dl.SKIPPED: joined[dl.SKIPPED]}
