"""Running the pipeline in-process from a test, and reading what a run wrote."""

import contextlib
import io
import json
import os
import time
import uuid

from pipeline import main as pipeline_main

# The environment variable the pipeline reads the migration API token from.
TOKEN_ENV = "CF_STREAM_MIGRATION_TOKEN"


@contextlib.contextmanager
def token_in_env(token):
  """The migration API token in the environment for the time of a run, then as it was."""
  old = os.environ.get(TOKEN_ENV)
  os.environ[TOKEN_ENV] = token
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(TOKEN_ENV, None)
    else:
      os.environ[TOKEN_ENV] = old


def run_pipeline(stack, out_dir, extra=(), monkeypatch=None):
  """Runs the pipeline in-process against the stack; returns (exit code, run dir, summary)."""
  run_id = "t-" + uuid.uuid4().hex[:8]
  args = stack.pipeline_args(output_dir=str(out_dir), extra=["--run-id", run_id,
                                                             "--retry-base-delay", "0.01",
                                                             "--api-timeout", "5"] + list(extra))
  with token_in_env(stack.token):
    code = pipeline_main.run(args)
  run_dir = os.path.join(str(out_dir), run_id)
  summary_path = os.path.join(run_dir, "summary.json")
  summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
  return code, run_dir, summary


def read_ndjson(path):
  """The records of an NDJSON file, blank lines skipped."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def run_with_token(stack, out_dir, token, extra=()):
  """Runs in-process with the given token; returns (code, stderr text, run dir, seconds)."""
  run_id = "t-" + uuid.uuid4().hex[:8]
  args = stack.pipeline_args(output_dir=str(out_dir), extra=[
      "--run-id", run_id, "--retry-base-delay", "0.01", "--api-timeout", "2"] + list(extra))
  err = io.StringIO()
  started = time.monotonic()
  with token_in_env(token), contextlib.redirect_stderr(err):
    code = pipeline_main.run(args)
  return code, err.getvalue(), os.path.join(str(out_dir), run_id), time.monotonic() - started
