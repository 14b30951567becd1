"""A kept local stack (devstack/kept.py): up across runs, a re-run makes no call, --down ends it.

The second run also carries webhooks (pipeline/notify.py): one answers, one hangs; the
hanging one changes neither the exit code nor the summary, and the answering one
receives the run's totals.
"""

import pytest

from devstack.kept import KeptStack
from devstack.processes import pid_alive
from pipeline import notify
from tests.support.http_sink import HttpSink
from tests.support.run_checks import assert_balanced
from tests.support.runs import run_pipeline

pytestmark = pytest.mark.integration


def test_a_kept_stack_serves_two_runs_then_goes_down(tmp_path, monkeypatch):
  work = str(tmp_path / "local")
  first = KeptStack(work, n_vines=12, seed=5, plant_failures=False).start()
  pids = [p["pid"] for p in first.processes()]
  try:
    assert not first.reused and len(pids) == 2 and all(pid_alive(p) for p in pids)
    code, _, summary = run_pipeline(first, tmp_path / "out")
    assert_balanced(code, summary)
    assert summary["published"] == first.manifest["expected_published"] > 0

    again = KeptStack(work, n_vines=12, seed=5, plant_failures=False).start()
    assert again.reused and again.relay_urls == first.relay_urls
    assert again.emulator.url == first.emulator.url and again.token == first.token
    calls = again.emulator.stats()["migrate_calls_total"]
    events = sorted(e["id"] for e in again.relay_events())
    monkeypatch.setattr(notify, "BUDGET_SECONDS", 2.0)
    with HttpSink() as hook, HttpSink(hang=True) as hanging:
      code, _, summary = run_pipeline(again, tmp_path / "out", [
          "--notify-url", hook.url, "--notify-url", hanging.url])
    assert_balanced(code, summary)
    assert again.emulator.stats()["migrate_calls_total"] == calls  # no call
    assert summary["published"] == 0 and sorted(e["id"] for e in again.relay_events()) == events
    body = hook.bodies[-1]
    assert body["event"] == "finished" and body["exit_code"] == code == 0
    assert body["totals"]["vines_in"] == summary["vines_in"]
    assert body["totals"]["published"] == 0 and body["totals"]["balanced"] is True
  finally:
    stopped = KeptStack(work).down()
  assert sorted(stopped) == sorted(pids)
  assert not any(pid_alive(p) for p in pids) and KeptStack(work).state() is None
