"""LookupVineRows: per-event metadata lookups for streaming, batched and cached.

In streaming the whole BigQuery table cannot be re-read per window, and a side input
of a million rows refreshed periodically would hold hundreds of MB on every worker.
So each bundle's vine ids are looked up in one query and remembered in a bounded LRU
cache. The BigQuery lookup runs the seed's query restricted with a query parameter
(`WHERE p.vineId IN UNNEST(@ids)`): ids never enter the SQL text, and they are
validated as Vine ids before that anyway. A missing row means `metadata_missing`,
as in batch. Locally (`--rows`) the same lookup reads the NDJSON file.

Input: (vine_id, SourceEvent). Output: WorkItem.
"""

import collections
import json
import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.core.ids import is_vine_id
from transforms.core.records import BadInput, VineRow, WorkItem
from transforms.core.rows import parse_row
from transforms.io.vine_rows import seed_query
from transforms.runtime import accounting

_LOG = logging.getLogger(__name__)

CACHE_SIZE = 100_000
ROW_LOOKUPS = "row_lookups"  # counter: ids looked up (cache misses)
# The seed query has no WHERE of its own, so this suffix is its only filter.
LOOKUP_QUERY_SUFFIX = "\nWHERE p.vineId IN UNNEST(@ids)"


class FileRowLookup:
  """Rows from a local NDJSON file (the local stack's stand-in for BigQuery)."""

  def __init__(self, path: str):
    self._rows: Dict[str, Dict[str, Any]] = {}
    for match in FileSystems.match([path])[0].metadata_list:
      with FileSystems.open(match.path) as f:
        for line in f:
          line = line.strip()
          if line:
            try:
              raw = json.loads(line)
            except ValueError:
              continue
            if isinstance(raw, dict) and is_vine_id(raw.get("vineId")):
              self._rows.setdefault(raw["vineId"], raw)

  def lookup(self, vine_ids: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    return {v: self._rows[v] for v in vine_ids if v in self._rows}


class BigQueryRowLookup:
  """The seed's query for a batch of vine ids, as a parameterised BigQuery query."""

  def __init__(self, project: str, dataset: str, client=None):
    self._sql = seed_query(project, dataset) + LOOKUP_QUERY_SUFFIX
    if client is None:
      from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
      client = bigquery.Client(project=project)
    self._client = client

  def lookup(self, vine_ids: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    ids = sorted(set(vine_ids))
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)])
    rows = self._client.query(self._sql, job_config=config).result()
    return {dict(r)["vineId"]: dict(r) for r in rows}


class LookupVineRowsFn(beam.DoFn):
  """(vine_id, SourceEvent) -> WorkItem with its row (or `metadata_missing`)."""

  def __init__(self, rows_path: Optional[str] = None, project: Optional[str] = None,
               dataset: Optional[str] = None, batch_size: int = 200, lookup_factory=None):
    super().__init__()
    self._rows_path = rows_path
    self._project = project
    self._dataset = dataset
    self._batch_size = batch_size
    self._lookup_factory = lookup_factory  # tests inject a fake client this way

  def setup(self):
    if self._lookup_factory is not None:
      self._lookup = self._lookup_factory()
    elif self._rows_path:
      self._lookup = FileRowLookup(self._rows_path)
    else:
      self._lookup = BigQueryRowLookup(self._project, self._dataset)
    self._cache: "collections.OrderedDict[str, Optional[VineRow]]" = collections.OrderedDict()

  def start_bundle(self):
    self._pending: List[Any] = []

  def process(self, keyed, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    self._pending.append((keyed, timestamp, window))
    if len(self._pending) >= self._batch_size:
      yield from self._flush()

  def finish_bundle(self):
    yield from self._flush()

  def _flush(self) -> Iterator[Any]:
    from transforms.runtime.async_dofn import wrap_output  # pylint: disable=import-outside-toplevel
    pending, self._pending = self._pending, []
    missing = sorted({kv[0] for kv, _, _ in pending if kv[0] not in self._cache})
    if missing:
      found = self._lookup.lookup(missing)
      accounting.inc(ROW_LOOKUPS, len(missing))
      for vine_id in missing:
        raw = found.get(vine_id)
        try:
          row = parse_row(raw) if raw is not None else None
        except BadInput:
          row = None
        self._remember(vine_id, row)
    for (vine_id, source), timestamp, window in pending:
      row = self._cache.get(vine_id)
      accounting.born()
      item = WorkItem(vine_id=vine_id, source=source, row=row,
                      openvine_id=source.openvine_ids[0] if source.openvine_ids else None)
      if row is None:
        accounting.inc(accounting.METADATA_MISSING)
        item = item.with_note(accounting.METADATA_MISSING)
      yield wrap_output(item, timestamp, window)

  def _remember(self, vine_id: str, row: Optional[VineRow]) -> None:
    self._cache[vine_id] = row
    self._cache.move_to_end(vine_id)
    while len(self._cache) > CACHE_SIZE:
      self._cache.popitem(last=False)
