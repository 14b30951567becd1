"""BigQuery sinks: the dead-letter table and the results table, the cloud form of the local files.

    dead letters ─ WriteDeadLettersToBigQuery ─┐
    results ────── WriteResultsToBigQuery ─────┴─> rows BigQuery refused (for a fallback file)

Both write with STREAMING_INSERTS, in batch as in streaming. FILE_LOADS was weighed
and rejected for batch: a load job succeeds or fails as a whole, so a bad row fails
the job (and the pipeline) instead of coming back as a value, it needs a gs:// temp
location, and it yields no failed rows. Streaming inserts return BigQuery's verdict
per row; rows it refuses come out of the writer, are logged (ids only), counted and
handed back to the caller, never silently lost. Volumes are small (one row per vine
at most), so the streaming-insert cost is negligible. The Storage Write API also
returns failed rows but is a cross-language (Java) transform: it needs a Java
expansion service at construction time, which the offline tests cannot provide.

Tables are created when absent (CREATE_IF_NEEDED; the dataset must exist) with the
declared schema, partitioned by day on their timestamp column and clustered by run,
and appended to (WRITE_APPEND). Retries: RETRY_ON_TRANSIENT_ERROR with a bounded
number of attempts (INSERT_RETRIES), so a row that keeps failing is yielded as a
failed row rather than retried forever.
"""

import datetime
import logging
import re
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy

from transforms.core.text import sorted_json
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.logs import CappedLog

_LOG = logging.getLogger(__name__)

DEAD_LETTER_TABLE_FLAG = "--dead-letter-table"
RESULTS_TABLE_FLAG = "--results-table"

# Beam counters (namespace vine_migration) of rows BigQuery refused.
DEAD_LETTER_WRITE_FAILURES = "dead_letter_write_failures"
RESULTS_WRITE_FAILURES = "results_write_failures"

# Insert attempts per batch for transient errors (fuzzed exponential backoff from 0.2 s,
# about three minutes in all); after that the rows come out as failed rows.
INSERT_RETRIES = 10

# Results table: one row per published vine; the columns of publish.result_record.
RESULTS_FIELDS = (
    ("run_id", "STRING", "REQUIRED"),
    ("vine_id", "STRING", "REQUIRED"),
    ("event_id", "STRING", "REQUIRED"),
    ("video_event_id", "STRING", "NULLABLE"),
    ("kinds", "INTEGER", "REPEATED"),
    ("previous_event_id", "STRING", "NULLABLE"),
    ("pubkey", "STRING", "NULLABLE"),
    ("stream_uid", "STRING", "NULLABLE"),
    ("hls_url", "STRING", "NULLABLE"),
    ("mp4_url", "STRING", "NULLABLE"),
    ("thumbnail_url", "STRING", "NULLABLE"),
    ("relays", "STRING", "REPEATED"),
    ("newly_migrated", "BOOLEAN", "NULLABLE"),
    ("notes", "STRING", "REPEATED"),
    ("published_at", "TIMESTAMP", "REQUIRED"),
    ("record_id", "STRING", "NULLABLE"),
)


def table_schema(fields) -> Dict[str, Any]:
  """A BigQuery table schema from (name, type, mode) triples."""
  return {"fields": [{"name": n, "type": t, "mode": m} for n, t, m in fields]}


RESULTS_SCHEMA = table_schema(RESULTS_FIELDS)

_PROJECT = r"(?:[a-z0-9.\-]+:)?[a-z][a-z0-9\-]{4,28}[a-z0-9]"
_TABLE_SPEC = re.compile(
    r"^(?P<project>%s)[:.](?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[\w\-]{1,1024})$" % _PROJECT)


