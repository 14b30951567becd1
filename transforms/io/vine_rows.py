"""ReadVineRows: the Vine metadata rows, from BigQuery in production or NDJSON locally.

Output: (vine_id, VineRow); tagged dead letters for rows that cannot be used.
The query is the seed's, unchanged but for the table names, which come from
--bigquery-project / --bigquery-dataset. Hashtags are re-extracted Unicode-aware
in core.rows.parse_row (the query's RE2 `\\w` is ASCII-only).
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

SEED_QUERY = """SELECT DISTINCT
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
               raw_rows=None, bigquery_method: str = "DIRECT_READ"):
    super().__init__()
    self._run_id = run_id
    self._rows_path = rows_path
    self._project = project
    self._dataset = dataset
    self._raw_rows = raw_rows  # a PTransform yielding dicts or lines (tests, replay)
    self._method = bigquery_method

  def expand(self, pbegin):
    if self._raw_rows is not None:
      raw = pbegin | "ReadRawRows" >> self._raw_rows
    elif self._rows_path:
      # Bytes: a line that is not UTF-8 must become a dead letter, not a crash of the read.
      raw = pbegin | "ReadRowsFile" >> beam.io.ReadFromText(self._rows_path,
                                                           coder=coders.BytesCoder())
    else:
      raw = pbegin | "QueryBigQuery" >> beam.io.ReadFromBigQuery(
          query=seed_query(self._project, self._dataset), use_standard_sql=True,
          method=getattr(beam.io.ReadFromBigQuery.Method, self._method))
    parsed = raw | "ParseRows" >> beam.ParDo(ParseRowFn(self._run_id)).with_outputs(
        dl.DEAD_LETTER, main="main")
    return {"main": parsed.main, dl.DEAD_LETTER: parsed[dl.DEAD_LETTER]}
