"""A run stopped by SIGTERM mid-publish: a clean stop that leaves its record (pipeline/run_record.py);
a run whose disk fills up at the outputs: its journal still names what it published.

The configuration stop (a refused token) is in test_faults.py, the SIGKILL and the re-run
after it in test_reruns.py.
"""

import errno
import glob
import io
import json
import os
import signal

import pytest
from apache_beam.io import textio

from devstack.stack import LocalStack
from pipeline import report
from pipeline.run_record import EXIT_STOPPED
from tests.support.run_checks import d_tag, is_migrated
from tests.support.runs import run_pipeline, signal_mid_run
from transforms.io import journal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stop_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("stop")), n_vines=20, seed=43) as stack:
    yield stack


def test_sigterm_stops_the_run_cleanly_and_leaves_its_record(stop_stack, tmp_path):
  run_dir = os.path.join(str(tmp_path), "termed")

  def published_three():
    records, _ = journal.read_journal(run_dir)
    return sum(r["what"] == journal.PUBLISHED for r in records) >= 3

  code = signal_mid_run(stop_stack, tmp_path, "termed", signal.SIGTERM, published_three)
  with open(os.path.join(str(tmp_path), "termed.log"), encoding="utf-8") as f:
    console = f.read()
  assert code == EXIT_STOPPED, console[-3000:]
  with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["status"] == "stopped" and "SIGTERM" in summary["stop_reason"]
  assert summary["balanced"] is None and summary["published"] >= 3 and summary["argv"]
  with open(os.path.join(run_dir, "progress.json"), encoding="utf-8") as f:
    assert json.load(f)["status"] == "stopped"
  assert not glob.glob(os.path.join(run_dir, "beam-temp-*"))
  # The journal was flushed and closed: it ends with the stop, and names every vine on the relay.
  saw = journal.what_it_saw(journal.read_journal(run_dir)[0])
  assert saw["end"]["status"] == "stopped" and len(saw["published"]) >= 3
  on_relay = {d_tag(e) for e in stop_stack.relay_events() if is_migrated(e)}
  assert set(saw["published"]) <= on_relay <= set(saw["published"]) | set(saw["in_doubt"])
  # Nothing logged as an error: no traceback, no pending task destroyed.
  assert "SIGTERM" in console
  assert " ERROR " not in console and "Traceback" not in console, console[-3000:]
  assert "Task was destroyed" not in console
  with open(os.path.join(run_dir, "run.log"), encoding="utf-8") as f:
    assert "run termed stopped: SIGTERM received" in f.read()


@pytest.fixture(scope="module")
def disk_stack(tmp_path_factory):
  with LocalStack(str(tmp_path_factory.mktemp("disk")), n_vines=8, seed=47) as stack:
    yield stack


def test_a_full_disk_at_the_outputs_leaves_a_journal_the_report_reads(disk_stack, tmp_path,
                                                                      monkeypatch):
  """The issue's full disk: vines published, then "No space left on device" writing the
  outputs. The journal, written as the vines went out, names them; the report reads it."""
  def no_space(self, file_handle, encoded_value):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(textio._TextSink, "write_encoded_record", no_space)
  with pytest.raises(Exception, match="No space left on device"):
    run_pipeline(disk_stack, tmp_path, ["--run-id", "full-disk"])
  run_dir = os.path.join(str(tmp_path), "full-disk")
  assert not os.path.exists(os.path.join(run_dir, "published.ndjson"))
  on_relay = {d_tag(e) for e in disk_stack.relay_events() if is_migrated(e)}
  saw = journal.what_it_saw(journal.read_journal(run_dir)[0])
  assert on_relay and on_relay == set(saw["published"]) and not saw["in_doubt"]
  text = io.StringIO()
  assert report.main(["--output-dir", run_dir, "--plain"], stream=text) == 0
  assert "The run did not finish" in text.getvalue()
  assert "Totals (from journal)" in text.getvalue()
