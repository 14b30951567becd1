"""Synthetic run directories and dead letters for `pipeline.report`, and its CLI in-process."""

import io
import json
import os

from pipeline import report, run_outputs
from transforms.io import local_files as sinks


def write_run(path, summary=None, dead=(), skipped=(), published=(), monitor=(),
              files=run_outputs.OUTPUT_FILES):
  """Writes a run directory holding `files`, of which the given records; returns its path."""
  os.makedirs(path, exist_ok=True)
  contents = {sinks.DEAD_LETTERS_FILE: dead, sinks.SKIPPED_FILE: skipped,
              sinks.PUBLISHED_FILE: published}
  for name, records in contents.items():
    if name in files:
      with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
  if sinks.MONITOR_FILE in files:
    with open(os.path.join(path, sinks.MONITOR_FILE), "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in monitor)
  if summary is not None and sinks.SUMMARY_FILE in files:
    with open(os.path.join(path, sinks.SUMMARY_FILE), "w", encoding="utf-8") as f:
      json.dump(summary, f)
  return str(path)


def dead_letter(vine_id, stage="migrate", error_class="transient_exhausted", error="", when="t"):
  """A dead-letter record with the fields the report reads."""
  return {"vine_id": vine_id, "event_id": "e" + vine_id, "stage": stage,
          "error_class": error_class, "error": error, "attempts": 5, "last_failure": when}


def run_report_cli(*argv):
  """Runs `python -m pipeline.report` in-process; returns (exit code, output)."""
  out = io.StringIO()
  code = report.main(list(argv), stream=out)
  return code, out.getvalue()