def parse_table_spec(spec: Optional[str], flag: str) -> Tuple[str, str, str]:
  """Splits "project:dataset.table" (or "project.dataset.table") into its parts.

  Args:
    spec: the flag's value.
    flag: the flag's name, for the error message.

  Returns:
    (project, dataset, table).

  Raises:
    ValueError: naming `flag` when the spec is empty or malformed.
  """
  match = _TABLE_SPEC.match((spec or "").strip())
  if not match:
    raise ValueError("%s: %r is not a table spec PROJECT:DATASET.TABLE "
                     "(e.g. my-proj-123:vine_migration.dead_letters)" % (flag, spec))
  return match.group("project"), match.group("dataset"), match.group("table")


def _timestamp(value: Any) -> Any:
  if isinstance(value, datetime.datetime):
    if value.tzinfo is None:
      value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat()
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat()
  return str(value)  # ISO-8601 strings (core.text.utc_now_iso) are taken as they are


def _scalar(value: Any, kind: str) -> Any:
  if value is None:
    return None
  if kind == "TIMESTAMP":
    return _timestamp(value)
  if kind in ("BOOLEAN", "BOOL"):
    return bool(value)
  if kind in ("INTEGER", "INT64"):
    return int(value)
  if kind in ("FLOAT", "FLOAT64"):
    return float(value)
  if isinstance(value, (dict, list, tuple)):
    return sorted_json(value)
  return str(value)


def to_bigquery_row(record: Mapping[str, Any],
                    fields: Sequence[Tuple[str, str, str]]) -> Dict[str, Any]:
  """A record as an insertAll row of a table with `fields` (name, type, mode).

  The row has exactly the schema's columns (a missing one is None, an extra one is
  dropped: the schema is the contract); REPEATED columns are lists (None -> []),
  TIMESTAMP columns ISO-8601 strings, STRING columns holding a dict or list JSON text.
  """
  row: Dict[str, Any] = {}
  for name, kind, mode in fields:
    value = record.get(name)
    if mode == "REPEATED":
      row[name] = [_scalar(v, kind) for v in (value or ())]
    else:
      row[name] = _scalar(value, kind)
  return row


def dead_letter_row(record: Mapping[str, Any]) -> Dict[str, Any]:
  """A dead letter (dead_letters.make_dead_letter) as a dead-letter table row."""
  return to_bigquery_row(record, dl.SCHEMA_FIELDS)


def result_row(record: Mapping[str, Any]) -> Dict[str, Any]:
  """A result record (publish.result_record) as a results table row."""
  return to_bigquery_row(record, RESULTS_FIELDS)


def failed_write_record(table: str, row: Mapping[str, Any], errors: Any) -> Dict[str, Any]:
  """What the caller gets for a row BigQuery refused: the table, the row and BigQuery's errors."""
  return {"table": str(table), "row": dict(row), "errors": _plain(errors)}


def _plain(errors: Any) -> Any:
  if isinstance(errors, (list, tuple)):
    return [_plain(e) for e in errors]
  if isinstance(errors, Mapping):
    return {str(k): _plain(v) for k, v in errors.items()}
  if errors is None or isinstance(errors, (str, int, float, bool)):
    return errors
  return str(errors)


def _reasons(errors: Any) -> str:
  reasons = sorted({str(e.get("reason")) for e in errors or () if isinstance(e, Mapping)})
  return ",".join(reasons) or "unknown"


class _FailedRowFn(beam.DoFn):
  """(table, row, errors) from the writer -> failed_write_record; logged by ids, counted."""

  def __init__(self, counter: str, id_fields: Sequence[str]):
    super().__init__()
    self._counter = counter
    self._id_fields = tuple(id_fields)

  def setup(self):
    # A wrong schema refuses every row: the first few are logged, the rest counted.
    self._refused_log = CappedLog(_LOG, "refused BigQuery rows", level=logging.ERROR)

  def process(self, failed) -> Iterator[Dict[str, Any]]:
    table, row, errors = failed
    accounting.inc(self._counter)
    ids = " ".join("%s=%s" % (f, row.get(f)) for f in self._id_fields)
    self._refused_log.log("BigQuery refused a row of %s (%s): reasons %s", table, ids,
                          _reasons(errors))
    yield failed_write_record(table, row, errors)


