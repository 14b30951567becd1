"""pipeline/notify.py: the bodies a webhook receives, and a failing webhook changes nothing."""

import os
import time

import pytest

from pipeline import main as pipeline_main
from pipeline import notify, preflight
from tests.support.http_sink import HttpSink
from tests.support.keys import tiny_keys_db
from tests.support.run_dirs import dead_letter, write_run
from tests.support.runs import token_in_env
from transforms.clients import secrets as secret_values

SECRET = "hook-secret-" + "z" * 20


@pytest.fixture
def run_dir(tmp_path):
  summary = {"vines_in": 6, "published": 2, "skipped": {"up_to_date": 1},
             "dead_lettered": {"migrate": 3}, "balanced": True, "accounted": 6,
             "argv": ["--relays", "ws://127.0.0.1:1", "--keys-db", "/k.db"]}
  dead = [dead_letter("v1", error="HTTP 500 after 5 attempts"),
          dead_letter("v2", error="HTTP 500 after 5 attempts"),
          dead_letter("v3", error="no signing key", error_class="permanent")]
  return write_run(str(tmp_path / "run1"), summary=summary, dead=dead,
                   published=[{"vine_id": "p1"}, {"vine_id": "p2"}])


def test_the_end_of_run_body_carries_totals_failures_and_the_replay_command(run_dir):
  with HttpSink() as sink:
    outcome = notify.send([sink.url], notify.finished_body("run1", run_dir, 0))
  assert outcome == {sink.url: "sent"} and len(sink.bodies) == 1
  body = sink.bodies[0]
  assert body["event"] == "finished" and body["exit_code"] == 0
  assert body["totals"]["vines_in"] == 6 and body["totals"]["published"] == 2
  assert body["totals"]["dead_letter_classes"] == {"permanent": 1, "transient_exhausted": 2}
  assert body["top_failures"][0]["count"] == 2
  assert "--mode replay" in body["replay_command"] and "--mode replay" in body["text"]


def test_a_slack_webhook_gets_slack_text_only(run_dir, monkeypatch):
  assert notify.is_slack("https://hooks.slack.com/services/T/B/X")
  assert not notify.is_slack("https://example.com/hooks.slack.com")
  monkeypatch.setattr(notify, "SLACK_HOST", "127.0.0.1")  # the local sink plays Slack
  with HttpSink() as sink:
    notify.send([sink.url], notify.finished_body("run1", run_dir, 1))
  assert list(sink.bodies[0]) == ["text"] and "run1" in sink.bodies[0]["text"]


def test_no_secret_reaches_a_body():
  secret_values.register(SECRET)
  with HttpSink() as sink:
    notify.send([sink.url], notify.stopped_body("r", "/d", "refused token %s" % SECRET, 1))
  assert SECRET not in str(sink.bodies) and "refused token" in sink.bodies[0]["text"]


def test_a_failing_webhook_is_retried_a_bounded_number_of_times(monkeypatch):
  monkeypatch.setattr(notify, "exponential_backoff", lambda *a, **k: 0.01)
  with HttpSink(status=503) as failing, HttpSink(status=404) as refusing:
    outcome = notify.send([failing.url, refusing.url], notify.config_error_body("x"))
  assert outcome == {failing.url: "HTTP 503", refusing.url: "HTTP 404"}
  assert failing.requests == notify.ATTEMPTS and refusing.requests == 1


def test_a_hanging_webhook_holds_the_run_at_most_the_budget():
  with HttpSink(hang=True) as hanging, HttpSink() as good:
    started = time.monotonic()
    outcome = notify.send([hanging.url, good.url], notify.config_error_body("x"), budget=1.0)
    waited = time.monotonic() - started
  assert outcome[good.url] == "sent" and outcome[hanging.url] != "sent"
  assert waited < 1.0 + notify.CONNECT_TIMEOUT  # the bound, whatever the machine's load


def test_a_refused_configuration_is_notified_and_still_exits_2(tmp_path, capsys):
  keys = str(tmp_path / "keys.db")
  tiny_keys_db(keys, 0o600)
  rows = tmp_path / "rows_dir"
  rows.mkdir()
  with HttpSink() as sink, HttpSink(status=500) as failing, token_in_env("t" * 16):
    code = pipeline_main.run([
        "--relays", "ws://127.0.0.1:9", "--migration-api", "http://127.0.0.1:9",
        "--keys-db", keys, "--rows", str(rows), "--output-dir", str(tmp_path / "out"),
        "--notify-url", sink.url, "--notify-url", failing.url])
  assert code == 2 and "--rows: " in capsys.readouterr().err
  assert sink.bodies[0]["event"] == "config_error" and "--rows: " in sink.bodies[0]["reason"]
  assert not os.path.exists(preflight.lock_path(str(tmp_path / "out")))


def test_no_url_sends_nothing(run_dir, monkeypatch):
  monkeypatch.delenv(notify.ENV_VAR, raising=False)

  class Opts:
    notify_url = None
  assert notify.run_finished(Opts(), "run1", run_dir, 0) == {}
  monkeypatch.setenv(notify.ENV_VAR, " http://127.0.0.1:1/a ,")
  assert notify.notify_urls(Opts()) == ["http://127.0.0.1:1/a"]


def test_every_n_dead_letters_sends_once_per_multiple_passed():
  counts = {}
  with HttpSink() as sink:
    watch = notify.DeadLetterWatch([sink.url], "run1", 3, tally=lambda: dict(counts))
    sent = []
    for migrate, sign in ((0, 0), (2, 0), (2, 1), (3, 1), (4, 3), (9, 3)):
      counts.update({"dead_letters_migrate": migrate, "dead_letters_sign": sign,
                     "dead_letter_class_permanent": migrate + sign})
      sent.append(watch.check())
  assert sent == [False, False, True, False, True, True]
  assert [b["dead_letters"] for b in sink.bodies] == [3, 7, 12]
  assert sink.bodies[-1]["dead_letter_classes"] == {"permanent": 12}


def test_the_watch_is_off_without_a_count_a_url_or_one_process(monkeypatch):
  class Opts:
    notify_url = ["http://127.0.0.1:1/x"]
    notify_every_dead_letters = 5
  assert isinstance(notify.watch_dead_letters(Opts(), "r", in_process=False), notify._NoWatch)
  Opts.notify_every_dead_letters = 0
  assert isinstance(notify.watch_dead_letters(Opts(), "r", in_process=True), notify._NoWatch)
  Opts.notify_every_dead_letters = 5
  watch = notify.watch_dead_letters(Opts(), "r", in_process=True)
  assert isinstance(watch, notify.DeadLetterWatch)
  watch.stop()
