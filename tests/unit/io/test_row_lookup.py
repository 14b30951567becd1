"""Tests for transforms.io.row_lookup (LookupVineRows): batched across bundles with a bounded
wait, cached, never losing an event, and never stalling the stream on an error."""

import json
import logging

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.core import records
from transforms.io import row_lookup
from transforms.io.row_lookup import (
  CONFIG_LATCH,
  ROW_LOOKUP_CONFIG_ERRORS,
  LookupVineRows,
  LookupVineRowsFn,
  is_config_error,
)
from transforms.nostr.event import Signer, generate_private_key
from transforms.runtime import accounting
from transforms.runtime.cap import shard_of
from transforms.runtime.outcomes import StopRun

SIGNER = Signer(generate_private_key())
A, B, C = "aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"


def _keyed(vine_id):
  event = SIGNER.sign({"kind": 32222, "created_at": 1, "content": "",
                       "tags": [["d", vine_id]]})
  return vine_id, records.to_source_event(event)


class _ApiError(Exception):
  """Shaped like google.api_core's errors: an HTTP `code` and BigQuery's `errors`."""

  def __init__(self, code, reason="accessDenied"):
    super().__init__("%d %s: Access Denied: Table p:d.vine_posts" % (code, reason))
    self.code, self.errors = code, [{"reason": reason}]


# Batches each fake was asked, by name: the DirectRunner runs the graph in this process.
ASKED = {}


class _FakeLookup:
  """Answers from a dict (or raises `errors` in turn) and records every batch it was asked."""

  def __init__(self, rows, errors=(), name="fake"):
    self.rows, self.errors, self.name = rows, list(errors), name
    ASKED.setdefault(name, [])  # a runner may make several instances: one record

  def lookup(self, vine_ids):
    ASKED[self.name].append(list(vine_ids))
    if self.errors:
      raise self.errors.pop(0)
    return {v: self.rows[v] for v in vine_ids if v in self.rows}


@pytest.fixture(autouse=True)
def open_latch():
  CONFIG_LATCH.reset()
  ASKED.clear()
  yield
  CONFIG_LATCH.reset()


def _run(fn, batches):
  fn.setup()
  out = []
  for n, batch in enumerate(batches):
    out += list(fn.process((0, [(v, s, (10 * n + i) * 10**6)
                                for i, (v, s) in enumerate(batch)])))
  return out


def _values(out):
  return [o.value for o in out if not isinstance(o, TaggedOutput)]


def _dead(out):
  return [o.value.value for o in out if isinstance(o, TaggedOutput)]


@pytest.mark.usefixtures("clean_tally")
def test_lookups_are_batched_and_cached_and_a_missing_row_is_noted():
  fake = _FakeLookup({A: {"vineId": A, "loops": 7}})
  fn = LookupVineRowsFn("run-1", lookup_factory=lambda: fake)
  out = _run(fn, [[_keyed(A), _keyed(B), _keyed(A)], [_keyed(A), _keyed(B)]])
  items = _values(out)
  assert ASKED["fake"] == [[A, B]]  # later ones come from the cache
  assert [(i.vine_id, i.row.loops if i.row else None) for i in items] == [
      (A, 7), (B, None), (A, 7), (A, 7), (B, None)]
  assert [accounting.METADATA_MISSING in i.notes for i in items] == [
      False, True, False, False, True]
  # Each event keeps its own timestamp (its arrival time), not the batch's.
  assert [o.timestamp for o in out] == [Timestamp(0), Timestamp(1), Timestamp(2),
                                        Timestamp(10), Timestamp(11)]
  live = accounting.live_counts()
  assert live["vines_in"] == 5 and live["row_lookups"] == 2
  assert live[accounting.METADATA_MISSING] == 2


@pytest.mark.usefixtures("clean_tally")
def test_a_failing_lookup_is_retried_then_each_event_is_a_transient_dead_letter():
  fake = _FakeLookup({A: {"vineId": A}}, errors=[ConnectionError("reset")] * 4)
  fn = LookupVineRowsFn("run-1", lookup_factory=lambda: fake, attempts=3,
                        retry_base_seconds=0)
  out = _run(fn, [[_keyed(A), _keyed(B)], [_keyed(A)]])
  dead = _dead(out)
  assert [(d["stage"], d["error_class"], d["vine_id"], d["attempts"]) for d in dead] == [
      ("read_rows", "transient_exhausted", A, 3), ("read_rows", "transient_exhausted", B, 3)]
  assert "ConnectionError" in dead[0]["error"] and json.loads(dead[0]["payload"])
  # The next batch is tried again: one more failure, then an answer.
  assert [i.vine_id for i in _values(out)] == [A] and len(ASKED["fake"]) == 5
  live = accounting.live_counts()
  assert live["vines_in"] == 3 and live["dead_letters_read_rows"] == 2


