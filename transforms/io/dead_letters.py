"""ReadDeadLetters: earlier runs' dead letters, for --mode replay.

From local NDJSON files (a glob; what `WriteDeadLetters` wrote) or from the BigQuery
dead-letter table (`bq:project:dataset.table`). The rows are the shape
`transforms.runtime.outcomes.make_dead_letter` builds; `transforms.stages.replay`
turns them back into WorkItems.
"""

import json

import apache_beam as beam


class ReadDeadLetters(beam.PTransform):
  """PBegin -> dead letter dicts, from an NDJSON glob or a BigQuery table spec."""

  def __init__(self, source: str, raw=None):
    super().__init__()
    self._source = source
    self._raw = raw

  def expand(self, pbegin):
    if self._raw is not None:
      return pbegin | "ReadRawDeadLetters" >> self._raw
    if self._source.startswith("bq:"):
      table = self._source[3:]
      return pbegin | "ReadDeadLetterTable" >> beam.io.ReadFromBigQuery(
          table=table, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ)
    return (pbegin
            | "ReadDeadLetterFiles" >> beam.io.ReadFromText(self._source)
            | "DecodeDeadLetters" >> beam.Map(json.loads))
