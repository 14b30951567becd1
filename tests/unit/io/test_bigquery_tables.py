"""BigQuery sinks against a fake client: what the writer sends, and what happens to refused rows.

Nothing reaches Google Cloud: every write gets a `test_client` (FakeBigQueryClient),
google.auth.default is replaced by a function that fails the test, non-loopback
sockets are refused, and each test runs under an alarm so it cannot hang.
"""

import collections
import uuid
from unittest import mock

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apitools.base.py.exceptions import HttpError

from tests.support.offline import offline_and_bounded
from transforms.core.records import WorkItem, to_source_event
from transforms.io import bigquery_tables as bqs
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.stages.publish import result_record

TEST_SECONDS = 60

# name -> calls seen by the fake client of that name. The pipeline runs in this
# process (in-memory runner) but works on pickled copies of the client, so calls are
# recorded here rather than on the instance.
CALLS = collections.defaultdict(list)


class _FakeTables:
  """The apitools `client.tables` surface BigQueryWrapper.get_or_create_table uses."""

  def __init__(self, name: str, exists: bool):
    self.name = name
    self.exists = exists

  def Get(self, request):  # noqa: N802 (apitools' method name)
    CALLS[self.name].append(("get", (request.projectId, request.datasetId, request.tableId)))
    raise HttpError({"status": 404}, "Not found: Table", "")

  def Insert(self, request):  # noqa: N802
    table = request.table
    ref = table.tableReference
    CALLS[self.name].append(("create", {
        "ref": (ref.projectId, ref.datasetId, ref.tableId),
        "fields": [(f.name, f.type, f.mode) for f in table.schema.fields],
        "partitioning": (table.timePartitioning.type, table.timePartitioning.field),
        "clustering": list(table.clustering.fields),
    }))
    return table


class FakeBigQueryClient:
  """Both clients BigQueryWrapper(client=...) uses: apitools tables.* and insert_rows_json.

  Args:
    name: key of this client's calls in CALLS.
    refuse: {vine_id: reason}; rows with these vine ids are refused with that reason
      (BigQuery's per-row insert errors), the others accepted.
  """

  def __init__(self, name: str, refuse=None):
    self.name = name
    self.refuse = dict(refuse or {})
    self.tables = _FakeTables(name, exists=False)

  def insert_rows_json(self, table, json_rows, row_ids=None, skip_invalid_rows=False,
                       ignore_unknown_values=False, timeout=None):
    CALLS[self.name].append(("insert", {
        "table": table, "rows": [dict(r) for r in json_rows], "row_ids": list(row_ids or ()),
        "skip_invalid_rows": skip_invalid_rows, "ignore_unknown_values": ignore_unknown_values}))
    return [{"index": i, "errors": [{"reason": self.refuse[r.get("vine_id")],
                                     "location": "vine_id", "message": "planted failure"}]}
            for i, r in enumerate(json_rows) if r.get("vine_id") in self.refuse]


def _calls(name, kind):
  return [payload for k, payload in CALLS[name] if k == kind]


def _inserted_rows(name):
  return [row for call in _calls(name, "insert") for row in call["rows"]]


@pytest.fixture(autouse=True)
def offline():
  with offline_and_bounded(TEST_SECONDS):
    yield


def _counter(result, name):
  query = result.metrics().query(
      MetricsFilter().with_namespace(accounting.NAMESPACE).with_name(name))
  return sum(c.committed if c.committed is not None else c.attempted
             for c in query["counters"])


def _dead_letters():
  return [
      dl.make_dead_letter("run-1", dl.STAGE_MIGRATE, dl.TRANSIENT_EXHAUSTED, "HTTP 503",
                          vine_id="MYxVapFvz2z", event_id="e1", attempts=5,
                          first_failure="2025-01-02T03:04:05.000+00:00",
                          last_failure="2025-01-02T03:05:05.000+00:00",
                          payload={"vine_id": "MYxVapFvz2z"}),
      dl.make_dead_letter("run-1", dl.STAGE_READ_ROWS, dl.BAD_INPUT, "row is not valid JSON",
                          first_failure="2025-01-02T03:04:05.000+00:00"),
      dl.make_dead_letter("run-1", dl.STAGE_PUBLISH, dl.PERMANENT, "blocked",
                          vine_id="5002wXwQOKX", event_id="e3",
                          first_failure="2025-01-02T03:04:05.000+00:00"),
  ]


