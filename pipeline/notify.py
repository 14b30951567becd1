"""Webhook notifications of a run: when it finishes, stops, or is refused for its configuration.

    python -m pipeline.main ... --notify-url https://hooks.slack.com/services/T/B/X \\
        --notify-url https://ops.example.com/hooks/vine

Each `--notify-url` (repeatable; or env NOTIFY_URLS, comma-separated) receives one JSON
POST per event of the run:

- `finished`: the totals, the most frequent failures and the command that replays the
  dead letters, all as `pipeline.report` computes them from the run's files (build_report);
- `stopped`: the run stopped on a configuration error found while it ran (StopRun: the
  API refused the token, ...), with the reason;
- `config_error`: the configuration was refused before the run (exit 2), with the message.
- `dead_letters`: with `--notify-every-dead-letters N`, each time the run's dead letters
  pass a multiple of N (local runs in one process: the launcher reads the live tally of
  transforms/runtime/accounting.py; other runners send only the events above).

The body is generic JSON (`event`, `run_id`, `exit_code`, `text`, ...); a Slack webhook
(host hooks.slack.com) gets only `{"text": ...}`, which is what it accepts. Every text
passes through transforms/clients/secrets.scrub, and a webhook's URL, a credential
itself (Slack's holds its token), is registered as a secret and never logged: logs name
the host only.

Sent from the launcher, in parallel, each with a short timeout and a few retries, all
within BUDGET_SECONDS: a failing or hanging webhook is logged as a warning and changes
nothing else (never the exit code; the run waits at most the budget).
"""

import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import requests

from transforms.clients import secrets as secret_values
from transforms.core.backoff import exponential_backoff

_LOG = logging.getLogger(__name__)

ENV_VAR = "NOTIFY_URLS"
SLACK_HOST = "hooks.slack.com"
ATTEMPTS = 3
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
# The most a run waits for its notifications, whatever the webhooks do.
BUDGET_SECONDS = 10.0
TOP_FAILURES = 5

FINISHED = "finished"
STOPPED = "stopped"
CONFIG_ERROR = "config_error"
DEAD_LETTERS = "dead_letters"
WATCH_INTERVAL_SECONDS = 2.0


def notify_urls(opts) -> List[str]:
  """The run's webhook URLs: every --notify-url, else env NOTIFY_URLS (comma-separated)."""
  given = list(getattr(opts, "notify_url", None) or [])
  if not given:
    given = os.environ.get(ENV_VAR, "").split(",")
  return [u.strip() for u in given if u and u.strip()]


def register_secrets(urls: Sequence[str]) -> None:
  """A webhook URL is a credential: scrubbed from the summary's argv, logs and bodies."""
  for url in urls:
    secret_values.register(url)


def is_slack(url: str) -> bool:
  return (urlsplit(url).hostname or "").lower() == SLACK_HOST


