"""A real Nostr relay on 127.0.0.1 for tests and local runs (nostr-sdk's LocalRelay).

Run standalone::

  python -m devstack.relay --port 0 [--lmdb DIR] [--nip42-write] \
      [--max-reqs 500] [--notes-per-minute 100000]

It prints exactly one line ``READY ws://127.0.0.1:<port>`` once it accepts
connections and runs until SIGTERM or SIGINT. ``RelayProcess`` starts it as a
subprocess and can stop and restart it on the same port, so tests can make a
relay go away for a while and come back.
"""

import argparse
import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Deque, List, Optional

from devstack.processes import ROOT, child_env, terminate

HOST = "127.0.0.1"
READY_PREFIX = "READY "
# LocalRelay's default (60 events per minute per connection) throttles any bulk test.
DEFAULT_NOTES_PER_MINUTE = 100000
DEFAULT_MAX_REQS = 500


def free_port(host: str = HOST) -> int:
  """Returns a TCP port that was free a moment ago (bind to port 0, read it, close)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind((host, 0))
    return sock.getsockname()[1]


def _wait_listening(port: int, timeout: float) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((HOST, port), timeout=0.5):
        return True
    except OSError:
      time.sleep(0.02)
  return False


async def _serve(args: argparse.Namespace) -> None:
  # Imported here so that RelayProcess users need not load the Rust bindings.
  import nostr_sdk  # pylint: disable=import-outside-toplevel

  loop = asyncio.get_running_loop()
  # uniffi async calls (NostrLmdb.open among them) need the loop registered first.
  nostr_sdk.uniffi_set_event_loop(loop)
  port = args.port or free_port()
  builder = (
      nostr_sdk.LocalRelayBuilder()
      .addr(HOST)
      .port(port)
      .rate_limit(nostr_sdk.RateLimit(
          max_reqs=args.max_reqs, notes_per_minute=args.notes_per_minute)))
  if args.lmdb:
    os.makedirs(args.lmdb, exist_ok=True)
    builder = builder.database(await nostr_sdk.NostrLmdb.open(args.lmdb))
  if args.nip42_write:
    builder = builder.nip42(nostr_sdk.LocalRelayBuilderNip42(
        mode=nostr_sdk.LocalRelayBuilderNip42Mode.WRITE))
  relay = builder.build()
  stop = asyncio.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(signum, stop.set)
  # run() binds and returns at once; the server lives on the Rust runtime.
  await relay.run()
  if not await loop.run_in_executor(None, _wait_listening, port, 10.0):
    raise RuntimeError("relay did not start listening on port %d" % port)
  print("%sws://%s:%d" % (READY_PREFIX, HOST, port), flush=True)
  await stop.wait()
  relay.shutdown()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one.")
  parser.add_argument("--lmdb", default=None, help="LMDB directory (default: in memory).")
  parser.add_argument("--nip42-write", action="store_true",
                      help="Require NIP-42 authentication before accepting events.")
  parser.add_argument("--max-reqs", type=int, default=DEFAULT_MAX_REQS,
                      help="Maximum open subscriptions per connection.")
  parser.add_argument("--notes-per-minute", type=int, default=DEFAULT_NOTES_PER_MINUTE,
                      help="Events accepted per minute per connection.")
  return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
  asyncio.run(_serve(parse_args(argv)))


class RelayProcess:
  """A devstack relay in a subprocess; a context manager.

  Attributes:
    url: ``ws://127.0.0.1:<port>`` once the port is known (given, or at start()).
    port: the TCP port, kept across stop() and start() so clients can reconnect.
    pid: the subprocess id while it runs, else None.
  """

  def __init__(self, port: int = 0, lmdb: Optional[str] = None, nip42_write: bool = False,
               max_reqs: int = DEFAULT_MAX_REQS,
               notes_per_minute: int = DEFAULT_NOTES_PER_MINUTE,
               ready_timeout: float = 20.0):
    self.port = port
    self.lmdb = lmdb
    self.nip42_write = nip42_write
    self.max_reqs = max_reqs
    self.notes_per_minute = notes_per_minute
    self.ready_timeout = ready_timeout
    self.url: Optional[str] = "ws://%s:%d" % (HOST, port) if port else None
    self._proc: Optional[subprocess.Popen] = None
    self._stderr: Deque[str] = collections.deque(maxlen=40)
    self._stderr_thread: Optional[threading.Thread] = None

  @property
  def pid(self) -> Optional[int]:
    return self._proc.pid if self._proc is not None else None

  def command(self) -> List[str]:
    """The relay's command line (devstack/kept.py starts it detached)."""
    cmd = [sys.executable, "-m", "devstack.relay", "--port", str(self.port),
           "--max-reqs", str(self.max_reqs),
           "--notes-per-minute", str(self.notes_per_minute)]
    if self.lmdb:
      cmd += ["--lmdb", self.lmdb]
    if self.nip42_write:
      cmd.append("--nip42-write")
    return cmd

  def _pump_stderr(self, stream) -> None:
    for line in stream:
      self._stderr.append(line.rstrip("\n"))

  def start(self) -> "RelayProcess":
    """Starts the relay (on the same port as before, if it ran before) and waits for READY.

    Raises:
      RuntimeError: the process exited or did not report READY within ready_timeout.
    """
    if self._proc is not None:
      return self
    if not self.port:
      self.port = free_port()
    root, env = ROOT, child_env()
    self._stderr.clear()
    deadline = time.monotonic() + self.ready_timeout
    # Right after a stop the port can still be held briefly: retry the bind.
    while True:
      proc = subprocess.Popen(
          self.command(), cwd=root, env=env, stdin=subprocess.DEVNULL,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      self._stderr_thread = threading.Thread(
          target=self._pump_stderr, args=(proc.stderr,), daemon=True)
      self._stderr_thread.start()
      line = self._read_ready(proc, deadline)
      if line is not None:
        break
      proc.wait()
      if time.monotonic() >= deadline or "in use" not in self._tail():
        raise RuntimeError("relay on port %d did not start: %s" % (self.port, self._tail()))
      time.sleep(0.2)
    self._proc = proc
    self.url = line[len(READY_PREFIX):].strip()
    return self

  def _read_ready(self, proc: subprocess.Popen, deadline: float) -> Optional[str]:
    """Returns the READY line, or None after killing a process that died or hung."""
    result: List[str] = []
    reader = threading.Thread(
        target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    line = result[0] if result else ""
    if line.startswith(READY_PREFIX):
      return line
    if proc.poll() is None:
      proc.kill()
    if self._stderr_thread is not None:
      self._stderr_thread.join(1.0)
    return None

  def _tail(self) -> str:
    return " | ".join(list(self._stderr)[-10:]) or "(no stderr)"

  def stop(self, timeout: float = 10.0) -> None:
    """Stops the relay (SIGTERM, then SIGKILL); the port stays reserved for start()."""
    proc, self._proc = self._proc, None
    if proc is None:
      return
    terminate(proc, timeout)
    if self._stderr_thread is not None:
      self._stderr_thread.join(2.0)  # ends at EOF now that the process is gone
    for stream in (proc.stdout, proc.stderr):
      if stream is not None:
        stream.close()

  def __enter__(self) -> "RelayProcess":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


if __name__ == "__main__":
  main()
