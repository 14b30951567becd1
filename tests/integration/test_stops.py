"""A run stopped by SIGTERM mid-publish: a clean stop that leaves its record (pipeline/run_record.py).

The configuration stop (a refused token) is in test_faults.py, the SIGKILL and the re-run
after it in test_reruns.py.
"""

import glob
import json
import os
import signal

import pytest

from devstack.stack import LocalStack
from pipeline.run_record import EXIT_STOPPED
from tests.support.run_checks import d_tag, is_migrated
from tests.support.runs import signal_mid_run
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
