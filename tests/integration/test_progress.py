"""The live progress display on a real run of the local stack, forced on into a StringIO
console: the frames it drew while the run went on, and the last one against the summary."""

import pytest

from pipeline import progress
from tests.support.progress_frames import frames_of, terminal_console
from tests.support.runs import run_pipeline

pytestmark = pytest.mark.usefixtures("clean_tally")


@pytest.mark.integration
def test_live_display_follows_a_real_run(stack, tmp_path, monkeypatch, capsys):
  console = terminal_console()
  monkeypatch.setattr(progress, "make_console", lambda: console)
  monkeypatch.setattr(progress, "REFRESH_SECONDS", 0.02)
  code, run_dir, summary = run_pipeline(stack, tmp_path)
  assert code == 0 and summary["balanced"]

  frames = frames_of(console.file.getvalue())
  final = frames[-1]
  expected = {"read": summary["vines_in"], "published": summary["published"],
              "skipped": sum(summary["skipped"].values()),
              "dead-lettered": sum(summary["dead_lettered"].values()),
              "finished": summary["accounted"]}
  assert {k: final[k] for k in expected} == expected
  assert final["migrated"] == (summary["counters"].get("videos_migrated", 0)
                               + summary["counters"].get("videos_already_migrated", 0))
  # Drawn while the run went on: counts already, but not yet all of them.
  assert any(0 < f["read"] + f["finished"] and f["finished"] < final["finished"]
             for f in frames[:-1]), frames

  assert sum(summary["dead_letter_classes"].values()) == sum(summary["dead_lettered"].values())
  for key in ("argv", "started_at", "finished_at", "seconds", "events_per_second", "event_kind",
              "output_files"):
    assert key in summary, key
  assert summary["argv"][:2] == ["--relays", stack.relay_urls[0]]
  assert summary["event_kind"] == "32222" and summary["seconds"] > 0
  assert {"dead_letters.ndjson", "published.ndjson", "summary.json"} <= set(
      summary["output_files"])
  out = capsys.readouterr().out
  assert "vine-migration run %s" % summary["run_id"] in out and run_dir in out
