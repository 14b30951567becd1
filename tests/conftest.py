"""Shared fixtures: the local stack (a real relay process and the emulator) and runs."""

import contextlib
import json
import os
import signal
import socket
import sqlite3
import uuid
from unittest import mock

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


@contextlib.contextmanager
def offline_and_bounded(seconds):
  """Public sockets and Google credential lookups fail the test; an alarm stops hangs.

  Both are also recorded and asserted afterwards: Beam may catch and log the errors.
  """
  real_connect = socket.socket.connect
  credential_calls, connections = [], []

  def connect(sock, address):
    if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in (
        "127.0.0.1", "::1", "localhost")):
      return real_connect(sock, address)
    connections.append(address)
    raise AssertionError("network access attempted: %r" % (address,))

  def no_credentials(*args, **kwargs):
    credential_calls.append(args)
    raise AssertionError("google.auth.default called: a real Google client was built")

  def timeout(signum, frame):
    raise TimeoutError("test took more than %d s" % seconds)

  previous = signal.signal(signal.SIGALRM, timeout)
  signal.alarm(seconds)
  try:
    with mock.patch.object(socket.socket, "connect", connect), \
        mock.patch("google.auth.default", no_credentials):
      yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  assert not credential_calls, "credentials were looked up"
  assert not connections, "network access attempted: %r" % connections


def make_keys_db(path, rows):
  """A keys database in the seed's schema, mode 0600."""
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE user_migrations (username TEXT PRIMARY KEY, nostr_public_key TEXT,"
               " nostr_private_key TEXT)")
  conn.executemany("INSERT INTO user_migrations VALUES (?,?,?)", rows)
  conn.commit()
  conn.close()
  os.chmod(path, 0o600)
