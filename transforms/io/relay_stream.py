"""ReadStreamEvents: the streaming counterpart of ReadRelayEvents.

    SubscribeRelayEvents -> VerifyEvents -> KeepNewestPerAddress -> ExtractVineIds

Events arrive from an open relay subscription (transforms/io/relay_subscription.py),
de-duplicated by id and without the pipeline's own republished events. There is no
CoGroupByKey in streaming: metadata is looked up per event (row_lookup.py), so no
window ever waits for the other side of a join, and late data has nothing to be late
for: every event is processed whenever it arrives. What batch does with a combine
(keep the newest version per (pubkey, d)) streaming does with per-key state in the
global window: a version older than one already processed is skipped `superseded`.
"""

from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.io.relay_events import INVALID, ClassifyEventFn, InvalidEventFn, ValidateEventFn
from transforms.io.relay_subscription import SubscribeRelayEvents

SKIP_SUPERSEDED = "superseded"


class KeepNewestPerAddressFn(beam.DoFn):
  """((pubkey, d), event) -> the same, unless a newer version was already processed."""

  NEWEST = ReadModifyWriteStateSpec("newest", coders.TupleCoder(
      (coders.VarIntCoder(), coders.StrUtf8Coder())))

  def process(self, keyed, newest=beam.DoFn.StateParam(NEWEST)) -> Iterator[Any]:
    _, event = keyed
    seen = newest.read()
    mine = (event["created_at"], event["id"])
    # A relay keeps the highest created_at, then the lowest id.
    if seen is not None and (seen[0] > mine[0] or (seen[0] == mine[0] and seen[1] <= mine[1])):
      accounting.born()
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_READ_EVENTS, SKIP_SUPERSEDED, None,
                                                  event["id"]))
      return
    newest.write(mine)
    yield keyed


class ReadStreamEvents(beam.PTransform):
  """PBegin -> {main: (vine_id, SourceEvent), skipped, dead_letter}, unbounded."""

  def __init__(self, relays: Sequence[str], run_id: str, since: int,
               raw_events: Optional[beam.PTransform] = None):
    super().__init__()
    self._relays = list(relays)
    self._run_id = run_id
    self._since = since
    self._raw_events = raw_events

  def expand(self, pbegin):
    raw = pbegin | "SubscribeRelayEvents" >> SubscribeRelayEvents(
        self._relays, self._since, raw_events=self._raw_events)
    checked = raw | "VerifyEvents" >> beam.ParDo(ValidateEventFn()).with_outputs(
        INVALID, main="valid")
    invalid = (checked[INVALID]
               | "ListInvalid" >> beam.Map(lambda kv: (kv[0], [kv[1]]))
               | "DeadLetterInvalid" >> beam.ParDo(InvalidEventFn(self._run_id)))
    newest = checked.valid | "KeepNewestPerAddress" >> beam.ParDo(
        KeepNewestPerAddressFn()).with_outputs(dl.SKIPPED, main="main")
    classified = newest.main | "ExtractVineIds" >> beam.ParDo(ClassifyEventFn(
        self._run_id, reject_future=True)).with_outputs(dl.SKIPPED, dl.DEAD_LETTER, main="main")
    skipped = ((newest[dl.SKIPPED], classified[dl.SKIPPED])
               | "FlattenStreamSkips" >> beam.Flatten())
    dead = ((invalid, classified[dl.DEAD_LETTER])
            | "FlattenStreamEventDeadLetters" >> beam.Flatten())
    return {"main": classified.main, dl.SKIPPED: skipped, dl.DEAD_LETTER: dead}
