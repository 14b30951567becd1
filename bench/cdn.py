"""A minimal CDN for the benchmark: the emulator's thumbnails from a pre-rendered pool.

    python -m bench.cdn --port 0 --pool 64      # prints READY http://127.0.0.1:<port>

The emulator renders every thumbnail when it is asked for (a numpy gradient and a
JPEG encode: about 8 ms of CPU, more than the whole pipeline spends on one vine),
so on a 2-core machine its CDN, not the pipeline, would be the limit of any
CPU-bound benchmark. This server answers `GET /<uid>/thumbnails/thumbnail.jpg`
with one of `--pool` JPEGs rendered at start-up by the emulator's own renderer
(chosen by the uid, so the same uid always gets the same bytes), over HTTP/1.1
keep-alive, from a bare asyncio protocol: a few tens of microseconds a request.
The pipeline's work per thumbnail (fetch, draft-mode decode, resize, hash) is the
same as against the emulator. `VerifyUrls` checks the media URLs as on the real CDN:
HEAD or GET of `.mp4` and of a Blossom `/<sha256>` answer video/mp4, `thumbnail.gif`
image/gif, manifests 410 (gone, as on the real CDN). Other paths get 404.
"""

import argparse
import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from typing import List, Optional

from devstack.emulator_media import _make_thumbnail  # pylint: disable=protected-access
from devstack.processes import terminate

_THUMB_SUFFIX = b"/thumbnails/thumbnail.jpg"
_BLOSSOM = re.compile(rb"/[0-9a-f]{64}")
_SMALL_BODIES = ((b".mp4", b"video/mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1000),
                 (b"/thumbnails/thumbnail.gif", b"image/gif", b"GIF89a" + b"\x00" * 100))


def render_pool(size: int) -> List[bytes]:
  """`size` distinct 480x480 JPEGs from the emulator's renderer."""
  return [_make_thumbnail(hashlib.md5(b"bench-%d" % i).hexdigest()) for i in range(size)]


class _CdnProtocol(asyncio.Protocol):
  """HTTP/1.1 GET only, keep-alive, pipelining tolerated; no request bodies."""

  def __init__(self, pool: List[bytes], counter: List[int]):
    self._pool = pool
    self._counter = counter
    self._buffer = b""
    self._transport = None

  def connection_made(self, transport):
    self._transport = transport

  def data_received(self, data: bytes) -> None:
    self._buffer += data
    while True:
      end = self._buffer.find(b"\r\n\r\n")
      if end < 0:
        return
      head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
      request_line = head.split(b"\r\n", 1)[0].split()
      path = request_line[1] if len(request_line) >= 2 else b""
      self._transport.write(self._answer(request_line[0] if request_line else b"", path))

  def _answer(self, method: bytes, path: bytes) -> bytes:
    if method not in (b"GET", b"HEAD"):
      return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    uid = path[1:33]
    if path.endswith(_THUMB_SUFFIX) and len(path) == 33 + len(_THUMB_SUFFIX):
      if method == b"GET":
        self._counter[0] += 1
      return self._ok(method, b"image/jpeg",
                      self._pool[int(hashlib.md5(uid).hexdigest()[:8], 16) % len(self._pool)])
    for suffix, content_type, body in _SMALL_BODIES:
      if path.endswith(suffix):
        return self._ok(method, content_type, body)
    if _BLOSSOM.fullmatch(path):  # a Blossom blob, by its hash, as the emulator's CDN serves
      return self._ok(method, b"video/mp4", _SMALL_BODIES[0][2])
    if path.endswith((b".m3u8", b".mpd")):
      return b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n"
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

  @staticmethod
  def _ok(method: bytes, content_type: bytes, body: bytes) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (content_type, len(body)))
    return head if method == b"HEAD" else head + body


async def _serve(port: int, pool_size: int) -> None:
  pool = render_pool(pool_size)
  counter = [0]
  loop = asyncio.get_running_loop()
  server = await loop.create_server(lambda: _CdnProtocol(pool, counter), "127.0.0.1", port)
  bound = server.sockets[0].getsockname()[1]
  print("READY http://127.0.0.1:%d" % bound, flush=True)
  stop = asyncio.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(signum, stop.set)
  await stop.wait()
  server.close()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--pool", type=int, default=64, help="distinct JPEGs (default 64)")
  args = parser.parse_args(argv)
  asyncio.run(_serve(args.port, args.pool))


class CdnProcess:
  """Runs the bench CDN as a subprocess (context manager); `url` and `pid` once started."""

  def __init__(self, pool: int = 64, startup_timeout: float = 30.0):
    self.pool = pool
    self.startup_timeout = startup_timeout
    self.url: Optional[str] = None
    self._proc: Optional[subprocess.Popen] = None

  @property
  def pid(self) -> Optional[int]:
    return self._proc.pid if self._proc else None

  def start(self) -> "CdnProcess":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self._proc = subprocess.Popen([sys.executable, "-m", "bench.cdn", "--pool", str(self.pool)],
                                  cwd=root, stdout=subprocess.PIPE, text=True)
    line: List[str] = []
    reader = threading.Thread(target=lambda: line.append(self._proc.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(self.startup_timeout)
    if not line or not line[0].startswith("READY "):
      self.stop()
      raise RuntimeError("bench CDN did not start")
    self.url = line[0].split()[1]
    return self

  def stop(self) -> None:
    if self._proc is not None:
      terminate(self._proc)
      if self._proc.stdout:
        self._proc.stdout.close()
    self._proc = None

  def __enter__(self) -> "CdnProcess":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


if __name__ == "__main__":
  main()
