"""A small sampling profiler for every thread of the pipeline process.

cProfile and pyinstrument see only the thread that starts them, but the pipeline's
work is spread over Beam's bundle thread, the AsyncDoFns' event loops, the blurhash
decode pool and the relay publisher's sender and reader threads. This sampler
takes a stack of every thread `hz` times a second (sys._current_frames) and reads
each thread's CPU time from /proc/self/task/<tid>/stat, so the report shows

* CPU seconds per thread (exact, from the kernel), grouped by thread name;
* the functions on-CPU samples were in (self and inclusive), for threads that were
  running: a sample counts only when its thread's CPU time advanced since the
  previous sample, so threads parked in select() or a lock do not pollute it.

Start it with `Sampler(hz).start()`; `report()` returns a JSON-able dict.
"""

import collections
import os
import sys
import threading
import time
from typing import Dict, List, Tuple

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds(tid: int) -> float:
  """User + system CPU seconds of one thread of this process (0 when it is gone)."""
  try:
    with open("/proc/self/task/%d/stat" % tid, "rb") as f:
      raw = f.read()
  except OSError:
    return 0.0
  fields = raw[raw.rfind(b")") + 2:].split()
  return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _frame_key(code) -> str:
  name = code.co_filename
  for marker in ("/site-packages/", "/lib/python3"):
    at = name.find(marker)
    if at >= 0:
      name = name[at + len(marker):]
      break
  else:
    root = os.getcwd() + os.sep
    if name.startswith(root):
      name = name[len(root):]
  return "%s:%s" % (name, code.co_qualname if hasattr(code, "co_qualname") else code.co_name)


def _our_module(filename: str):
  """`transforms.stages.sign` for a frame in one of the project's packages, else None."""
  if "site-packages" in filename or not filename.endswith(".py"):
    return None
  parts = filename.replace(os.sep, "/")[:-3].split("/")
  for i in range(len(parts) - 1, -1, -1):
    if parts[i] in ("transforms", "pipeline", "devstack"):
      return ".".join(parts[i:])
  return None


def _thread_group(name: str) -> str:
  """Groups numbered threads (blurhash_0, ThreadPoolExecutor-3_1, Thread-7) by kind."""
  head = name.rstrip("0123456789_-")
  if head.startswith("ThreadPoolExecutor"):
    return "ThreadPoolExecutor"
  return head or name


class Sampler:
  """Samples every thread's stack and CPU time in a daemon thread."""

  def __init__(self, hz: float = 100.0):
    self._interval = 1.0 / hz
    self._stop = threading.Event()
    self._self_counts: "collections.Counter[str]" = collections.Counter()
    self._incl_counts: "collections.Counter[str]" = collections.Counter()
    self._stage_counts: "collections.Counter[str]" = collections.Counter()
    self._cpu: Dict[int, Tuple[str, float, float]] = {}  # tid -> (name, first, last)
    self._samples = 0
    self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
    self._started = 0.0

  def start(self) -> "Sampler":
    self._started = time.monotonic()
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    self._thread.join(2.0)

  def _run(self) -> None:
    me = threading.get_ident()
    last_cpu: Dict[int, float] = {}
    while not self._stop.wait(self._interval):
      threads = {t.ident: t for t in threading.enumerate()}
      frames = sys._current_frames()  # pylint: disable=protected-access
      for ident, frame in frames.items():
        if ident == me:
          continue
        thread = threads.get(ident)
        tid = getattr(thread, "native_id", None) if thread else None
        if tid is None:
          continue
        cpu = thread_cpu_seconds(tid)
        name = thread.name
        first = self._cpu.get(tid, (name, cpu, cpu))[1]
        self._cpu[tid] = (name, first, cpu)
        previous = last_cpu.get(tid)
        last_cpu[tid] = cpu
        if previous is None or cpu <= previous:
          continue  # parked since the last sample (tick granularity: 1/_CLK_TCK s)
        self._samples += 1
        self._self_counts[_frame_key(frame.f_code)] += 1
        seen = set()
        stage = None
        f = frame
        while f is not None:
          key = _frame_key(f.f_code)
          if key not in seen:
            seen.add(key)
            self._incl_counts[key] += 1
          if stage is None:
            stage = _our_module(f.f_code.co_filename)
          f = f.f_back
        self._stage_counts[(stage or "beam/other") + " @ " + _thread_group(name)] += 1

  def report(self, top: int = 25) -> Dict:
    """CPU per thread group, and the top functions of on-CPU samples."""
    by_group: Dict[str, float] = collections.defaultdict(float)
    for name, first, last in self._cpu.values():
      by_group[_thread_group(name)] += last - first
    total = max(1, self._samples)

    def table(counter) -> List[Tuple[str, float]]:
      return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "seconds": round(time.monotonic() - self._started, 1),
        "cpu_by_thread": {k: round(v, 2) for k, v in sorted(by_group.items(),
                                                              key=lambda kv: -kv[1])},
        "on_cpu_samples": self._samples,
        "by_stage_pct": table(self._stage_counts),
        "self_pct": table(self._self_counts),
        "inclusive_pct": table(self._incl_counts),
    }
