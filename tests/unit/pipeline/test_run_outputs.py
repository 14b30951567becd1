"""pipeline.run_outputs on small synthetic run directories: error groups, finding the run,
totals from the files when summary.json is missing."""

import os
import time

import pytest

from pipeline import run_outputs
from tests.support.run_dirs import dead_letter, run_report_cli, write_run


def test_normalise_groups_volatile_parts_and_keeps_statuses():
  a = dead_letter("aaaaaaaaaa1", error="gave up after 5 attempts: HTTP 503: upstream "
                  "https://api.example/v1/x?id=aaaaaaaaaa1 at 2026-11-25T14:26:39.966+00:00")
  b = dead_letter("bbbbbbbbbb2", error="gave up after 5 attempts: HTTP 503: upstream "
                  "https://api.example/v1/y?id=bbbbbbbbbb2 at 2026-11-26T01:02:03Z")
  c = dead_letter("ccccccccccc", error="gave up after 5 attempts: HTTP 429: slow down")
  d = dead_letter("ddddddddddd", stage="sign", error_class="permanent",
                  error="no_signing_key: no key for pubkey " + "ab" * 32)
  e = dead_letter("eeeeeeeeeee", stage="sign", error_class="permanent",
                  error="no_signing_key: no key for pubkey " + "cd" * 32)
  groups = run_outputs.top_errors([a, b, c, d, e, a])
  assert [(g["count"], g["stage"], g["error_class"]) for g in groups] == [
      (3, "migrate", "transient_exhausted"), (2, "sign", "permanent"),
      (1, "migrate", "transient_exhausted")]
  assert groups[0]["message"] == "gave up after 5 attempts: HTTP 503: upstream <url> at <time>"
  assert groups[0]["example_vine_id"] == "aaaaaaaaaa1"
  assert groups[1]["message"] == "no_signing_key: no key for pubkey <id>"
  assert "HTTP 429" in groups[2]["message"]
  assert run_outputs.normalise_error("openvine 1751117785015-6d4fdbf8 took 12.5 s, uid "
                                + "0" * 32) == "openvine <openvine_id> took <n> s, uid <uid>"
  assert len(run_outputs.top_errors([a, b, c, d], limit=1)) == 1


def test_newest_run_and_run_dir_and_missing_files(tmp_path):
  out = tmp_path / "out"
  old = write_run(out / "20261101T000000Z-aaaaaa", summary={"run_id": "old", "vines_in": 0})
  new = write_run(out / "20261102T000000Z-bbbbbb", summary=None,
                  dead=[dead_letter("zzzzzzzzzzz")], published=[{"vine_id": "p"}],
                  skipped=[{"reason": "no_event", "vine_id": "s"}])
  past = time.time() - 3600
  for name in os.listdir(old):
    os.utime(os.path.join(old, name), (past, past))
  assert run_outputs.find_run_dir(str(out)) == new
  assert run_outputs.find_run_dir(str(out), "20261101T000000Z-aaaaaa") == old
  assert run_outputs.find_run_dir(new) == new  # a run dir itself
  with pytest.raises(run_outputs.ReportError, match="no run nope"):
    run_outputs.find_run_dir(str(out), "nope")
  with pytest.raises(run_outputs.ReportError, match="does not exist"):
    run_outputs.find_run_dir(str(tmp_path / "absent"))
  # The newest run crashed: no summary.json. Totals come from the files, said so.
  code, text = run_report_cli("--output-dir", str(out), "--plain")
  assert code == 0
  assert "missing: summary.json" in text and "Totals (from files)" in text
  assert "vines in" in text and "unknown (no summary.json)" in text
  tot = run_outputs.totals(run_outputs.load_run(new))
  assert (tot["published"], tot["skipped"], tot["dead_lettered"]) == (
      1, {"no_event": 1}, {"migrate": 1})
  # An empty run directory (stopped before writing anything) is an error, not a traceback.
  os.makedirs(out / "20261103T000000Z-cccccc")
  code, _ = run_report_cli("--output-dir", str(out), "--run-id", "20261103T000000Z-cccccc")
  assert code == 1
  code, _ = run_report_cli("--output-dir", str(tmp_path / "absent"))
  assert code == 1
