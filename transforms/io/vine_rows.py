"""ReadVineRows: the Vine metadata rows, from BigQuery in production or NDJSON locally.

Output: (vine_id, VineRow); tagged dead letters for rows that cannot be used.
The query is the seed's (the LEFT JOIN, its columns, its hashtags) over the tables of
--bigquery-project / --bigquery-dataset, less its `SELECT DISTINCT`: DISTINCT over a row that
holds an ARRAY (`hashtags`) is refused by GoogleSQL engines that cannot group arrays, and
JoinOnVineId already keeps one row per vine id (the others counted `duplicate_rows`), so the
rows that reach the stages are the same. Hashtags are re-extracted Unicode-aware in
core.rows.parse_row (the query's RE2 `\\w` is ASCII-only).

A query read writes its result to a temporary table; without --bigquery-temp-dataset Beam
creates a temporary dataset for it, which needs `bigquery.datasets.create` (docs/dataflow.md).
"""

import json
import logging
import re
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam import coders
from apache_beam.pvalue import TaggedOutput

from transforms.core.records import BadInput
from transforms.core.rows import parse_row
from transforms.core.text import json_safe
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl

_LOG = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z0-9_\-]{1,1024}$")

# Ends with the join so that a caller may append a WHERE (row_lookup.py does).
SEED_QUERY = """SELECT
    p.vineId,
    p.authorName as username,
    p.description,
    CAST(p.loops AS INT64) as loops,
    p.like_count as likes,
    CAST(vp.comment_count AS INT64) as comment_count,
    CAST(vp.repost_count AS INT64) as repost_count,
    UNIX_SECONDS(vp.created_at) as created_timestamp,
    ARRAY(
        SELECT DISTINCT LOWER(REGEXP_EXTRACT(tag, r'#(\\w+)'))
        FROM UNNEST(REGEXP_EXTRACT_ALL(p.description, r'#\\w+')) as tag
    ) as hashtags
FROM `{project}.{dataset}.posts_with_archived_videos` p
LEFT JOIN `{project}.{dataset}.vine_posts` vp ON p.vineId = vp.id"""


def is_bigquery_identifier(value: Any) -> bool:
  """A project or dataset name that is safe to put into the query's SQL."""
  return isinstance(value, str) and bool(_IDENT.match(value))


def seed_query(project: str, dataset: str) -> str:
  """The seed's query over project.dataset; names are validated (they go into SQL)."""
  for flag, value in (("--bigquery-project", project), ("--bigquery-dataset", dataset)):
    if not is_bigquery_identifier(value):
      raise ValueError("%s is missing or not a valid BigQuery identifier" % flag)
  return SEED_QUERY.format(project=project, dataset=dataset)


TEMP_DATASET_FLAG = "--bigquery-temp-dataset"
_BEAM_TEMP_PREFIX = "beam_temp_dataset_"  # Beam's own temporary datasets; it deletes those


def temp_dataset_reference(spec: str):
  """'PROJECT:DATASET' (or 'PROJECT.DATASET') -> the DatasetReference ReadFromBigQuery takes.

  Raises ValueError naming the flag when the value is not two identifiers or uses the
  prefix Beam reserves for the datasets it creates and deletes itself.
  """
  parts = re.split(r"[:.]", spec or "", maxsplit=1)
  if len(parts) != 2 or not all(is_bigquery_identifier(part) for part in parts):
    raise ValueError("%s: %r must be PROJECT:DATASET" % (TEMP_DATASET_FLAG, spec))
  if parts[1].startswith(_BEAM_TEMP_PREFIX):
    raise ValueError("%s: a dataset named %s* is Beam's own; name an existing dataset"
                     % (TEMP_DATASET_FLAG, _BEAM_TEMP_PREFIX))
  from apache_beam.io.gcp.internal.clients import bigquery  # pylint: disable=import-outside-toplevel
  return bigquery.DatasetReference(projectId=parts[0], datasetId=parts[1])


class ParseRowFn(beam.DoFn):
  """dict (BigQuery row) or str (NDJSON line) -> (vine_id, VineRow); bad rows dead-lettered."""

  def __init__(self, run_id: str):
    super().__init__()
    self._run_id = run_id

  def process(self, raw: Any) -> Iterator[Any]:
    accounting.inc(accounting.ROWS_READ)
    try:
      if isinstance(raw, bytes):
        try:
          raw = raw.decode("utf-8")
        except UnicodeDecodeError:
          raw = raw[:2000].decode("utf-8", "backslashreplace")
          raise BadInput("row is not valid UTF-8") from None
      if isinstance(raw, str):
        try:
          raw = json.loads(raw)
        except ValueError:
          raise BadInput("row is not valid JSON") from None
      row = parse_row(raw)
    except BadInput as exc:
      accounting.born()
      vine_id = raw.get("vineId") if isinstance(raw, dict) else None
      # json_safe: a lone surrogate (from a "\\ud800" escape) would crash the writer.
      yield TaggedOutput(dl.DEAD_LETTER, dl.make_dead_letter(
          self._run_id, dl.STAGE_READ_ROWS, dl.BAD_INPUT, json_safe(str(exc)),
          vine_id=json_safe(str(vine_id)[:64]) if vine_id is not None else None,
          payload={"row": json_safe(raw)}))
      return
    yield row.vine_id, row


class ReadVineRows(beam.PTransform):
  """PBegin -> {main: (vine_id, VineRow), dead_letter}."""

  def __init__(self, run_id: str, rows_path: Optional[str] = None,
               project: Optional[str] = None, dataset: Optional[str] = None,
               raw_rows=None, bigquery_method: str = "DIRECT_READ",
               temp_dataset: Optional[str] = None):
    super().__init__()
    self._run_id = run_id
    self._rows_path = rows_path
    self._project = project
    self._dataset = dataset
    self._raw_rows = raw_rows  # a PTransform yielding dicts or lines (tests, replay)
    self._method = bigquery_method
    self._temp_dataset = temp_dataset  # 'PROJECT:DATASET' for the query's result table, or None

  def bigquery_read_args(self):
    """The keyword arguments of the ReadFromBigQuery this read builds (tests inspect them)."""
    args = {"query": seed_query(self._project, self._dataset), "use_standard_sql": True,
            "method": getattr(beam.io.ReadFromBigQuery.Method, self._method)}
    if self._temp_dataset:
      # Only with the key present does Beam write into this dataset instead of creating one.
      args["temp_dataset"] = temp_dataset_reference(self._temp_dataset)
    return args

  def expand(self, pbegin):
    if self._raw_rows is not None:
      raw = pbegin | "ReadRawRows" >> self._raw_rows
    elif self._rows_path:
      # Bytes: a line that is not UTF-8 must become a dead letter, not a crash of the read.
      raw = pbegin | "ReadRowsFile" >> beam.io.ReadFromText(self._rows_path,
                                                           coder=coders.BytesCoder())
    else:
      raw = pbegin | "QueryBigQuery" >> beam.io.ReadFromBigQuery(**self.bigquery_read_args())
    parsed = raw | "ParseRows" >> beam.ParDo(ParseRowFn(self._run_id)).with_outputs(
        dl.DEAD_LETTER, main="main")
    return {"main": parsed.main, dl.DEAD_LETTER: parsed[dl.DEAD_LETTER]}