@pytest.mark.usefixtures("clean_tally")
def test_a_configuration_error_is_reported_once_and_no_more_lookups_are_sent(caplog):
  first = _FakeLookup({}, errors=[_ApiError(403)], name="first")
  second = _FakeLookup({A: {"vineId": A}}, name="second")
  one = LookupVineRowsFn("run-1", lookup_factory=lambda: first, retry_base_seconds=0)
  other = LookupVineRowsFn("run-1", lookup_factory=lambda: second)  # same process
  with caplog.at_level(logging.ERROR, logger=row_lookup.__name__):
    dead = _dead(_run(one, [[_keyed(A)], [_keyed(B)]])) + _dead(_run(other, [[_keyed(C)]]))
  assert [(d["error_class"], d["vine_id"]) for d in dead] == [
      ("config", A), ("config", B), ("config", C)]
  assert ASKED["first"] == [[A]] and ASKED["second"] == []  # one call, never retried
  assert len([r for r in caplog.records if "configuration error" in r.getMessage()]) == 1
  live = accounting.live_counts()
  assert live[ROW_LOOKUP_CONFIG_ERRORS] == 1 and live["dead_letter_class_config"] == 3


def test_which_errors_are_configuration_errors():
  assert is_config_error(StopRun("token refused")) and is_config_error(_ApiError(404))
  assert is_config_error(_ApiError(400, "invalidQuery"))
  assert not is_config_error(_ApiError(403, "rateLimitExceeded"))
  assert not is_config_error(_ApiError(503, "backendError"))
  assert not is_config_error(TimeoutError("read timed out"))


def test_bigquery_lookup_bills_the_given_project_and_reads_the_data_project(monkeypatch):
  made = []

  class Client:
    def __init__(self, project):
      made.append(project)

  from google.cloud import bigquery
  monkeypatch.setattr(bigquery, "Client", Client)
  lookup = row_lookup.BigQueryRowLookup("data-proj", "vine", billing_project="job-proj")
  assert made == ["job-proj"] and "`data-proj.vine." in lookup._sql  # pylint: disable=protected-access
  row_lookup.BigQueryRowLookup("data-proj", "vine")
  assert made == ["job-proj", "data-proj"]


def _stream_run(stream, fake_factory, batch_size, max_wait):
  p = test_pipeline.TestPipeline(options=PipelineOptions(streaming=True))
  out = (p | "Events" >> stream
         | "Lookup" >> LookupVineRows("run-1", batch_size=batch_size, max_wait_seconds=max_wait,
                                      lookup_factory=fake_factory, retry_base_seconds=0))
  return p, out


@pytest.mark.parametrize("batch_size,expected", [(100, [[0, 1, 2, 3], [4]]),
                                                 (3, [[0, 1, 2], [3], [4]])])
def test_test_stream_batches_across_bundles_and_the_wait_is_bounded(batch_size, expected):
  """Events of separate bundles share a batch of at most batch_size; a batch that does
  not fill leaves once the watermark passes its first event's arrival plus the wait."""
  # Five ids of one shard, so that they meet in one buffer.
  candidates = ("%s%06d" % ("v" * 5, n) for n in range(10**6))
  ids = [v for v in candidates if shard_of(v, row_lookup.LOOKUP_SHARDS) == 3][:5]
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([TimestampedValue(_keyed(v), 10) for v in ids[:2]])
            .add_elements([TimestampedValue(_keyed(v), 11) for v in ids[2:4]])
            .advance_watermark_to(30)  # past 10 + 5 s: whatever waits goes now
            .add_elements([TimestampedValue(_keyed(ids[4]), 40)])
            # A live watermark follows wall time; assert_that answers at infinity.
            .advance_watermark_to(60)
            .advance_watermark_to_infinity())
  p, out = _stream_run(stream, lambda: _FakeLookup({v: {"vineId": v} for v in ids},
                                                   name="stream"), batch_size, 5)
  assert_that(out["main"] | beam.Map(lambda i: i.vine_id), equal_to(ids), label="Items")
  p.run().wait_until_finish()
  # The two early bundles share a query; the last id did not wait for more.
  assert ASKED["stream"] == [[ids[n] for n in batch] for batch in expected]


def test_test_stream_lookup_error_becomes_a_dead_letter_and_the_stream_goes_on():
  ids = ["%s%06d" % ("w" * 5, n) for n in range(3)]
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([TimestampedValue(_keyed(v), 10) for v in ids])
            .advance_watermark_to(30)
            .advance_watermark_to_infinity())

  def failing():
    return _FakeLookup({}, errors=[ConnectionError("reset")] * 100, name="failing")

  p, out = _stream_run(stream, failing, 100, 1)
  assert_that(out["dead_letter"] | beam.Map(lambda d: (d["stage"], d["error_class"], d["vine_id"])),
              equal_to([("read_rows", "transient_exhausted", v) for v in ids]), label="Dead")
  assert_that(out["main"], equal_to([]), label="NoItems")
  p.run().wait_until_finish()
