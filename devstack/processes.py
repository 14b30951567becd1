"""Helpers shared by the local stack's child processes (relay, emulator, bench CDN).

`terminate` stops a child this process started. The kept stack (devstack/kept.py) starts
processes that outlive the command that started them (`spawn_detached`: own session,
output to a log file, pid recorded) and stops them later by pid from another command
(`stop_pid`), after checking the pid is still the process it started (`runs_module`).
"""

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Tuple

# The repository: children run there, with it on PYTHONPATH.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """This process's environment for a child `python -m devstack.X`, plus `extra`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra or {})
  return env


def terminate(proc: subprocess.Popen, timeout: float = 5.0) -> None:
  """SIGTERM, then SIGKILL when the process has not exited within `timeout` seconds."""
  if proc.poll() is not None:
    return
  proc.terminate()
  try:
    proc.wait(timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _reap(pid: int) -> None:
  """Collects the exit status of our own child (a zombie otherwise looks alive)."""
  try:
    os.waitpid(pid, os.WNOHANG)
  except ChildProcessError:
    pass  # not our child: init reaps it


def pid_alive(pid: int) -> bool:
  """Whether `pid` is a running process (a zombie is not)."""
  if not pid or pid <= 0:
    return False
  _reap(pid)
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
  except OSError:
    return True  # no /proc here: trust kill(0)


def runs_module(pid: int, module: str) -> bool:
  """Whether `pid` runs `python -m <module>` (a recycled pid is some other program)."""
  try:
    with open("/proc/%d/cmdline" % pid, "rb") as f:
      args = f.read().decode("utf-8", "replace").split("\0")
  except FileNotFoundError:
    return False
  except OSError:
    return pid_alive(pid)  # no /proc here: trust the pid file
  return module in args


def spawn_detached(cmd: List[str], log_path: str, ready_prefix: str, env: Dict[str, str],
                   cwd: str, timeout: float = 20.0) -> Tuple[int, str]:
  """Starts `cmd` in its own session, output appended to `log_path`; waits for its ready line.

  The process survives the command that started it (it gets no terminal signal and
  no pipe that closes with us). Returns (pid, the ready line).

  Raises:
    RuntimeError: it exited or printed no ready line within `timeout` (it is killed).
  """
  start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
  with open(log_path, "ab") as log:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    line = _ready_line(log_path, start, ready_prefix)
    if line is not None:
      return proc.pid, line
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  terminate(proc, 2.0)
  with open(log_path, "rb") as f:
    f.seek(start)
    tail = f.read().decode("utf-8", "replace")[-1500:]
  raise RuntimeError("%s did not start: %s" % (" ".join(cmd[:3]), tail or "(no output)"))


def _ready_line(log_path: str, start: int, prefix: str) -> Optional[str]:
  with open(log_path, "rb") as f:
    f.seek(start)
    for raw in f.read().decode("utf-8", "replace").splitlines():
      if raw.startswith(prefix):
        return raw.strip()
  return None


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
  """SIGTERM, then SIGKILL after `timeout` seconds; True once the process is gone."""
  if not pid_alive(pid):
    return True
  for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
    try:
      os.kill(pid, signum)
    except ProcessLookupError:
      return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
      if not pid_alive(pid):
        return True
      time.sleep(0.05)
  return not pid_alive(pid)
