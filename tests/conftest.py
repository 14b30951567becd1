"""Shared fixtures: the local stack (a real relay process and the emulator) and runs."""

import json
import os
import uuid

import pytest

from devstack.stack import LocalStack
from pipeline import main as pipeline_main


def run_pipeline(stack, out_dir, extra=(), monkeypatch=None):
  """Runs the pipeline in-process against the stack; returns (exit code, run dir, summary)."""
  run_id = "t-" + uuid.uuid4().hex[:8]
  args = stack.pipeline_args(output_dir=str(out_dir), extra=["--run-id", run_id,
                                                             "--retry-base-delay", "0.01",
                                                             "--api-timeout", "5"] + list(extra))
  old = os.environ.get("CF_STREAM_MIGRATION_TOKEN")
  os.environ["CF_STREAM_MIGRATION_TOKEN"] = stack.token
  try:
    code = pipeline_main.run(args)
  finally:
    if old is None:
      os.environ.pop("CF_STREAM_MIGRATION_TOKEN", None)
    else:
      os.environ["CF_STREAM_MIGRATION_TOKEN"] = old
  run_dir = os.path.join(str(out_dir), run_id)
  summary_path = os.path.join(run_dir, "summary.json")
  summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
  return code, run_dir, summary


def read_ndjson(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
  work = tmp_path_factory.mktemp("stack")
  with LocalStack(str(work), n_vines=50, seed=11) as s:
    yield s
