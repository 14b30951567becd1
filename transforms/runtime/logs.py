"""The stage log lines: one shape for every stage's ready and done lines, and capped warnings.

Every stage logs one INFO line when it is ready (`setup()`) and one when it is done
(`teardown()`), "<Stage>: ready (<settings>)" / "<Stage>: done (<counts>)".
Per-element messages are DEBUG, except rare failures an operator must see, which go
through a CappedLog. No Beam import: service clients log through this module too.
"""

import logging
import threading
from typing import Any, Mapping


def stage_line(stage: str, state: str, details: Mapping[str, Any]) -> str:
  """The one shape of stage start/end log lines: "<Stage>: <state> (k v, k v)".

  Args:
    stage: The stage's name, e.g. "MigrateVideo".
    state: "ready" or "done".
    details: Settings or counts, in order; floats are shown with at most two decimals,
      and a key ending in "_s" is a duration in seconds ("timeout_s=60.0" -> "timeout 60 s").

  Returns:
    The line, e.g. "MigrateVideo: done (elements 50, unexpected errors 0)".
  """
  parts = []
  for key, value in details.items():
    unit = ""
    if key.endswith("_s"):
      key, unit = key[:-2], " s"
    if isinstance(value, float):
      value = ("%.2f" % value).rstrip("0").rstrip(".")
    parts.append("%s %s%s" % (key.replace("_", " "), value, unit))
  return "%s: %s (%s)" % (stage, state, ", ".join(parts))


def log_stage(logger: logging.Logger, stage: str, state: str, **details: Any) -> None:
  """Logs a stage_line at INFO."""
  logger.info("%s", stage_line(stage, state, details), stacklevel=2)


class CappedLog:
  """Logs the first `limit` messages at `level`, then one notice, then the rest at DEBUG.

  For per-element failures an operator must see (a vine's retries exhausted): a
  handful are worth a WARNING each, thousands (a failing API) would drown the log.
  Every message is counted (`count`), so a done line can report the total. Safe to
  call from several threads.
  """

  def __init__(self, logger: logging.Logger, what: str, limit: int = 20,
               level: int = logging.WARNING):
    self._logger = logger
    self._what = what
    self._limit = limit
    self._level = level
    self._lock = threading.Lock()
    self.count = 0

  def log(self, msg: str, *args: Any) -> None:
    with self._lock:
      self.count += 1
      count = self.count
    if count <= self._limit:
      self._logger.log(self._level, msg, *args, stacklevel=2)
      if count == self._limit:
        self._logger.log(self._level, "%d %s logged: further ones at DEBUG only (the done "
                         "line counts them)", count, self._what)
    else:
      self._logger.debug(msg, *args, stacklevel=2)
