"""Beam's portable stack for a test: the SDK's job service and an external worker pool.

Both are subprocesses on free ports, each in its own working directory and with an
environment built from scratch (`worker_env`), so a run through `PortableRunner` sees
none of the launcher's process state: no module globals, no in-process counter tally,
no launcher-only environment variables. What the worker needs must travel in the
pipeline (pickled DoFns, options) or be in the worker's own environment, as on a real
cluster. `recording_prepare` keeps the exact `PrepareJobRequest` the launcher sends,
for the secret scan.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

from apache_beam.runners.portability import portable_runner

from tests.support.paths import ROOT

# Upper bound on a service's start-up (a loaded machine imports Beam slowly).
START_TIMEOUT_S = 60.0
_POLL_S = 0.05


def free_port() -> int:
  """A TCP port nothing listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log_path: str,
                  timeout: float = START_TIMEOUT_S) -> None:
  """Returns once something accepts connections on the port; raises when the process
  exits first or `timeout` seconds pass (the message carries the log's tail)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError("exited with %s before listening on %d:\n%s"
                         % (proc.returncode, port, _tail(log_path)))
    with contextlib.suppress(OSError), socket.create_connection(("localhost", port), 0.5):
      return
    time.sleep(_POLL_S)
  raise RuntimeError("nothing listens on %d after %.0f s:\n%s" % (port, timeout, _tail(log_path)))


def worker_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """What a worker gets: the project on PYTHONPATH, this venv's `python` first on PATH
  (the pool starts each SDK worker as `python -c ...`), a locale, and `extra`."""
  env = {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
         "PYTHONPATH": ROOT, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
  env.update(extra or {})
  return env


def stop_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
  """Stops a process started with start_new_session and what it started (the pool's SDK
  workers): SIGTERM to its group, SIGKILL after `timeout` s, then to any member left."""
  if proc.poll() is not None:  # already reaped: its id may belong to another process now
    return
  with contextlib.suppress(ProcessLookupError):
    os.killpg(proc.pid, signal.SIGTERM)
  try:
    proc.wait(timeout)
  except subprocess.TimeoutExpired:
    pass
  # The group id stays reserved while a member lives: this reaches only what is left of it.
  with contextlib.suppress(ProcessLookupError):
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()


def _tail(path: str, lines: int = 40) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return "(no log)"


class PortableServices:
  """The job service and the worker pool, started and stopped together.

  Args:
    work_dir: Each process gets its own directory under it (its cwd and its log).
    worker_extra_env: Variables the workers get on top of `worker_env()` (the API token).
  """

  def __init__(self, work_dir: str, worker_extra_env: Optional[Dict[str, str]] = None):
    self.work_dir = os.path.abspath(work_dir)
    self.worker_extra_env = dict(worker_extra_env or {})
    self.job_port = self.pool_port = 0
    self._procs: List[subprocess.Popen] = []
    self._logs: List = []

  def _start(self, name: str, module: str, args: List[str], env: Dict[str, str],
             port: int) -> None:
    cwd = os.path.join(self.work_dir, name)
    os.makedirs(cwd, exist_ok=True)
    log_path = os.path.join(cwd, name + ".log")
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    self._logs.append(log)
    proc = subprocess.Popen([sys.executable, "-m", module] + args, cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    self._procs.append(proc)
    wait_for_port(port, proc, log_path)

  def start(self) -> "PortableServices":
    try:
      self.pool_port = free_port()
      self._start("worker_pool", "apache_beam.runners.worker.worker_pool_main",
                  ["--service_port=%d" % self.pool_port],
                  worker_env(self.worker_extra_env), self.pool_port)
      self.job_port = free_port()
      # The job service runs the runner, never project code: Beam alone, no project path.
      job_env = {k: v for k, v in worker_env().items() if k != "PYTHONPATH"}
      self._start("job_service", "apache_beam.runners.portability.local_job_service_main",
                  ["--port=%d" % self.job_port], job_env, self.job_port)
    except BaseException:
      self.stop()
      raise
    return self

  def stop(self) -> None:
    for proc in reversed(self._procs):
      stop_group(proc)
    for log in self._logs:
      log.close()
    self._procs, self._logs = [], []

  def __enter__(self) -> "PortableServices":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def pipeline_args(self) -> List[str]:
    """Beam flags that send a run to this job service, its bundles to this worker pool."""
    return ["--runner=PortableRunner", "--job_endpoint=localhost:%d" % self.job_port,
            "--environment_type=EXTERNAL", "--environment_config=localhost:%d" % self.pool_port]

  def log(self, name: str) -> str:
    """The output so far of "job_service" or "worker_pool"."""
    return _tail(os.path.join(self.work_dir, name, name + ".log"), lines=10**6)


@contextlib.contextmanager
def recording_prepare(monkeypatch):
  """Yields a list that receives the serialized `PrepareJobRequest` of every job submitted:
  the pipeline proto and the options exactly as they go to the job service."""
  sent: List[bytes] = []
  original = portable_runner.JobServiceHandle.prepare

  class _Recorder:
    def __init__(self, stub):
      self._stub = stub

    def Prepare(self, request, **kwargs):  # noqa: N802 (the gRPC method's name)
      sent.append(request.SerializeToString())
      return self._stub.Prepare(request, **kwargs)

    def __getattr__(self, name):
      return getattr(self._stub, name)

  def prepare(handle, proto_pipeline):
    stub = handle.job_service
    handle.job_service = _Recorder(stub)
    try:
      return original(handle, proto_pipeline)
    finally:
      handle.job_service = stub

  monkeypatch.setattr(portable_runner.JobServiceHandle, "prepare", prepare)
  yield sent
