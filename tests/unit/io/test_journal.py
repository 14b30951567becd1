"""The run's journal: whole lines per process, what it saw after a crash, where it is written."""

import os
import types

import pytest

from transforms.io import journal
from transforms.runtime import outcomes as dl


@pytest.fixture
def active(tmp_path):
  """A run folder named as the journal's, as the driver does for a local run; forgotten after."""
  run_dir = str(tmp_path / "run")
  os.makedirs(run_dir)
  journal.activate(run_dir)
  yield run_dir
  journal.deactivate()


def test_nothing_is_journaled_without_a_run_folder_here(tmp_path, monkeypatch):
  monkeypatch.delenv(journal.JOURNAL_ENV, raising=False)
  assert journal.open_journal() is None
  assert journal.open_journal(str(tmp_path / "absent")) is None  # e.g. a Dataflow worker
  assert journal.open_journal("gs://bucket/out/run") is None
  dl.make_skip(dl.STAGE_JOIN, "no_event", "v", None)  # no journal: nothing written, no error
  assert not os.path.exists(str(tmp_path / "absent"))


@pytest.mark.usefixtures("clean_tally")
def test_dead_letters_and_skips_are_journaled_as_made_without_payload(active):
  dl.make_dead_letter("r", dl.STAGE_MIGRATE, dl.PERMANENT, "x" * 5000, vine_id="v1",
                      payload={"big": "y" * 100})
  dl.make_skip(dl.STAGE_BUILD, "up_to_date", "v2", "e2")
  records, bad = journal.read_journal(active)
  assert bad == 0 and [r["what"] for r in records] == [journal.DEAD_LETTER, journal.SKIPPED]
  dead, skip = records
  assert dead["vine_id"] == "v1" and "payload" not in dead
  assert len(dead["error"]) == journal.MAX_ERROR_CHARS and dead["pid"] == os.getpid()
  assert (skip["reason"], skip["vine_id"]) == ("up_to_date", "v2")
  assert os.listdir(os.path.join(active, journal.JOURNAL_DIR)) == [
      os.path.basename(journal.journal_path(active))]


def test_what_it_saw_names_vines_sent_without_an_answer(active):
  item, other, lost = (types.SimpleNamespace(vine_id="v%d" % n, outgoing=({"id": "n%d" % n},))
                       for n in (1, 2, 3))  # what PublishJournal reads of a WorkItem
  publish = journal.PublishJournal()
  for each in (item, other, lost):
    publish.sending(each, ["ws://a", "ws://b"])
  publish.published({"vine_id": "v1", "event_id": "n1", "previous_event_id": "old",
                     "stream_uid": "u", "relays": ["ws://a", "ws://b"]})
  publish.not_published(other, dl.PERMANENT, "refused")
  assert journal.read_journal(active) == ([], 0)  # held until PublishEvents flushes
  publish.flush()
  with open(journal.journal_path(active), "ab") as f:
    f.write(b'{"what": "sending", "vine_id": "v4", "ev')  # a line cut by a full disk
  records, bad = journal.read_journal(active)
  assert bad == 1
  sending = [r for r in records if r["what"] == journal.SENDING]
  assert sending[0]["event_ids"] == ["n1"] and sending[0]["relays"] == ["ws://a", "ws://b"]
  saw = journal.what_it_saw(records)
  assert list(saw["published"]) == ["v1"] and list(saw["not_published"]) == ["v2"]
  assert saw["in_doubt"] == ["v3"] and saw["run"] is None and saw["end"] is None
  assert saw["first"] <= saw["last"]


def test_an_unwritable_journal_never_fails_the_run(tmp_path, caplog):
  blocker = tmp_path / "file"
  blocker.write_text("")
  j = journal.Journal(str(blocker / "journal" / "x.ndjson"))  # its folder cannot be made
  j.write(journal.SENDING, vine_id="v")
  j.write(journal.SENDING, vine_id="w")
  assert sum("cannot be written" in r.getMessage() for r in caplog.records) == 1
  j.close()


def test_deactivate_forgets_the_folder(tmp_path):
  run_dir = str(tmp_path)
  assert journal.activate(run_dir) is journal.open_journal()
  assert os.environ[journal.JOURNAL_ENV] == run_dir
  journal.deactivate()
  assert journal.JOURNAL_ENV not in os.environ and journal.open_journal() is None