class _WriteRowsToBigQuery(beam.PTransform):
  """PCollection[dict] -> PCollection[dict] of failed_write_record (rows BigQuery refused)."""

  def __init__(self, table: str, streaming: bool, *, flag: str,
               fields: Sequence[Tuple[str, str, str]], schema: Dict[str, Any], time_field: str,
               clustering: Sequence[str], counter: str, id_fields: Sequence[str],
               test_client=None, max_retries: int = INSERT_RETRIES):
    super().__init__()
    project, dataset, table_id = parse_table_spec(table, flag)
    self._table = "%s:%s.%s" % (project, dataset, table_id)
    self._streaming = bool(streaming)
    self._fields = tuple(fields)
    self._schema = schema
    self._clustering = list(clustering)
    self._time_field = time_field
    self._counter = counter
    self._id_fields = tuple(id_fields)
    self._test_client = test_client
    self._max_retries = max_retries

  @property
  def table(self) -> str:
    return self._table

  def expand(self, records):
    rows = records | "ToBigQueryRows" >> beam.Map(to_bigquery_row, self._fields)
    result = rows | "WriteToBigQuery" >> WriteToBigQuery(
        self._table,
        schema=self._schema,
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=BigQueryDisposition.WRITE_APPEND,
        method=WriteToBigQuery.Method.STREAMING_INSERTS,
        insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
        max_retries=self._max_retries,
        # Streaming: let the runner shard the inserts (only valid in streaming pipelines).
        with_auto_sharding=self._streaming,
        additional_bq_parameters={
            "timePartitioning": {"type": "DAY", "field": self._time_field},
            "clustering": {"fields": self._clustering},
        },
        test_client=self._test_client)
    return (result.failed_rows_with_errors
            | "LogFailedRows" >> beam.ParDo(_FailedRowFn(self._counter, self._id_fields)))


class WriteDeadLettersToBigQuery(_WriteRowsToBigQuery):
  """Dead letters (make_dead_letter dicts) -> the dead-letter table.

  Input: PCollection of dead-letter dicts. Output: PCollection of failed_write_record
  dicts for the rows BigQuery refused (counted in `dead_letter_write_failures`); write
  them to a local or GCS fallback file.

  Args:
    table: "project:dataset.table" (--dead-letter-table); ValueError naming the flag
      when malformed.
    streaming: True in a streaming pipeline (turns on auto-sharding of the inserts).
    test_client: a fake BigQuery client for tests; None on real runs.
  """

  def __init__(self, table: str, streaming: bool = False, test_client=None):
    super().__init__(table, streaming, flag=DEAD_LETTER_TABLE_FLAG, fields=dl.SCHEMA_FIELDS,
                     schema=table_schema(dl.SCHEMA_FIELDS), time_field="last_failure",
                     clustering=("run_id", "stage", "error_class"),
                     counter=DEAD_LETTER_WRITE_FAILURES,
                     id_fields=("run_id", "stage", "vine_id", "event_id"),
                     test_client=test_client)


class WriteResultsToBigQuery(_WriteRowsToBigQuery):
  """Result records (publish.result_record dicts) -> the results table.

  Input: PCollection of result dicts. Output: PCollection of failed_write_record dicts
  for the rows BigQuery refused (counted in `results_write_failures`).

  Args:
    table: "project:dataset.table" (--results-table); ValueError naming the flag when
      malformed.
    streaming: True in a streaming pipeline (turns on auto-sharding of the inserts).
    test_client: a fake BigQuery client for tests; None on real runs.
  """

  def __init__(self, table: str, streaming: bool = False, test_client=None):
    super().__init__(table, streaming, flag=RESULTS_TABLE_FLAG, fields=RESULTS_FIELDS,
                     schema=RESULTS_SCHEMA, time_field="published_at", clustering=("run_id",),
                     counter=RESULTS_WRITE_FAILURES,
                     id_fields=("run_id", "vine_id", "event_id"), test_client=test_client)
