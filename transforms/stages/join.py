"""JoinOnVineId: CoGroupByKey of metadata rows and relay events on the Vine id.

Input: (vine_id, VineRow) and (vine_id, SourceEvent). Output: one WorkItem per event
(several authors claiming one vine id: each under its own key), with the row when
there is one (else `metadata_missing`) and the author's kind 34236 event at the same
`d` when there is one (`videos`, read with --event-kind 34236|both); a vine with rows
but no event is skipped (`no_event`). Every output is one unit of the accounting (`vines_in`).
With `only_read_events` (--test: the first relay page only), rows without an event are not
judged at all: their events may be on a page that was not read. They are neither skipped
nor counted in, only counted `rows_outside_test_page`.

One author can hold several addresses for one vine (an event without `d` that names
the vine in a `vine_id` tag, and the `d = <vine id>` version we published for it):
only one is worked on, the one at the canonical address `d = <vine id>` if there is
one, else the newest; the others are counted `duplicate_events`, so that a re-run
does not migrate and republish the same vine once per address.
"""

from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.core.ids import usable_openvine_id
from transforms.core.records import SKIP_NO_EVENT, WorkItem, newer
from transforms.nostr.event import first_tag_value
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl

ROWS = "rows"
EVENTS = "events"
VIDEOS = "videos"


ROWS_OUTSIDE_TEST_PAGE = "rows_outside_test_page"
DUPLICATE_EVENTS = "duplicate_events"
DUPLICATE_ROWS = "duplicate_rows"


def _preferred(vine_id: str, a, b):
  """Of two SourceEvents of one author for one vine: the canonical address, else the newer."""
  a_canonical = first_tag_value(a.event["tags"], "d") == vine_id
  b_canonical = first_tag_value(b.event["tags"], "d") == vine_id
  if a_canonical != b_canonical:
    return a if a_canonical else b
  return a if newer(a.event, b.event) is a.event else b


def one_per_author(vine_id: str, sources) -> List[Any]:
  """One SourceEvent per pubkey (see the module docstring), sorted by event id."""
  chosen: Dict[str, Any] = {}
  for source in sources:
    pubkey = source.event["pubkey"]
    chosen[pubkey] = _preferred(vine_id, chosen[pubkey], source) if pubkey in chosen else source
  return sorted(chosen.values(), key=lambda s: s.event["id"])


def pick_openvine_id(openvine_ids) -> Optional[str]:
  """The first id that is safe to send; else the first one (refused later, by name)."""
  for candidate in openvine_ids:
    if usable_openvine_id(candidate):
      return candidate
  return openvine_ids[0] if openvine_ids else None


def classify_group(vine_id: str, grouped: Dict[str, Any],
                   only_read_events: bool = False) -> Iterator[Any]:
  """The pure join decision for one vine id (`only_read_events`: see the module docstring)."""
  rows = list(grouped.get(ROWS) or ())
  all_events = list(grouped.get(EVENTS) or ())
  events = one_per_author(vine_id, all_events)
  if len(all_events) > len(events):
    accounting.inc(DUPLICATE_EVENTS, len(all_events) - len(events))
  if not events and only_read_events:
    accounting.inc(ROWS_OUTSIDE_TEST_PAGE, len(rows))
    return
  if not events:
    accounting.born()
    yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_JOIN, SKIP_NO_EVENT, vine_id, None))
    return
  if len(rows) > 1:
    accounting.inc(DUPLICATE_ROWS, len(rows) - 1)
  row = min(rows, key=lambda r: repr(r)) if rows else None
  videos = {video.key: video for video in grouped.get(VIDEOS) or ()}
  for source in events:
    accounting.born()
    item = WorkItem(vine_id=vine_id, source=source, row=row,
                    openvine_id=pick_openvine_id(source.openvine_ids),
                    video=videos.get(source.key))
    if row is None:
      accounting.inc(accounting.METADATA_MISSING)
      item = item.with_note(accounting.METADATA_MISSING)
    yield item


class _ClassifyJoinFn(beam.DoFn):

  def __init__(self, only_read_events: bool = False):
    super().__init__()
    self._only_read_events = only_read_events

  def process(self, keyed: Tuple[str, Dict[str, Any]]) -> Iterator[Any]:
    vine_id, grouped = keyed
    yield from classify_group(vine_id, grouped, self._only_read_events)


class JoinOnVineId(beam.PTransform):
  """(rows, events[, videos]) -> {main: WorkItem, skipped}."""

  def __init__(self, only_read_events: bool = False):
    """`only_read_events`: judge only vines with an event read (--test); see the module."""
    super().__init__()
    self._only_read_events = only_read_events

  def expand(self, inputs):
    grouped = dict(zip((ROWS, EVENTS, VIDEOS), inputs))
    joined = (grouped
              | "CoGroupByVineId" >> beam.CoGroupByKey()
              | "ClassifyJoined" >> beam.ParDo(_ClassifyJoinFn(self._only_read_events)).with_outputs(
                  dl.SKIPPED, main="main"))
    return {"main": joined.main, dl.SKIPPED: joined[dl.SKIPPED]}
