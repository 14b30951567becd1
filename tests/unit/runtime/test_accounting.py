"""Counters: the live tally (Beam and other threads, each counted once) and throttling
seconds that keep their fractions."""

import threading

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.runtime import accounting


class _Count(beam.DoFn):
  def process(self, element):
    accounting.flush_deferred()  # moves the other thread's increment into Beam's counter
    accounting.inc("t_beam")
    yield element


@pytest.mark.usefixtures("clean_tally")
def test_live_tally_counts_beam_and_other_threads_once():
  worker = threading.Thread(target=accounting.inc, args=("t_thread", 2))
  worker.start()
  worker.join()
  assert accounting.live_counts()["t_thread"] == 2  # at once, before any flush

  pipeline = beam.Pipeline(options=PipelineOptions(runner="FnApiRunner"))
  _ = pipeline | beam.Create([1, 2, 3]) | beam.ParDo(_Count())
  result = pipeline.run()
  result.wait_until_finish()

  live = accounting.live_counts()
  assert live["t_beam"] == 3
  assert live["t_thread"] == 2  # the flush into Beam's counter does not count it again
  beam_counts = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace(accounting.NAMESPACE))["counters"]}
  assert beam_counts["t_beam"] == 3 and beam_counts["t_thread"] == 2


@pytest.mark.usefixtures("clean_tally")
def test_live_tally_is_exact_under_concurrent_increments():
  threads = [threading.Thread(target=lambda: [accounting.inc("t_many") for _ in range(5000)])
             for _ in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert accounting.live_counts()["t_many"] == 40000


def test_throttling_seconds_keep_their_fractions(monkeypatch):
  from transforms.runtime import accounting
  added = []
  monkeypatch.setattr(accounting, "inc", lambda name, n=1: added.append((name, n)))
  monkeypatch.setattr(accounting, "_fractions", {})
  for _ in range(10):
    accounting.add_seconds("cumulativeThrottlingSeconds", 0.25)
  accounting.add_seconds("cumulativeThrottlingSeconds", 3.6)
  assert sum(n for _, n in added) == 6  # 2.5 + 3.6 = 6.1
  assert {name for name, _ in added} == {"cumulativeThrottlingSeconds"}
