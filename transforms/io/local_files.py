"""Local outputs: dead letters, skips and results as NDJSON, and the seed's monitor log.

One file each under the run's output directory. The Dataflow issue adds the
BigQuery dead-letter and results tables beside these.
"""

import os

import apache_beam as beam

from transforms.core.text import sorted_json

DEAD_LETTERS_FILE = "dead_letters.ndjson"
SKIPPED_FILE = "skipped.ndjson"
PUBLISHED_FILE = "published.ndjson"
MONITOR_FILE = "monitor.log"
SUMMARY_FILE = "summary.json"  # written by pipeline/main.py at the end of a run
# Written while the run goes (pipeline/run_record.py, transforms/io/journal.py).
JOURNAL_DIR = "journal"
PROGRESS_FILE = "progress.json"
RUN_LOG_FILE = "run.log"
# Rows the BigQuery tables refused (pipeline/graph.py attach_bigquery_sinks).
BIGQUERY_FAILED_ROWS_FILE = "bigquery_failed_rows.ndjson"


def to_json_line(record) -> str:
  return sorted_json(record)


class WriteNdjson(beam.PTransform):
  """PCollection[dict] -> one NDJSON file (single shard, so a person can read it)."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, records):
    return (records
            | "ToJson" >> beam.Map(to_json_line)
            | "WriteFile" >> beam.io.WriteToText(self._path, shard_name_template=""))


class WriteLines(beam.PTransform):
  """PCollection[str] -> one text file."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, lines):
    return lines | "WriteFile" >> beam.io.WriteToText(self._path, shard_name_template="")


def run_output_dir(output_dir: str, run_id: str) -> str:
  return os.path.join(output_dir, run_id)
