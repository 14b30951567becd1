"""Following a run: the live tally, the progress display, its quiet rules, the summary table.

The last test runs the real pipeline on the local stack with the display forced on into a
StringIO console and reads the frames it drew.
"""

import io
import logging
import re
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console

from pipeline import main as pipeline_main
from pipeline import progress
from pipeline.options import MigrationOptions
from tests.conftest import run_pipeline
from transforms.runtime import accounting
from transforms.clients import secrets as secret_values
from transforms.runtime import outcomes as dl

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ROW = re.compile(r"^(read|migrated|published|skipped|dead-lettered|finished)\s+(\d+)", re.M)


@pytest.fixture(autouse=True)
def clean_tally():
  accounting.reset_live()
  accounting.reset_deferred()
  yield
  accounting.reset_live()
  accounting.reset_deferred()


def terminal_console(width=100):
  return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def frames_of(text):
  """Each frame the display drew, as {row label: count}, in order."""
  frames = []
  for chunk in _ANSI.sub("", text).split("vine-migration  ")[1:]:
    rows = {label: int(n) for label, n in _ROW.findall(chunk)}
    if len(rows) == 6:
      frames.append(rows)
  return frames


# -- the live tally ---------------------------------------------------------------------------


class _Count(beam.DoFn):
  def process(self, element):
    accounting.flush_deferred()  # moves the other thread's increment into Beam's counter
    accounting.inc("t_beam")
    yield element


def test_live_tally_counts_beam_and_other_threads_once():
  worker = threading.Thread(target=accounting.inc, args=("t_thread", 2))
  worker.start()
  worker.join()
  assert accounting.live_counts()["t_thread"] == 2  # at once, before any flush

  pipeline = beam.Pipeline(options=PipelineOptions(runner="FnApiRunner"))
  _ = pipeline | beam.Create([1, 2, 3]) | beam.ParDo(_Count())
  result = pipeline.run()
  result.wait_until_finish()

  live = accounting.live_counts()
  assert live["t_beam"] == 3
  assert live["t_thread"] == 2  # the flush into Beam's counter does not count it again
  beam_counts = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace(accounting.NAMESPACE))["counters"]}
  assert beam_counts["t_beam"] == 3 and beam_counts["t_thread"] == 2


def test_live_tally_is_exact_under_concurrent_increments():
  threads = [threading.Thread(target=lambda: [accounting.inc("t_many") for _ in range(5000)])
             for _ in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert accounting.live_counts()["t_many"] == 40000


def test_dead_letter_class_counted_once_and_apart_from_stages():
  dl.make_dead_letter("r", dl.STAGE_MIGRATE, dl.PERMANENT, "x")
  dl.make_dead_letter("r", dl.STAGE_SIGN, dl.PERMANENT, "x")
  dl.make_dead_letter("r", dl.STAGE_READ_ROWS, dl.BAD_INPUT, "x")
  live = accounting.live_counts()
  assert live["dead_letter_class_permanent"] == 2 and live["dead_letter_class_bad_input"] == 1
  assert not accounting.DEAD_LETTER_CLASS_PREFIX.startswith(accounting.DEAD_LETTER_PREFIX)
  summary = accounting.summarise({"vines_in": 3, "dead_letters_migrate": 2,
                                  "dead_letters_read_rows": 1, **live})
  assert summary["balanced"] and summary["accounted"] == 3
  assert summary["dead_lettered"] == {"migrate": 2, "read_rows": 1}
  assert summary["dead_letter_classes"] == {"bad_input": 1, "permanent": 2}


# -- the renderer -----------------------------------------------------------------------------

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
  rows = dict(_ROW.findall(text))
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


def test_workers_and_runner_of_a_run():
  def options(*argv):
    return PipelineOptions(list(argv))

  assert pipeline_main.local_workers(options(), 1) == 1
  assert pipeline_main.local_workers(options("--direct_running_mode=multi_processing",
                                             "--direct_num_workers=3"), 1) == 3
  opts = options("--workers", "2")
  pipeline_main.configure_runner(opts, 2)
  assert pipeline_main.local_workers(opts, 2) == 2
  assert pipeline_main.is_local_runner(options())
  assert pipeline_main.is_local_runner(options("--runner", "FnApiRunner"))
  assert not pipeline_main.is_local_runner(options("--runner", "DataflowRunner"))


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
  text = _ANSI.sub("", console.file.getvalue())
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
  text = _ANSI.sub("", console.file.getvalue())
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


def test_run_facts_for_summary_json():
  secret_values.register("s3cr3t-token-value")
  opts = PipelineOptions(["--event-kind", "both"]).view_as(MigrationOptions)
  facts = pipeline_main.run_facts(["--relays", "ws://127.0.0.1:1", "--x", "s3cr3t-token-value"],
                                  opts, 1_700_000_000.0, 1_700_000_010.0, 45,
                                  ["summary.json"])
  assert facts["argv"][:2] == ["--relays", "ws://127.0.0.1:1"]
  assert "s3cr3t-token-value" not in facts["argv"][3]
  assert facts["started_at"] == "2023-11-14T22:13:20.000+00:00"
  assert facts["finished_at"] == "2023-11-14T22:13:30.000+00:00"
  assert facts["seconds"] == 10.0 and facts["events_per_second"] == 4.5
  assert facts["event_kind"] == "both" and facts["output_files"] == ["summary.json"]


# -- the real pipeline ------------------------------------------------------------------------


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
