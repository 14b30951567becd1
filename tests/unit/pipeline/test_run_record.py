"""What a local run keeps in its folder while it goes, and its clean stop on a signal."""

import json
import logging
import os
import signal

import pytest

from pipeline import run_record
from transforms.clients import secrets as secret_values
from transforms.io import journal
from transforms.runtime import accounting
from transforms.runtime.outcomes import StopRun


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_atomic_json_and_temp_folders(tmp_path):
  path = str(tmp_path / "p.json")
  run_record.write_json_atomically(path, {"a": 1})
  run_record.write_json_atomically(path, {"a": 2})
  assert json.loads(_read(path)) == {"a": 2} and os.listdir(str(tmp_path)) == ["p.json"]
  os.makedirs(str(tmp_path / "beam-temp-dead_letters.ndjson-1" / "x"))
  (tmp_path / "beam-temp-stray").write_text("")
  assert sorted(run_record.remove_temp_files(str(tmp_path))) == [
      "beam-temp-dead_letters.ndjson-1", "beam-temp-stray"]
  assert os.listdir(str(tmp_path)) == ["p.json"]


@pytest.mark.usefixtures("clean_tally")
def test_progress_file_log_file_and_journal_of_a_run(tmp_path):
  secret = "tok-" + os.urandom(8).hex()
  secret_values.register(secret)
  run_dir = str(tmp_path)
  record = run_record.RunRecord(run_dir, "r1", ["--relays", "ws://x", secret],
                                clock=lambda: 1_700_000_000.0).start()
  try:
    assert os.environ[journal.JOURNAL_ENV] == run_dir
    accounting.inc(accounting.EVENTS_CHECKED, 7)
    accounting.inc(accounting.VIDEOS_REPUBLISHED, 2)
    logging.getLogger("vine_migration").warning("calling with %s", secret)
    record.write_progress("running")
    progress = json.loads(_read(os.path.join(run_dir, "progress.json")))
    assert progress["status"] == "running" and progress["run_id"] == "r1"
    assert progress["stats"] == {"events_checked": 7, "videos_migrated": 0,
                                 "videos_republished": 2, "failed_migrations": 0,
                                 "start_time": "2023-11-14T22:13:20.000+00:00",
                                 "last_checkpoint": "2023-11-14T22:13:20.000+00:00"}
  finally:
    record.close(run_record.FINISHED)
  assert journal.JOURNAL_ENV not in os.environ
  log = _read(os.path.join(run_dir, "run.log"))
  assert "WARNING vine_migration: calling with ***" in log and secret not in log
  assert json.loads(_read(os.path.join(run_dir, "progress.json")))["status"] == "finished"
  saw = journal.what_it_saw(journal.read_journal(run_dir)[0])
  assert saw["run"]["run_id"] == "r1" and secret not in json.dumps(saw["run"]["argv"])
  assert saw["end"]["status"] == "finished" and saw["end"]["reason"] is None


@pytest.mark.usefixtures("clean_tally")
def test_a_signal_stops_the_run_with_a_stopped_summary(tmp_path):
  run_dir = str(tmp_path)
  os.makedirs(os.path.join(run_dir, "beam-temp-published.ndjson-abc"))
  record = run_record.RunRecord(run_dir, "r2", []).start()
  before = signal.getsignal(signal.SIGTERM)
  record.arm_signals()
  try:
    accounting.published()
    with pytest.raises(StopRun, match="SIGTERM received"):
      signal.raise_signal(signal.SIGTERM)
  finally:
    record.disarm_signals()
  assert signal.getsignal(signal.SIGTERM) is before
  code = record.stop("SIGTERM received [while running 'X']",
                     lambda summary: summary.update(argv=["--x"]))
  assert code == run_record.EXIT_STOPPED != 1
  summary = json.loads(_read(os.path.join(run_dir, "summary.json")))
  assert summary["status"] == "stopped" and summary["stop_reason"].startswith("SIGTERM")
  assert summary["published"] == 1 and summary["balanced"] is None and summary["argv"] == ["--x"]
  assert not [n for n in os.listdir(run_dir) if n.startswith("beam-temp-")]
  assert record._timer.finished.is_set()  # the forced exit was called off
  assert journal.what_it_saw(journal.read_journal(run_dir)[0])["end"]["status"] == "stopped"


def test_beam_traceback_of_a_stop_is_dropped():
  keep = run_record.StopRunTraceback()

  def record_of(exc):
    return logging.LogRecord("apache_beam.runners.common", logging.ERROR, __file__, 1, "m", (),
                             (type(exc), exc, None))

  assert not keep.filter(record_of(StopRun("SIGTERM received")))
  assert keep.filter(record_of(ValueError("a real bug")))


@pytest.mark.usefixtures("clean_tally")
def test_a_run_that_ignores_the_stop_is_recorded_then_exits(tmp_path, monkeypatch):
  exits = []

  def fake_exit(code):
    exits.append(code)
    raise SystemExit(code)

  monkeypatch.setattr(run_record.os, "_exit", fake_exit)
  monkeypatch.setattr(run_record.logging, "shutdown", lambda: None)
  record = run_record.RunRecord(str(tmp_path), "r3", []).start()
  record.stop_reason = "SIGINT received"
  with pytest.raises(SystemExit):
    record._force_exit("not stopped 30 s after SIGINT")
  assert exits == [run_record.EXIT_STOPPED]
  summary = json.loads(_read(os.path.join(str(tmp_path), "summary.json")))
  assert summary["status"] == "stopped"
  assert summary["stop_reason"] == "SIGINT received (not stopped 30 s after SIGINT)"
  assert journal.JOURNAL_ENV not in os.environ
