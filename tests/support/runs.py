"""Running the pipeline from a test (in-process, or as a process that a signal stops), and
reading what a run wrote."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid

from pipeline import main as pipeline_main
from tests.support.faulty_relay import FaultyRelayProxy
from tests.support.paths import ROOT

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


def signal_mid_run(stack, out_dir, run_id, sig, ready, timeout=90.0):
  """Runs `python -m pipeline.main` on the stack and sends it `sig` once `ready()` is true.

  The DirectRunner materialises each stage's output before the next stage starts, so
  all events reach PublishEvents together; a proxy that holds each EVENT 150 ms, with
  one event in flight (--publish-limit 1), spreads publishing over a few seconds.
  The run's output goes to `<out_dir>/<run_id>.log`.

  Returns:
    The process's return code (-sig when the signal killed it).
  """
  proxy = FaultyRelayProxy(stack.relay_urls[0],
                           lambda event, sends: ("hook", lambda: time.sleep(0.15)))
  env = dict(os.environ, PYTHONPATH=ROOT, **{TOKEN_ENV: stack.token})
  args = stack.pipeline_args(output_dir=str(out_dir), extra=[
      "--run-id", run_id, "--relays", proxy.url, "--publish-limit", "1",
      "--retry-base-delay", "0.01"])
  try:
    with open(os.path.join(str(out_dir), run_id + ".log"), "w", encoding="utf-8") as log:
      proc = subprocess.Popen([sys.executable, "-m", "pipeline.main"] + args, cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
      try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
          time.sleep(0.05)
        if proc.poll() is None:
          os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
      finally:
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
  finally:
    proxy.close()
  return proc.returncode
