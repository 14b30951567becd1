"""Following a run: the progress display, its quiet rules, the summary table."""

import io
import logging
import time

import pytest
from rich.console import Console

from pipeline import progress
from tests.support.progress_frames import ANSI, ROW, frames_of, terminal_console
from transforms.runtime import accounting

pytestmark = pytest.mark.usefixtures("clean_tally")

_MID_RUN = {"events_read": 120, "rows_read": 110, "vines_in": 100, "videos_migrated": 50,
            "videos_already_migrated": 10, "migrations_reused": 4, "published": 40,
            "skipped_no_event": 3, "skipped_up_to_date": 2, "dead_letters_migrate": 4,
            "dead_letters_sign": 1, "dead_letter_class_permanent": 5}


def test_numbers_sum_the_outcomes():
  n = progress.progress_numbers(_MID_RUN)
  assert (n["vines_in"], n["migrated"], n["published"], n["skipped"], n["dead_lettered"],
          n["finished"]) == (100, 60, 40, 5, 5, 50)


def test_render_rate_and_eta():
  text = progress.render_to_text(progress.render_progress(_MID_RUN, 10.0))
  assert "0:00:10" in text  # elapsed
  assert "5.0" in text and "ETA 0:00:10" in text  # 50 finished in 10 s; 50 left at 5/s
  assert "of ~100 (50 %)" in text
  assert "120 events, 110 rows" in text
  assert "50 new, 10 already on Stream (4 without a call)" in text
  rows = dict(ROW.findall(text))
  assert rows == {"read": "100", "migrated": "60", "published": "40", "skipped": "5",
                  "dead-lettered": "5", "finished": "50"}
  # A measured recent rate overrides the average for the ETA.
  text = progress.render_progress(_MID_RUN, 10.0, rate=25.0)
  assert "ETA 0:00:02" in progress.render_to_text(text)


def test_total_is_estimated_from_the_reads_once_they_are_over():
  # The join is fused with the stages after it: vines_in runs only a little ahead.
  fused = {"events_checked": 500, "dead_letters_read_rows": 2, "dead_letters_read_events": 1,
           "vines_in": 46, "videos_migrated": 40, "skipped_no_vine_id": 1}
  assert progress.expected_vines(fused) == 503
  assert progress.eta_seconds(fused, 10.0) == pytest.approx((503 - 4) / 10.0)
  assert progress.expected_vines(fused, replay=True) == 46  # replay: born before the join
  assert progress.expected_vines(dict(fused, vines_in=510)) == 510
  text = progress.render_to_text(progress.render_progress(fused, 2.0))
  assert "of ~503 (0 %)" in text


def test_eta_is_a_dash_while_reading_or_without_rate():
  reading = {"events_read": 40, "rows_read": 50, "events_checked": 30, "vines_in": 2,
             "skipped_no_vine_id": 1, "dead_letters_read_events": 1}
  assert progress.expected_vines(reading) is None
  assert progress.eta_seconds(reading, 1.0) is None
  text = progress.render_to_text(progress.render_progress(reading, 4.0))
  assert "ETA \u2014" in text and "of \u2014" in text
  assert progress.eta_seconds(_MID_RUN, 0.0) is None
  stalled = progress.render_to_text(progress.render_progress(_MID_RUN, 10.0, rate=0.0))
  assert "ETA \u2014" in stalled
  assert progress.format_duration(3725) == "1:02:05"


def test_final_frame_has_average_rate_and_no_eta():
  text = progress.render_to_text(progress.render_progress(_MID_RUN, 20.0, rate=99.0, done=True))
  assert "done" in text and "2.5" in text and "ETA" not in text
  assert "of 100 (50 %)" in text  # the exact total: vines_in


# -- quiet rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, shows", [
    ({}, True),
    ({"no_progress": True}, False),
    ({"is_terminal": False}, False),
    ({"streaming": True}, False),
    ({"workers": 2}, False),
    ({"local": False}, False),
])
def test_quiet_rules(kwargs, shows):
  args = {"no_progress": False, "is_terminal": True, "streaming": False, "workers": 1,
          "local": True}
  args.update(kwargs)
  assert (progress.quiet_reason(**args) is None) == shows


def test_for_run_follows_stderr_and_says_why_with_workers(monkeypatch, caplog):
  monkeypatch.setattr(progress, "make_console", lambda: Console(file=io.StringIO()))
  assert progress.for_run(no_progress=False, streaming=False, workers=1, local=True) is None
  monkeypatch.setattr(progress, "make_console", terminal_console)
  assert progress.for_run(no_progress=False, streaming=False, workers=1, local=True) is not None
  assert progress.for_run(no_progress=True, streaming=False, workers=1, local=True) is None
  with caplog.at_level(logging.INFO, logger="vine_migration"):
    assert progress.for_run(no_progress=False, streaming=False, workers=4, local=True) is None
  lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert len(lines) == 1 and "worker processes" in lines[0], lines


# -- the display thread -----------------------------------------------------------------------


