"""`python -m pipeline.report` on small synthetic run directories: a run without dead letters,
unreadable lines, the replay command it prints, and a killed run read from its journal."""

import json
import os

from tests.support.run_dirs import dead_letter, run_report_cli, write_run
from transforms.io import journal
from transforms.io import local_files as sinks


def test_run_without_dead_letters_and_unreadable_lines(tmp_path):
  run = write_run(tmp_path / "r1", summary={"run_id": "r1", "vines_in": 1, "published": 1,
                                            "skipped": {}, "dead_lettered": {},
                                            "balanced": True, "accounted": 1},
                  published=[{"vine_id": "v", "notes": []}])
  with open(os.path.join(run, sinks.SKIPPED_FILE), "w", encoding="utf-8") as f:
    f.write("not json\n")
  code, text = run_report_cli("--output-dir", run, "--plain")
  assert code == 0
  assert "no dead letters: nothing to replay" in text
  assert "Top error messages: no dead letters" in text
  assert "1 lines of skipped.ndjson are not JSON" in text
  code, text = run_report_cli("--output-dir", run, "--json")
  data = json.loads(text)
  assert data["totals"]["published"] == 1 and data["replay"]["replayable"] == 0


def test_a_killed_run_is_read_from_its_journal(tmp_path):
  run = str(tmp_path / "killed")
  os.makedirs(run)
  j = journal.Journal(journal.journal_path(run))
  j.write(journal.RUN, run_id="killed", argv=["--relays", "ws://127.0.0.1:1", "--run-id", "k"],
          started_at="2026-01-01T00:00:00.000+00:00")
  j.write(journal.SKIPPED, stage="join", reason="no_event", vine_id="s1", event_id=None)
  j.write(journal.DEAD_LETTER, **journal.dead_letter_entry(dead_letter("d1", error="boom")))
  for vine_id in ("p1", "p2"):
    j.write(journal.SENDING, vine_id=vine_id, event_ids=["e" + vine_id], relays=["ws://r"])
  j.write(journal.PUBLISHED, vine_id="p1", event_id="ep1", previous_event_id="o1",
          stream_uid="u", relays=["ws://r"])
  j.close()
  code, text = run_report_cli("--output-dir", str(tmp_path), "--plain")
  assert code == 0  # the newest run is found by its journal alone
  assert "The run did not finish" in text and "Totals (from journal)" in text
  assert "sent without an answer: p2" in text
  assert "python -m pipeline.main --relays ws://127.0.0.1:1" in text and "--run-id" not in text
  assert "Replay the dead letters" not in text  # there is no dead_letters.ndjson to replay
  code, text = run_report_cli("--output-dir", run, "--vine-id", "p1", "--json")
  assert json.loads(text)["vine"]["status"] == "published"
  code, text = run_report_cli("--output-dir", run, "--json")
  data = json.loads(text)
  assert data["totals"]["published"] == 1 and data["totals"]["dead_lettered"] == {"migrate": 1}
  assert data["unfinished"]["in_doubt"] == ["p2"]
