"""Benchmark: the real pipeline on the local stack, with the emulator's latency injection.

    python -m bench.run_bench                      # every scenario (about 18 minutes)
    python -m bench.run_bench --scenario api       # one of api, cpu, cpu1, scale, all
    python -m bench.run_bench --quick              # smaller corpora (about 6 minutes)
    python -m bench.run_bench --profile            # also report where CPU went

Each scenario builds a fresh LocalStack (sample data, a relay, the emulator with
`--latency-ms`/`--latency-jitter-ms`), publishes the "before" events to the relay
(set-up, not measured), then runs `python -m pipeline.main` as a subprocess and
measures it from spawn to exit:

* events/s end to end: published events / wall time of the pipeline process;
* the migrate stage's steady-state rate: migrate calls per second between 10 % and
  90 % of all calls, from the emulator's counters polled 4 times a second;
* the bound and the ratio: C/L for the API-bound scenario; the issue's 500
  events/s target for the CPU-bound ones (whose API bound, C/L = 10,000/s, is far);
* slot utilisation: the emulator's busy_seconds (integral of calls in flight)
  over C x the migrate window, and max_in_flight;
* CPU seconds of the pipeline process tree, the emulator, the relay, and the rest
  of the machine (other users: the host is shared), and events per pipeline
  CPU-second;
* peak RSS: ru_maxrss of the pipeline process (os.wait4) and the peak of the summed
  RSS of its process tree (sampled from /proc; differs with --workers > 1);
* with --profile: the pipeline runs under bench/sampler.py, which reports CPU per
  thread and the functions on-CPU samples were in.

Results are printed as a table and written as JSON (--json). No timing is asserted.
"""

import argparse
import dataclasses
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import requests

from bench.cdn import CdnProcess
from devstack.stack import LocalStack
from transforms.runtime import accounting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_TARGET = 500.0  # events/s on 2 cores, from issue 6
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclasses.dataclass
class Scenario:
  """One measured pipeline run and the stack it runs against."""
  name: str
  n: int
  latency_ms: float
  jitter_ms: float
  api_limit: int
  note: str = ""
  flags: Tuple[str, ...] = ()  # extra pipeline flags of this scenario

  @property
  def api_bound(self) -> float:
    """C / L: the most events per second the API can give (mean latency)."""
    return self.api_limit / (self.latency_ms / 1000.0) if self.latency_ms else float("inf")


def scenarios(which: str, quick: bool) -> List[Scenario]:
  """The issue's scenarios (smaller corpora with quick)."""
  api = Scenario("api", 600 if quick else 2000, 2000.0, 500.0, 30, "API-bound")
  cpu = Scenario("cpu", 5000 if quick else 20000, 20.0, 5.0, 200, "CPU-bound")
  cpu2 = Scenario("cpu-2workers", cpu.n, 20.0, 5.0, 200, "CPU-bound, --workers 2",
                  ("--workers", "2"))
  small = Scenario("scale-small", 2000 if quick else 10000, 20.0, 5.0, 200, "scale")
  # nostr-sdk's in-memory LocalRelay keeps at most 75,000 events (100,000 published, 75,000
  # read back), and with LMDB storage it takes about 160 events/s, which would bound the
  # run: 70,000 vines (about 71,500 events with superseded versions) is the largest corpus
  # the local relay serves whole.
  large = Scenario("scale-large", 20000 if quick else 70000, 20.0, 5.0, 200, "scale")
  table = {"api": [api], "cpu": [cpu, cpu2], "cpu1": [cpu], "scale": [small, large],
           "all": [api, cpu, cpu2, small, large]}
  return table[which]