def test_display_draws_frames_from_the_tally_with_an_injected_clock():
  now = [100.0]
  counts = {"vines_in": 10, "events_read": 10}
  console = terminal_console()
  display = progress.ProgressDisplay(console, tally=lambda: dict(counts), clock=lambda: now[0],
                                     interval=3600)  # frames drawn by hand below
  display.start()
  for step in range(1, 6):
    now[0] += 1.0
    counts.update(videos_migrated=2 * step, published=2 * step)
    display._live.update(display.frame(), refresh=True)  # what the thread does each tick
  display.stop()
  frames = frames_of(console.file.getvalue())
  assert frames[0]["published"] == 0 and frames[-1]["published"] == 10
  assert [f["published"] for f in frames[1:6]] == [2, 4, 6, 8, 10]
  text = ANSI.sub("", console.file.getvalue())
  assert "ETA 0:00:00" in text and "vine-migration  0:00:05  done" in text
  assert display.last_counts["published"] == 10


def test_rate_leaves_the_reading_out():
  now = [0.0]
  counts = {"events_checked": 100, "vines_in": 1, "dead_letters_read_events": 1}
  display = progress.ProgressDisplay(terminal_console(), tally=lambda: dict(counts),
                                     clock=lambda: now[0], interval=3600)
  display.start()
  now[0] = 20.0  # 20 s of reading, one vine finished
  display.frame()
  for second in range(1, 6):  # then 10 vines a second
    now[0] = 20.0 + second
    counts.update(videos_migrated=10 * second, published=10 * second)
    frame = progress.render_to_text(display.frame())
  display.stop()
  assert "10.0" in frame and "ETA 0:00:05" in frame, frame  # 51 of ~101 done, 50 left at 10/s


def test_a_failed_run_ends_on_a_stopped_frame():
  console = terminal_console()
  with pytest.raises(RuntimeError):
    with progress.ProgressDisplay(console, tally=lambda: dict(_MID_RUN), interval=3600):
      raise RuntimeError("boom")
  text = ANSI.sub("", console.file.getvalue())
  assert "stopped" in text and "done" not in text
  assert "ETA" not in text.split("stopped")[-1]


def test_display_thread_refreshes_on_its_own():
  counts = {"vines_in": 1}
  console = terminal_console()
  with progress.ProgressDisplay(console, tally=lambda: dict(counts), interval=0.01) as display:
    deadline = time.monotonic() + 10
    while display.frames < 5 and time.monotonic() < deadline:
      time.sleep(0.01)
  assert display.frames >= 5
  assert len(frames_of(console.file.getvalue())) >= 5


# -- the summary ------------------------------------------------------------------------------


def test_summary_table_shows_every_reason_class_time_and_rate():
  counters = dict(_MID_RUN, dead_letter_class_transient_exhausted=1,
                  dead_letter_class_permanent=4)
  summary = accounting.summarise(counters)
  summary.update({"run_id": "run-x", "counters": counters, "seconds": 12.5,
                  "events_per_second": 3.2, "started_at": "2026-11-25T10:00:00.000+00:00",
                  "finished_at": "2026-11-25T10:00:12.500+00:00",
                  "output_files": ["dead_letters.ndjson", "summary.json"]})
  console = Console(file=io.StringIO(), width=120, color_system=None)
  progress.print_summary(summary, "out/run-x", [("dead letters", "p:d.dead_letters")],
                         console=console)
  text = console.file.getvalue()
  lines = [" ".join(line.split()) + " " for line in text.splitlines()]
  for expected in ("vines in 100", "published 40", "skipped 5", "no_event 3", "up_to_date 2",
                   "dead-lettered 5", "migrate 4", "sign 1", "permanent 4",
                   "transient_exhausted 1", "accounting DOES"):
    assert any(line.startswith(expected + " ") for line in lines), (expected, text)
  assert "DOES NOT ADD UP" in text and "100 in = 50 out" in text
  assert "12.5 s" in text and "3.2" in text and "published per second" in text
  assert "out/run-x" in text and "dead_letters.ndjson, summary.json" in text
  assert "p:d.dead_letters" in text
  assert 'counters: {"events_read": 120,' in text and "dead_letter_class" not in text.split(
      "counters:")[1]


def test_summary_table_names_the_event_kind_and_events_published():
  counters = dict(_MID_RUN, events_published=79)
  summary = accounting.summarise(counters)
  summary.update({"run_id": "r", "counters": counters, "event_kind": "both"})
  console = Console(file=io.StringIO(), width=120, color_system=None)
  progress.print_summary(summary, console=console)
  published = [line for line in console.file.getvalue().splitlines()
               if line.split()[:1] == ["published"]]
  assert published and " ".join(published[0].split()) == (
      "published 40 as kind 32222 + 34236, 79 events")


def test_seed_stats_of_the_progress_file():
  counts = {"events_checked": 12, "videos_migrated": 5, "videos_republished": 4,
            "failed_migrations": 1, "published": 4}
  stats = progress.seed_stats(counts, 0.0, 61.5)
  assert stats == {"events_checked": 12, "videos_migrated": 5, "videos_republished": 4,
                   "failed_migrations": 1, "start_time": "1970-01-01T00:00:00.000+00:00",
                   "last_checkpoint": "1970-01-01T00:01:01.500+00:00"}
  assert progress.seed_stats({}, 0.0, 0.0)["events_checked"] == 0
