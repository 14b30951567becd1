"""pipeline/preflight.py: what the flags point to is checked before any work, and exits 2."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import main as pipeline_main
from pipeline import preflight
from pipeline.options import ConfigError, MigrationOptions
from tests.support.http_sink import HttpSink
from tests.support.keys import make_keys_db, tiny_keys_db
from tests.support.runs import token_in_env

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(autouse=True)
def _no_lock_left():
  yield
  preflight.release_lock()


@pytest.fixture
def good(tmp_path):
  keys = str(tmp_path / "keys.db")
  tiny_keys_db(keys, 0o600)
  rows = tmp_path / "rows.ndjson"
  rows.write_text("{}\n")
  return {"keys": keys, "rows": str(rows), "out": str(tmp_path / "out"), "tmp": tmp_path}


def _opts(good, *extra):
  argv = ["--relays", "ws://127.0.0.1:7777", "--migration-api", "http://127.0.0.1:9",
          "--keys-db", good["keys"], "--rows", good["rows"], "--output-dir", good["out"]]
  options = PipelineOptions(argv + list(extra))
  return options.view_as(MigrationOptions), options


def _refused(good, *extra, run_id=""):
  opts, options = _opts(good, *extra)
  with pytest.raises(ConfigError) as info:
    preflight.check(opts, options, run_id)
  return str(info.value)


def test_a_good_configuration_passes_and_takes_the_lock(good):
  opts, options = _opts(good)
  preflight.check(opts, options, "r1")
  lock = preflight.lock_path(good["out"])
  assert json.load(open(lock))["pid"] == os.getpid()
  preflight.release_lock()
  assert not os.path.exists(lock)


def _text_file(path):
  with open(path, "w") as f:
    f.write("alice,npub...,nsec...\n")


def _no_table(path):
  with sqlite3.connect(path) as conn:
    conn.execute("CREATE TABLE other (x)")


def _empty_table(path):
  make_keys_db(path, [])


def _no_usable_key(path):
  make_keys_db(path, [("bob", "ab" * 32, "not-a-key")])


@pytest.mark.parametrize("make, reason", [
    (_text_file, "is not an SQLite database"),
    (_no_table, "has no table user_migrations"),
    (_empty_table, "has no keys"),
    (_no_usable_key, "no usable key"),
    (lambda path: open(path, "w").close(), "is empty"),
    (os.mkdir, "is a folder"),
])
def test_a_bad_keys_database_names_the_flag_and_the_reason(good, make, reason):
  path = str(good["tmp"] / "bad.db")
  make(path)
  message = _refused(good, "--keys-db", path)
  assert message.startswith("--keys-db: ") and reason in message


def test_a_keys_database_locked_by_another_process_says_locked(good):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
       "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); sys.stdin.read()",
       good["keys"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    message = _refused(good)
  finally:
    holder.stdin.close()
    holder.wait(10)
  assert message.startswith("--keys-db: ") and "locked" in message


def test_an_unreadable_file_says_why(good, monkeypatch):
  def denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(preflight, "open", denied, raising=False)
  message = _refused(good)
  assert message.startswith("--rows: ") and "Permission denied" in message


@pytest.mark.skipif(AS_ROOT, reason="root reads a mode 000 file")
def test_a_mode_000_keys_database_is_not_readable(good):
  os.chmod(good["keys"], 0)
  assert "Permission denied" in _refused(good)


def test_rows_naming_a_folder_or_a_glob_matching_one(good):
  folder = good["tmp"] / "rows_dir"
  folder.mkdir()
  assert _refused(good, "--rows", str(folder)).startswith("--rows: %s is a folder" % folder)
  assert "matches the folder" in _refused(good, "--rows", str(good["tmp"] / "rows*"))


def test_output_dir_a_file_unwritable_or_full(good, monkeypatch):
  path = good["tmp"] / "a_file"
  path.write_text("x")
  assert _refused(good, "--output-dir", str(path)) == "--output-dir: %s is a file, not a folder" % path

  def denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  with monkeypatch.context() as m:
    m.setattr(preflight.tempfile, "mkstemp", denied)
    message = _refused(good)
  assert message.startswith("--output-dir: ") and "not writable (Permission denied)" in message
  monkeypatch.setattr(preflight, "MIN_FREE_BYTES", 2**62)
  assert "MiB free on the disk of" in _refused(good)


def test_an_existing_run_folder_that_is_a_file_is_refused(good):
  os.makedirs(good["out"])
  open(os.path.join(good["out"], "r1"), "w").close()
  assert "the run folder" in _refused(good, run_id="r1")


def _live_and_dead_pids():
  live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  return live, dead.pid


def test_a_second_run_on_the_same_output_dir_is_refused_and_a_stale_lock_taken_over(good):
  os.makedirs(good["out"])
  lock = preflight.lock_path(good["out"])
  live, dead_pid = _live_and_dead_pids()
  try:
    with open(lock, "w") as f:
      json.dump({"pid": live.pid, "run_id": "other-run", "host": os.uname().nodename}, f)
    message = _refused(good)
    assert message.startswith("--output-dir: another run is using") and "other-run" in message
  finally:
    live.stdin.close()
    live.wait(10)
  with open(lock, "w") as f:
    json.dump({"pid": dead_pid, "run_id": "gone"}, f)
  opts, options = _opts(good)
  preflight.check(opts, options, "mine")
  assert json.load(open(lock))["run_id"] == "mine"


def test_main_exits_2_naming_the_flag_without_traceback_and_without_a_call(good, capsys):
  path = str(good["tmp"] / "text.db")
  _text_file(path)
  with HttpSink() as api, token_in_env("t" * 16):
    code = pipeline_main.run(["--relays", "ws://127.0.0.1:9", "--migration-api", api.url,
                              "--cdn-base", api.url, "--keys-db", path, "--rows", good["rows"],
                              "--output-dir", good["out"], "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and api.requests == 0
  assert "configuration error: --keys-db: " in err and "Traceback" not in err
  assert not os.path.exists(preflight.lock_path(good["out"]))


def test_a_dry_run_checks_the_output_dir_without_making_it_or_locking(good):
  opts, options = _opts(good, "--dry_run=True")
  preflight.check(opts, options, "")
  assert not os.path.exists(good["out"])
  path = good["tmp"] / "a_file"
  path.write_text("x")
  opts, options = _opts(good, "--dry_run=True", "--output-dir", str(path / "sub"))
  with pytest.raises(ConfigError, match="--output-dir: .* is a file"):
    preflight.check(opts, options, "")