# ---------------------------------------------------------------------------
# /proc readings.
def proc_cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of a live process (0 if it is gone)."""
  try:
    with open("/proc/%d/stat" % pid, "rb") as f:
      raw = f.read()
  except OSError:
    return 0.0
  fields = raw[raw.rfind(b")") + 2:].split()
  return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
  """CPU seconds all cores spent not idle since boot (/proc/stat)."""
  with open("/proc/stat", encoding="ascii") as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  return (sum(fields[:8]) - idle) / _CLK_TCK


def tree_rss_kb(root: int) -> int:
  """Summed RSS of a process and its descendants (kB)."""
  children: Dict[int, List[int]] = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open("/proc/%s/stat" % entry, "rb") as f:
        raw = f.read()
    except OSError:
      continue
    ppid = int(raw[raw.rfind(b")") + 2:].split()[1])
    children.setdefault(ppid, []).append(int(entry))
  total, todo = 0, [root]
  while todo:
    pid = todo.pop()
    todo.extend(children.get(pid, ()))
    try:
      with open("/proc/%d/statm" % pid, encoding="ascii") as f:
        total += int(f.read().split()[1]) * _PAGE_KB
    except OSError:
      pass
  return total


def machine_info() -> Dict[str, object]:
  model = "unknown"
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    for line in f:
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  with open("/proc/meminfo", encoding="ascii") as f:
    mem_kb = int(f.readline().split()[1])
  return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem_kb / 2 ** 20, 1),
          "python": sys.version.split()[0], "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------------------
# One scenario.
def _emulator_pid(stack: LocalStack) -> Optional[int]:
  proc = getattr(stack.emulator, "_proc", None)  # EmulatorProcess keeps no public pid
  return proc.pid if proc is not None else None


def _crossing(series, level: float) -> Optional[float]:
  for t, calls in series:
    if calls >= level:
      return t
  return None


def run_pipeline(stack: LocalStack, scenario: Scenario, out_dir: str, extra: List[str],
                 profile: bool, cdn: Optional[CdnProcess] = None) -> Dict[str, object]:
  """Runs the pipeline once against a prepared stack; returns the measurements."""
  run_id = "bench-%s-%d" % (scenario.name, int(time.time()))
  args = stack.pipeline_args(output_dir=out_dir, extra=[
      "--api-limit", str(scenario.api_limit), "--run-id", run_id] + list(scenario.flags)
      + list(extra))
  if cdn is not None:
    args[args.index("--cdn-base") + 1] = cdn.url
  module = "bench.profiled_main" if profile else "pipeline.main"
  profile_path = os.path.join(out_dir, "profile-%s.json" % scenario.name)
  env = dict(os.environ, **stack.env())
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  env["BENCH_PROFILE_OUT"] = profile_path
  cprofile_path = os.path.join(out_dir, "cprofile-%s.pstats" % scenario.name)
  if profile:
    env["BENCH_CPROFILE_OUT"] = cprofile_path
    env["BENCH_CPROFILE_CLOCK"] = "cpu"
  emu_pid, relay_pids = _emulator_pid(stack), [r.pid for r in stack.relays]
  cdn_pid = cdn.pid if cdn is not None else None
  emu_url = stack.emulator.url
  requests.post(emu_url + "/_emulator/reset_stats", json={}, timeout=10).raise_for_status()
  emu_cpu0 = proc_cpu_seconds(emu_pid) if emu_pid else 0.0
  relay_cpu0 = sum(proc_cpu_seconds(p) for p in relay_pids if p)
  cdn_cpu0 = proc_cpu_seconds(cdn_pid) if cdn_pid else 0.0
  busy0 = machine_busy_seconds()
  os.makedirs(out_dir, exist_ok=True)
  log_path = os.path.join(out_dir, "pipeline-%s.log" % scenario.name)
  series, peak_tree_kb, last_busy = [], 0, None
  with open(log_path, "w", encoding="utf-8") as log:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", module] + args, cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      try:
        stats = requests.get(emu_url + "/_emulator/stats", timeout=5).json()
        series.append((time.monotonic() - t0, stats["migrate_calls_total"]))
        if stats["in_flight"]:
          last_busy = time.monotonic() - t0
      except requests.RequestException:
        pass
      peak_tree_kb = max(peak_tree_kb, tree_rss_kb(proc.pid))
      time.sleep(0.25)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
  busy = machine_busy_seconds() - busy0
  emu_cpu = (proc_cpu_seconds(emu_pid) if emu_pid else 0.0) - emu_cpu0
  relay_cpu = sum(proc_cpu_seconds(p) for p in relay_pids if p) - relay_cpu0
  cdn_cpu = (proc_cpu_seconds(cdn_pid) if cdn_pid else 0.0) - cdn_cpu0
  pipe_cpu = usage.ru_utime + usage.ru_stime
  stats = requests.get(emu_url + "/_emulator/stats", timeout=10).json()
  summary_path = os.path.join(out_dir, run_id, "summary.json")
  summary = {}
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
  published = int(summary.get("published", 0))
  calls = stats["migrate_calls_total"]
  series.append((wall, calls))
  t_first = _crossing(series, 1)
  t10, t90 = _crossing(series, 0.1 * calls), _crossing(series, 0.9 * calls)
  c10 = next((c for t, c in series if t == t10), 0)
  c90 = next((c for t, c in series if t == t90), 0)
  steady = (c90 - c10) / (t90 - t10) if t10 is not None and t90 and t90 > t10 else None
  t_last = _crossing(series, calls)
  # The migrate window: first call sent .. last call answered (calls in flight seen).
  window_end = max(filter(None, (last_busy, t_last)), default=None)
  window = (window_end - t_first) if t_first is not None and window_end else None
  eps = published / wall if wall else 0.0
  result = {
      "scenario": scenario.name, "note": scenario.note, "n": scenario.n,
      "latency_ms": scenario.latency_ms, "jitter_ms": scenario.jitter_ms,
      "api_limit": scenario.api_limit, "exit_code": proc.returncode,
      "balanced": summary.get("balanced"), "vines_in": summary.get("vines_in"),
      "published": published, "wall_s": round(wall, 2), "events_per_s": round(eps, 1),
      "events_read": int(summary.get("counters", {}).get(accounting.EVENTS_READ, 0)),
      "migrate_calls": calls,
      "migrate_steady_per_s": round(steady, 1) if steady else None,
      "first_call_s": round(t_first, 1) if t_first is not None else None,
      "last_call_s": round(t_last, 1) if t_last is not None else None,
      "migrate_window_s": round(window, 1) if window else None,
      "api_bound_per_s": round(scenario.api_bound, 1),
      "slot_busy_s": stats["busy_seconds"], "max_in_flight": stats["max_in_flight"],
      "slot_util_wall": round(stats["busy_seconds"] / (scenario.api_limit * wall), 3),
      "slot_util_window": (round(stats["busy_seconds"] / (scenario.api_limit * window), 3)
                           if window else None),
      "cpu_pipeline_s": round(pipe_cpu, 1), "cpu_emulator_s": round(emu_cpu, 1),
      "cpu_relay_s": round(relay_cpu, 1), "cpu_cdn_s": round(cdn_cpu, 1),
      "cpu_harness_s": round(emu_cpu + relay_cpu + cdn_cpu, 1),
      "cpu_other_s": round(max(0.0, busy - pipe_cpu - emu_cpu - relay_cpu - cdn_cpu), 1),
      "thumbnails_from": "bench CDN" if cdn is not None else "emulator",
      "events_per_pipeline_cpu_s": round(published / pipe_cpu, 1) if pipe_cpu else None,
      "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
      "peak_tree_rss_mb": round(peak_tree_kb / 1024, 1),
      "log": log_path, "profiled": profile,
  }
  if scenario.name.startswith("api"):
    result["bound_per_s"] = result["api_bound_per_s"]
  else:
    result["bound_per_s"] = CPU_TARGET
  result["ratio"] = round(eps / result["bound_per_s"], 3)
  if profile and os.path.exists(profile_path):
    with open(profile_path, encoding="utf-8") as f:
      result["profile"] = json.load(f)
    if os.path.exists(cprofile_path):
      result["profile"]["bundle_thread"] = bundle_thread_profile(cprofile_path)
  return result


def bundle_thread_profile(path: str, top: int = 20) -> Dict[str, object]:
  """The bundle thread's CPU-clock cProfile: the project's DoFns and the top functions."""
  stats = pstats.Stats(path).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
  total = sum(v[2] for v in stats.values()) or 1.0

  def short(key):
    filename, line, name = key
    for marker in ("/site-packages/", "/lib/python3.11/"):
      if marker in filename:
        filename = filename.split(marker, 1)[1]
        break
    else:
      filename = os.path.relpath(filename, ROOT) if filename.startswith(ROOT) else filename
    return "%s:%d(%s)" % (filename, line, name)

  ours = [(v[3], v[1], short(k)) for k, v in stats.items()
          if k[0].startswith(os.path.join(ROOT, "transforms"))
          and k[2] in ("process", "finish_bundle", "setup", "_emit", "_submit_unsent")]
  self_top = sorted(((v[2], v[1], short(k)) for k, v in stats.items()), reverse=True)[:top]
  return {
      "cpu_s": round(total, 2),
      "dofns_cumulative": [(name, calls, round(100 * t / total, 1))
                           for t, calls, name in sorted(ours, reverse=True)[:top]],
      "self": [(name, calls, round(100 * t / total, 1)) for t, calls, name in self_top],
  }


def run_scenario(scenario: Scenario, work_root: str, extra: List[str], profile: bool,
                 keep: bool, emulator_cdn: bool = False) -> Dict[str, object]:
  """Builds a fresh stack for one scenario, runs the pipeline once, stops the stack."""
  work_dir = os.path.join(work_root, scenario.name)
  shutil.rmtree(work_dir, ignore_errors=True)
  knobs = {"latency_ms": scenario.latency_ms, "latency_jitter_ms": scenario.jitter_ms,
           "seed": 1}
  t0 = time.monotonic()
  cdn = None if emulator_cdn else CdnProcess().start()
  if cdn is not None:
    knobs["cdn_base"] = cdn.url
  print("[%s] set-up: %d sample vines, relay, emulator (latency %g +- %g ms)..."
        % (scenario.name, scenario.n, scenario.latency_ms, scenario.jitter_ms), flush=True)
  try:
    with LocalStack(work_dir, n_vines=scenario.n, emulator_knobs=knobs) as stack:
      setup_s = time.monotonic() - t0
      print("[%s] set-up took %.0f s; running the pipeline..." % (scenario.name, setup_s),
            flush=True)
      result = run_pipeline(stack, scenario, os.path.join(work_dir, "out"), extra, profile, cdn)
  finally:
    if cdn is not None:
      cdn.stop()
  result["setup_s"] = round(setup_s, 1)
  print("[%s] %s events in %.1f s: %.1f events/s (ratio %.2f), peak RSS %.0f MB"
        % (scenario.name, result["published"], result["wall_s"], result["events_per_s"],
           result["ratio"], result["peak_rss_mb"]), flush=True)
  if not keep:
    shutil.rmtree(os.path.join(work_dir, "data"), ignore_errors=True)
  return result


# ---------------------------------------------------------------------------
# Reporting.
def _fmt(value, spec="%.1f") -> str:
  return "-" if value is None else (spec % value if isinstance(value, float) else str(value))


def results_table(results: List[Dict[str, object]]) -> str:
  """A markdown table of the runs, one row per scenario."""
  head = ("| scenario | vines | latency | C | published | wall s | events/s | migrate steady/s "
          "| bound/s | ratio | slot util | max in flight | pipeline CPU s | events/CPU-s "
          "| harness CPU s | other load CPU s | peak RSS MB (tree) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    lines.append("| %s | %d | %g±%g ms | %d | %d | %s | **%s** | %s | %s | **%s** | %s | %s "
                 "| %s | %s | %s | %s | %s (%s) |" % (
                     r["scenario"], r["n"], r["latency_ms"], r["jitter_ms"], r["api_limit"],
                     r["published"], _fmt(r["wall_s"]), _fmt(r["events_per_s"]),
                     _fmt(r["migrate_steady_per_s"]),
                     ("C/L=%g" % r["bound_per_s"]) if r["scenario"].startswith("api")
                     else "target %g" % r["bound_per_s"],
                     _fmt(r["ratio"], "%.2f"),
                     _fmt(r["slot_util_window"], "%.2f"), r["max_in_flight"],
                     _fmt(r["cpu_pipeline_s"]), _fmt(r["events_per_pipeline_cpu_s"]),
                     _fmt(r["cpu_harness_s"]), _fmt(r["cpu_other_s"]),
                     _fmt(r["peak_rss_mb"], "%.0f"), _fmt(r["peak_tree_rss_mb"], "%.0f")))
  return "\n".join(lines)


def derived_lines(results: List[Dict[str, object]], nproc: int) -> List[str]:
  """The per-core and scale comparisons the issue asks for."""
  by = {r["scenario"]: r for r in results}
  lines = []
  for r in results:
    if not r["scenario"].startswith("api"):
      lines.append("%s: %.1f events/s = %.1f events/s per core (%d cores); %.1f events per "
                   "pipeline CPU-second" % (r["scenario"], r["events_per_s"],
                                            r["events_per_s"] / nproc, nproc,
                                            r["events_per_pipeline_cpu_s"] or 0))
  if "api" in by:
    r = by["api"]
    lines.append("api: slot utilisation %.2f over the migrate window (%.1f s from the first call "
                 "sent to the last answered; %.2f over the whole run), max in flight %d of %d; "
                 "first call %.1f s after spawn, exit %.1f s after the last call was sent"
                 % (r["slot_util_window"] or 0, r["migrate_window_s"] or 0, r["slot_util_wall"],
                    r["max_in_flight"], r["api_limit"], r["first_call_s"] or 0,
                    r["wall_s"] - (r["last_call_s"] or 0)))
  if "scale-small" in by and "scale-large" in by:
    s, g = by["scale-small"], by["scale-large"]
    lines.append("scale: %d -> %d vines: throughput x%.2f, peak RSS %.0f -> %.0f MB (x%.2f)"
                 % (s["n"], g["n"], g["events_per_s"] / max(s["events_per_s"], 1e-9),
                    s["peak_rss_mb"], g["peak_rss_mb"], g["peak_rss_mb"] / s["peak_rss_mb"]))
  return lines


def profile_lines(result: Dict[str, object], top: int = 15) -> List[str]:
  prof = result.get("profile")
  if not prof:
    return []
  lines = ["", "profile of %s (%d on-CPU samples over %.0f s)" % (
      result["scenario"], prof["on_cpu_samples"], prof["seconds"]),
           "  CPU seconds by thread: %s" % json.dumps(prof["cpu_by_thread"])]
  lines.append("  on-CPU samples by module @ thread:")
  lines += ["    %5.1f%%  %s" % (pct, name) for name, pct in prof["by_stage_pct"][:top]]
  lines.append("  top functions of on-CPU samples (self; biased towards GIL hand-over points):")
  lines += ["    %5.1f%%  %s" % (pct, name) for name, pct in prof["self_pct"][:top]]
  bundle = prof.get("bundle_thread")
  if bundle:
    lines.append("  bundle thread, cProfile on its CPU clock (%.1f s with the profiler's overhead):"
                 % bundle["cpu_s"])
    lines.append("    the project's DoFns (cumulative, calls):")
    lines += ["    %5.1f%%  %s  x%d" % (pct, name, calls)
              for name, calls, pct in bundle["dofns_cumulative"]]
    lines.append("    top functions (self, calls):")
    lines += ["    %5.1f%%  %s  x%d" % (pct, name, calls)
              for name, calls, pct in bundle["self"][:top]]
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scenario", choices=("api", "cpu", "cpu1", "scale", "all"), default="all")
  parser.add_argument("--quick", action="store_true", help="smaller corpora")
  parser.add_argument("--profile", action="store_true",
                      help="run the pipeline under bench/sampler.py and report where CPU went")
  parser.add_argument("--work-dir", default=None, help="default: a temporary directory")
  parser.add_argument("--keep", action="store_true", help="keep sample data and outputs")
  parser.add_argument("--json", default=None, help="also write the results here")
  parser.add_argument("--emulator-cdn", action="store_true",
                      help="fetch thumbnails from the emulator (renders each: ~8 ms CPU) "
                      "instead of the bench CDN's pre-rendered pool")
  args, extra = parser.parse_known_args(argv)
  info = machine_info()
  work_root = args.work_dir or tempfile.mkdtemp(prefix="vine-bench-")
  os.makedirs(work_root, exist_ok=True)
  results = []
  try:
    for scenario in scenarios(args.scenario, args.quick):
      results.append(run_scenario(scenario, work_root, extra, args.profile, args.keep,
                                   args.emulator_cdn))
  finally:
    if not args.work_dir and not args.keep:
      shutil.rmtree(work_root, ignore_errors=True)
  info["loadavg_end"] = os.getloadavg()
  print()
  print("machine: %d x %s, %.1f GB, Python %s; load average %s at start, %s at end" % (
      info["nproc"], info["cpu_model"], info["mem_gb"], info["python"],
      "/".join("%.2f" % x for x in info["loadavg_start"]),
      "/".join("%.2f" % x for x in info["loadavg_end"])))
  if extra:
    print("extra pipeline flags: %s" % " ".join(extra))
  print(results_table(results))
  for line in derived_lines(results, info["nproc"]):
    print(line)
  for result in results:
    for line in profile_lines(result):
      print(line)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": info, "extra_flags": extra, "results": results}, f, indent=1)
  for r in results:
    if r["events_read"] < 0.99 * r["n"]:
      print("WARNING %s: the pipeline read %d events from the relay for %d vines: the relay "
            "did not hold the corpus" % (r["scenario"], r["events_read"], r["n"]))
  bad = [r["scenario"] for r in results if r["exit_code"] != 0 or not r["balanced"]]
  if bad:
    print("runs that failed or did not add up: %s (see their logs)" % ", ".join(bad))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
