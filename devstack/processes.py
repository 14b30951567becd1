"""Helpers shared by the local stack's child processes (relay, emulator, bench CDN)."""

import subprocess


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