def _results():
  def item(vine_id, n):
    source = to_source_event({"id": "old%d" % n, "pubkey": "ab" * 32, "kind": 32222,
                              "created_at": 1, "tags": [["d", vine_id]], "content": ""})
    return WorkItem(vine_id=vine_id, source=source,
                    migration={"uid": "uid%d" % n, "hls": "https://cdn/h%d.m3u8" % n,
                               "mp4": "https://cdn/v%d.mp4" % n,
                               "thumbnail": "https://cdn/t%d.jpg" % n},
                    newly_migrated=bool(n % 2), signed={"id": "new%d" % n, "kind": 32222},
                    notes=("note%d" % n,))
  return [result_record(item("MYxVapFvz2z", 1), ["wss://b.example", "wss://a.example"], "run-1"),
          result_record(item("e192BnZnZ9V", 2), ["wss://a.example"], "run-1")]


def _table(kind):
  return "my-proj-123:vine_ds.%s_%s" % (kind, uuid.uuid4().hex[:8])  # Beam caches created tables


# Pure parts.

def test_results_schema_matches_result_record():
  record = _results()[0]
  assert [f["name"] for f in bqs.RESULTS_SCHEMA["fields"]] == list(record)
  modes = {f["name"]: (f["type"], f["mode"]) for f in bqs.RESULTS_SCHEMA["fields"]}
  assert modes["relays"] == ("STRING", "REPEATED") and modes["notes"] == ("STRING", "REPEATED")
  assert modes["newly_migrated"] == ("BOOLEAN", "NULLABLE")
  assert modes["published_at"] == ("TIMESTAMP", "REQUIRED")


def test_to_bigquery_row_conversions():
  import datetime
  row = bqs.result_row({"run_id": "r", "vine_id": "v", "event_id": "e", "relays": ("wss://a",),
                        "notes": None, "newly_migrated": 0, "extra": "dropped",
                        "published_at": datetime.datetime(2025, 1, 2, 3, 4, 5)})
  assert row["relays"] == ["wss://a"] and row["notes"] == []
  assert row["newly_migrated"] is False
  assert row["published_at"] == "2025-01-02T03:04:05+00:00"
  assert "extra" not in row and row["stream_uid"] is None
  letter = _dead_letters()[0]
  assert bqs.dead_letter_row(letter) == letter  # dead letters already have the table's shape
  assert bqs.dead_letter_row(dict(letter, payload={"a": 1}))["payload"] == '{"a": 1}'


@pytest.mark.parametrize("spec", ["", None, "dataset.table", "my-proj-123:dataset",
                                  "my-proj-123:data set.table", "MY_PROJ:ds.t",
                                  "my-proj-123:ds.t; DROP"])
def test_bad_table_spec_names_the_flag(spec):
  with pytest.raises(ValueError, match="--dead-letter-table"):
    bqs.WriteDeadLettersToBigQuery(spec, streaming=False, test_client=FakeBigQueryClient("x"))
  with pytest.raises(ValueError, match="--results-table"):
    bqs.WriteResultsToBigQuery(spec, streaming=False, test_client=FakeBigQueryClient("x"))


def test_table_spec_forms():
  assert bqs.parse_table_spec("my-proj-123:vine_ds.dead_letters", "--x") == (
      "my-proj-123", "vine_ds", "dead_letters")
  assert bqs.parse_table_spec("my-proj-123.vine_ds.results", "--x") == (
      "my-proj-123", "vine_ds", "results")
  assert bqs.parse_table_spec("example.com:my-proj-123:vine_ds.t", "--x")[0] == (
      "example.com:my-proj-123")


# The writers, through a TestPipeline and the fake client.

