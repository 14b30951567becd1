"""`python -m pipeline.main` with the bench's all-threads sampler running beside it.

    BENCH_PROFILE_OUT=profile.json python -m bench.profiled_main <pipeline flags>

Writes the sampler's report (CPU per thread, top on-CPU functions) as JSON to
$BENCH_PROFILE_OUT when the run ends and exits with the pipeline's exit code. With
$BENCH_CPROFILE_OUT set, Beam's bundle thread (the main thread on the in-memory
runner) also runs under cProfile and its stats are dumped there (pstats format).
With $BENCH_TRACEMALLOC_OUT set, Python allocations are traced and the biggest
allocation sites at the peak of traced memory are written there as JSON (slow:
for finding who holds memory, not for timing).
"""

import cProfile
import json
import os
import sys
import threading
import time
import tracemalloc

from bench.sampler import Sampler


class _PeakMemory:
  """Keeps a tracemalloc snapshot taken near the peak of traced memory."""

  def __init__(self, path: str):
    tracemalloc.start(1)
    self._path = path
    self._peak = 0
    self._snapshot = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="bench-tracemalloc", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(2.0):
      current = tracemalloc.get_traced_memory()[0]
      if current > self._peak * 1.05:
        self._peak = current
        self._snapshot = tracemalloc.take_snapshot()

  def write(self) -> None:
    self._stop.set()
    self._thread.join(30)
    top = []
    if self._snapshot is not None:
      for stat in self._snapshot.statistics("lineno")[:25]:
        frame = stat.traceback[0]
        top.append({"site": "%s:%d" % (frame.filename, frame.lineno),
                    "mb": round(stat.size / 2 ** 20, 1), "blocks": stat.count})
    with open(self._path, "w", encoding="utf-8") as f:
      json.dump({"peak_traced_mb": round(self._peak / 2 ** 20, 1), "top_sites": top}, f,
                indent=1)


def main() -> int:
  hz = float(os.environ.get("BENCH_PROFILE_HZ", "100"))
  if os.environ.get("BENCH_SWITCH_INTERVAL"):  # experiments with the GIL's switch interval
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
  sampler = Sampler(hz).start()
  memory = (_PeakMemory(os.environ["BENCH_TRACEMALLOC_OUT"])
            if os.environ.get("BENCH_TRACEMALLOC_OUT") else None)
  from pipeline import main as pipeline_main  # pylint: disable=import-outside-toplevel
  cprofile_out = os.environ.get("BENCH_CPROFILE_OUT")
  # BENCH_CPROFILE_CLOCK=cpu: the bundle thread's CPU time, so waits for the GIL
  # (which inflate a wall-clock profile of a threaded process) do not count.
  clock = time.thread_time if os.environ.get("BENCH_CPROFILE_CLOCK") == "cpu" else None
  profiler = (cProfile.Profile(clock) if clock else cProfile.Profile()) if cprofile_out else None
  try:
    if profiler:
      profiler.enable()
    code = pipeline_main.run(sys.argv[1:])
  finally:
    if profiler:
      profiler.disable()
      profiler.dump_stats(cprofile_out)
    sampler.stop()
    if memory is not None:
      memory.write()
    out = os.environ.get("BENCH_PROFILE_OUT")
    if out:
      with open(out, "w", encoding="utf-8") as f:
        json.dump(sampler.report(), f, indent=1)
  return code


if __name__ == "__main__":
  sys.exit(main())