def _scrubbed(value: Any) -> Any:
  if isinstance(value, str):
    return secret_values.scrub(value)
  if isinstance(value, dict):
    return {k: _scrubbed(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_scrubbed(v) for v in value]
  return value


# ---------------------------------------------------------------------------
# Bodies.


def finished_body(run_id: str, run_dir: str, exit_code: int) -> Dict[str, Any]:
  """The end-of-run body, from the run's files as `pipeline.report` reads them."""
  from pipeline.report import build_report  # pylint: disable=import-outside-toplevel
  from pipeline.run_outputs import load_run  # pylint: disable=import-outside-toplevel
  report = build_report(load_run(run_dir), top=TOP_FAILURES)
  tot = report["totals"]
  failures = [{k: e[k] for k in ("count", "stage", "error_class", "message")}
              for e in report.get("top_errors") or []]
  dead = sum((tot.get("dead_lettered") or {}).values())
  skipped = sum((tot.get("skipped") or {}).values())
  replay = report["replay"]["command"] if report["replay"]["replayable"] else None
  text = ("vine-migration run %s finished (exit %d, %s): %s vines in, %s published, %d "
          "skipped, %d dead-lettered" % (run_id, exit_code,
                                         "balanced" if tot.get("balanced") else "NOT balanced",
                                         tot.get("vines_in"), tot.get("published"), skipped, dead))
  classes = tot.get("dead_letter_classes") or {}
  if classes:
    text += " (%s)" % ", ".join("%s %d" % (c, n) for c, n in
                                sorted(classes.items(), key=lambda kv: (-kv[1], kv[0])))
  if failures:
    text += "\ntop failure: %d x %s/%s: %s" % (failures[0]["count"], failures[0]["stage"],
                                               failures[0]["error_class"], failures[0]["message"])
  if replay:
    text += "\nreplay: %s" % replay
  return {"event": FINISHED, "run_id": run_id, "run_dir": run_dir, "exit_code": exit_code,
          "totals": {"vines_in": tot.get("vines_in"), "published": tot.get("published"),
                     "skipped": tot.get("skipped"), "dead_lettered": tot.get("dead_lettered"),
                     "dead_letter_classes": classes, "balanced": tot.get("balanced")},
          "top_failures": failures, "replay_command": replay, "text": text}


def stopped_body(run_id: str, run_dir: str, reason: str, exit_code: int) -> Dict[str, Any]:
  return {"event": STOPPED, "run_id": run_id, "run_dir": run_dir, "exit_code": exit_code,
          "reason": reason,
          "text": "vine-migration run %s stopped (exit %d): %s" % (run_id, exit_code, reason)}


def config_error_body(message: str) -> Dict[str, Any]:
  return {"event": CONFIG_ERROR, "exit_code": 2, "reason": message,
          "text": "vine-migration refused its configuration (exit 2): %s" % message}


def dead_letters_body(run_id: str, counts: Dict[str, int]) -> Dict[str, Any]:
  """A `dead_letters` body from live counts: how many so far, by class."""
  from transforms.runtime import accounting  # pylint: disable=import-outside-toplevel
  total = sum(v for k, v in counts.items() if k.startswith(accounting.DEAD_LETTER_PREFIX))
  prefix = accounting.DEAD_LETTER_CLASS_PREFIX
  classes = {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}
  return {"event": DEAD_LETTERS, "run_id": run_id, "dead_letters": total,
          "dead_letter_classes": classes,
          "text": "vine-migration run %s: %d dead letters so far (%s)" % (
              run_id, total, ", ".join("%s %d" % kv for kv in classes.items()) or "-")}


# ---------------------------------------------------------------------------
# Sending.


def _post(url: str, body: Dict[str, Any], deadline: float, results: Dict[str, str]) -> None:
  outcome = "not sent"
  for attempt in range(1, ATTEMPTS + 1):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      answer = requests.post(url, json=body, timeout=(min(CONNECT_TIMEOUT, remaining),
                                                      min(READ_TIMEOUT, remaining)))
      if answer.status_code < 300:
        results[url] = "sent"
        return
      outcome = "HTTP %d" % answer.status_code
      if 400 <= answer.status_code < 500 and answer.status_code != 429:
        break  # refused: the same body will be refused again
    except requests.RequestException as exc:
      outcome = type(exc).__name__  # the text may quote the URL
    if attempt < ATTEMPTS:
      time.sleep(max(0.0, min(exponential_backoff(attempt, 0.5, 2.0),
                              deadline - time.monotonic())))
  results[url] = outcome


def send(urls: Sequence[str], body: Dict[str, Any],
         budget: Optional[float] = None) -> Dict[str, str]:
  """Posts `body` to every URL at once; returns each URL's outcome within `budget` seconds.

  Never raises: a webhook that fails or hangs is logged (by host) and reported as such.
  """
  budget = BUDGET_SECONDS if budget is None else budget
  body = _scrubbed(body)
  results: Dict[str, str] = {}
  deadline = time.monotonic() + budget
  threads = []
  for url in urls:
    payload = {"text": body["text"]} if is_slack(url) else body
    thread = threading.Thread(target=_post, args=(url, payload, deadline, results),
                              name="notify", daemon=True)  # a hung one never holds the exit
    thread.start()
    threads.append(thread)
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  outcomes = {url: results.get(url, "no answer within %.0f s" % budget) for url in urls}
  for url, outcome in outcomes.items():
    host = urlsplit(url).hostname or "?"
    if outcome == "sent":
      _LOG.info("notification %s sent to %s", body.get("event"), host)
    else:
      _LOG.warning("notification %s to %s failed: %s (the run is not affected)",
                   body.get("event"), host, outcome)
  return outcomes


def _safely(opts, make_body) -> Dict[str, str]:
  urls = notify_urls(opts)
  if not urls:
    return {}
  try:
    body = make_body()
  except Exception as exc:  # pylint: disable=broad-except
    _LOG.warning("notification not sent: its body could not be built (%s)", type(exc).__name__)
    return {}
  return send(urls, body)


def run_finished(opts, run_id: str, run_dir: str, exit_code: int) -> Dict[str, str]:
  """Notifies the end of a run (after summary.json is written)."""
  return _safely(opts, lambda: finished_body(run_id, run_dir, exit_code))


def run_stopped(opts, run_id: str, run_dir: str, reason: str, exit_code: int = 1):
  """Notifies a run that stopped on a configuration error found while it ran."""
  return _safely(opts, lambda: stopped_body(run_id, run_dir, reason, exit_code))


def config_error(opts, message: str) -> Dict[str, str]:
  """Notifies a configuration refused before the run (only to URLs that are themselves valid)."""
  from pipeline.options import ConfigError, check_http_url  # pylint: disable=import-outside-toplevel
  usable = []
  for url in notify_urls(opts):
    try:
      check_http_url("--notify-url", url)
    except ConfigError:
      continue
    usable.append(url)
  if not usable:
    return {}
  register_secrets(usable)
  return send(usable, config_error_body(message))


class DeadLetterWatch:
  """Sends a `dead_letters` body each time the live tally passes a multiple of `every`.

  Runs in its own thread (a slow webhook never slows the run); `stop()` waits for it at
  most one sending budget.
  """

  def __init__(self, urls: Sequence[str], run_id: str, every: int, tally=None,
               interval: float = WATCH_INTERVAL_SECONDS):
    from transforms.runtime import accounting  # pylint: disable=import-outside-toplevel
    self._urls, self._run_id, self._every = list(urls), run_id, max(1, every)
    self._tally = tally or accounting.live_counts
    self._interval = interval
    self._sent = 0  # multiples of `every` already notified
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def check(self) -> bool:
    """Sends when a new multiple was passed since the last check; True when it sent."""
    body = dead_letters_body(self._run_id, self._tally())
    step = body["dead_letters"] // self._every
    if step <= self._sent:
      return False
    self._sent = step
    send(self._urls, body)
    return True

  def _loop(self) -> None:
    while not self._stop.wait(self._interval):
      try:
        self.check()
      except Exception:  # pylint: disable=broad-except
        _LOG.debug("dead-letter notification check failed", exc_info=True)

  def start(self) -> "DeadLetterWatch":
    self._thread = threading.Thread(target=self._loop, name="notify-watch", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(BUDGET_SECONDS)


class _NoWatch:
  def stop(self) -> None:
    pass


def watch_dead_letters(opts, run_id: str, in_process: bool):
  """The started watch of --notify-every-dead-letters, or an object whose stop() does nothing.

  Args:
    opts: the run's options.
    run_id: the run.
    in_process: whether the run's counts are this process's live tally (a local run in
      one process); elsewhere the option is ignored, with a log line saying so.
  """
  every = int(getattr(opts, "notify_every_dead_letters", 0) or 0)
  urls = notify_urls(opts)
  if not every or not urls:
    return _NoWatch()
  if not in_process:
    _LOG.info("--notify-every-dead-letters: only local runs in one process can be watched; "
              "the end of the run is notified")
    return _NoWatch()
  return DeadLetterWatch(urls, run_id, every).start()