def test_dead_letters_reach_the_writer_and_refused_rows_come_back():
  name, table = "dead-%s" % uuid.uuid4().hex, _table("dead_letters")
  letters = _dead_letters()
  client = FakeBigQueryClient(name, refuse={"5002wXwQOKX": "invalid"})
  p = TestPipeline()
  failed = (p | beam.Create(letters)
            | "WriteDeadLettersToBigQuery" >> bqs.WriteDeadLettersToBigQuery(
                table, streaming=False, test_client=client))
  assert_that(failed | beam.Map(lambda f: (f["table"], f["row"]["vine_id"],
                                           f["row"]["stage"], f["errors"][0]["reason"])),
              equal_to([(table, "5002wXwQOKX", "publish", "invalid")]), label="FailedRows")
  result = p.run()
  result.wait_until_finish()

  project, dataset, table_id = table.replace(":", ".").split(".")
  assert _calls(name, "get") == [(project, dataset, table_id)]
  (created,) = _calls(name, "create")
  assert created["ref"] == (project, dataset, table_id)
  assert created["fields"] == [tuple(f) for f in dl.SCHEMA_FIELDS]
  assert created["partitioning"] == ("DAY", "last_failure")
  assert created["clustering"] == ["run_id", "stage", "error_class"]
  inserts = _calls(name, "insert")
  assert {c["table"] for c in inserts} == {"%s.%s.%s" % (project, dataset, table_id)}
  assert all(c["skip_invalid_rows"] and not c["ignore_unknown_values"] for c in inserts)
  rows = _inserted_rows(name)
  key = lambda r: (r["stage"], r["vine_id"] or "")
  assert sorted(rows, key=key) == sorted(letters, key=key)
  row_ids = [i for c in inserts for i in c["row_ids"]]
  assert len(row_ids) == len(letters) and len(set(row_ids)) == len(letters) and all(row_ids)
  assert _counter(result, bqs.DEAD_LETTER_WRITE_FAILURES) == 1


def test_results_reach_the_writer():
  name, table = "results-%s" % uuid.uuid4().hex, _table("results")
  records = _results()
  p = TestPipeline()
  failed = (p | beam.Create(records)
            | "WriteResultsToBigQuery" >> bqs.WriteResultsToBigQuery(
                table, streaming=False, test_client=FakeBigQueryClient(name)))
  assert_that(failed, equal_to([]), label="NoFailedRows")
  result = p.run()
  result.wait_until_finish()

  (created,) = _calls(name, "create")
  assert created["ref"] == tuple(table.replace(":", ".").split("."))
  assert created["fields"] == [tuple(f) for f in bqs.RESULTS_FIELDS]
  assert created["partitioning"] == ("DAY", "published_at")
  rows = sorted(_inserted_rows(name), key=lambda r: r["vine_id"])
  assert rows == sorted((bqs.result_row(r) for r in records), key=lambda r: r["vine_id"])
  assert rows[0]["relays"] == ["wss://a.example", "wss://b.example"]
  assert rows[0]["notes"] == ["note1"] and rows[0]["newly_migrated"] is True
  assert _counter(result, bqs.RESULTS_WRITE_FAILURES) == 0


def test_transient_failures_are_retried_a_bounded_number_of_times_then_yielded():
  name, table = "transient-%s" % uuid.uuid4().hex, _table("results")
  records = _results()
  p = TestPipeline()
  failed = (p | beam.Create(records)
            | "WriteResultsToBigQuery" >> bqs.WriteResultsToBigQuery(
                table, streaming=False,
                test_client=FakeBigQueryClient(name, refuse={"e192BnZnZ9V": "backendError"})))
  assert_that(failed | beam.Map(lambda f: (f["row"]["vine_id"], f["errors"][0]["reason"])),
              equal_to([("e192BnZnZ9V", "backendError")]), label="FailedAfterRetries")
  from apache_beam.io.gcp import bigquery as beam_bigquery
  with mock.patch.object(beam_bigquery.time, "sleep") as sleep:
    result = p.run()
    result.wait_until_finish()
  inserts = _calls(name, "insert")
  assert len(inserts) == 1 + bqs.INSERT_RETRIES
  assert [r["vine_id"] for c in inserts[1:] for r in c["rows"]] == (
      ["e192BnZnZ9V"] * bqs.INSERT_RETRIES)  # retries resend only the refused row
  assert sleep.call_count >= bqs.INSERT_RETRIES
  assert _counter(result, bqs.RESULTS_WRITE_FAILURES) == 1
