"""Log helpers: a capped log that drops to DEBUG, and the one-line stage summaries."""

import logging

from transforms.runtime.logs import CappedLog, stage_line


def test_capped_log_and_stage_line(caplog):
  log = CappedLog(logging.getLogger("t.capped"), "failures", limit=3)
  with caplog.at_level(logging.DEBUG, "t.capped"):
    for i in range(10):
      log.log("vine %d failed", i)
  levels = [(r.levelno, r.getMessage()) for r in caplog.records]
  assert [m for lvl, m in levels if lvl == logging.WARNING] == [
      "vine 0 failed", "vine 1 failed", "vine 2 failed",
      "3 failures logged: further ones at DEBUG only (the done line counts them)"]
  assert sum(1 for lvl, _ in levels if lvl == logging.DEBUG) == 7 and log.count == 10
  assert stage_line("S", "done", {"a_b": 1, "wait_s": 2.5, "x": "y"}) == (
      "S: done (a b 1, wait 2.5 s, x y)")
