"""Decoding untrusted thumbnails in a sandboxed child process: IsolatedDecoder.

A native decoder (libjpeg, libpng, libwebp) fed hostile bytes can crash or exhaust
memory, which no `except` can catch. So the pipeline decodes through
`IsolatedDecoder`: one small child process per decoding thread
(`python -m transforms.media.isolated_decoder`), with an address-space cap, a
per-image deadline, and a replacement process after any crash or timeout.

Child protocol, over the child's stdin and stdout: each request is a 4-byte
big-endian length and that many bytes of image; each answer is one status byte
(`K` for a result, `E` for a refusal or an error), a 4-byte length and that many
bytes of UTF-8 text (the blurhash, or the error message). The child exits at EOF.

No Beam imports: the pipeline's blurhash stage wraps this class.
"""

import importlib
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Callable, Optional, Tuple

from transforms.media.thumbnail import ThumbnailError

_LOG = logging.getLogger(__name__)
# The decoder a child runs unless told otherwise ("module:function", imported by the child).
DEFAULT_FUNC_PATH = "transforms.media.thumbnail:blurhash_for_thumbnail"
DEFAULT_DECODE_TIMEOUT = 10.0
# Address space of a decoder child: a 40 MP RGBA image is 160 MB; numpy and
# Pillow take about 100 MB of mappings before any image.
DEFAULT_MEMORY_LIMIT = 1 << 30
_OK, _ERR = b"K", b"E"
_HEADER = struct.Struct(">I")
MAX_RESULT_BYTES = 1 << 16


class DecoderCrash(ThumbnailError):
  """The decoder process died, ran out of its deadline or could not be used."""


def _resolve(func_path: str) -> Callable[[bytes], str]:
  module, _, name = func_path.partition(":")
  return getattr(importlib.import_module(module), name)


def _read_exact(stream, n: int) -> bytes:
  data = b""
  while len(data) < n:
    chunk = stream.read(n - len(data))
    if not chunk:
      raise EOFError("stream closed")
    data += chunk
  return data


def serve(func_path: str = DEFAULT_FUNC_PATH,
          memory_limit: int = 0) -> None:
  """The decoder child's loop: length-prefixed bytes in, status + text out, until EOF."""
  func = _resolve(func_path)
  if memory_limit:
    import resource  # pylint: disable=import-outside-toplevel
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  while True:
    try:
      (size,) = _HEADER.unpack(_read_exact(stdin, _HEADER.size))
      data = _read_exact(stdin, size)
    except EOFError:
      return
    try:
      status, text = _OK, str(func(data))
    except ThumbnailError as exc:
      status, text = _ERR, str(exc)
    except MemoryError:
      status, text = _ERR, "decoding needed more memory than the decoder may use"
    except Exception as exc:  # pylint: disable=broad-except
      status, text = _ERR, "decoder error: %s" % type(exc).__name__
    payload = text.encode("utf-8", "replace")[:MAX_RESULT_BYTES]
    stdout.write(status + _HEADER.pack(len(payload)) + payload)
    stdout.flush()


class _Child:
  """One decoder process and its pipes."""

  def __init__(self, func_path: str, memory_limit: int):
    # The repository root (this file is transforms/media/isolated_decoder.py), so that the
    # child imports this checkout even when the package is not installed.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # One thread is all a 32x32 decode needs; BLAS thread pools would only reserve memory.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "transforms.media.isolated_decoder", "--serve", func_path,
         "--memory-limit", str(memory_limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
    # A DoFn whose teardown never runs (a failed bundle) must not leave children behind.
    weakref.finalize(self, _kill_quietly, self.proc)

  def _read(self, n: int, deadline: float) -> bytes:
    data = b""
    fd = self.proc.stdout.fileno()
    while len(data) < n:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise TimeoutError
      chunk = os.read(fd, n - len(data))
      if not chunk:
        raise EOFError
      data += chunk
    return data

  def call(self, data: bytes, timeout: float) -> Tuple[bytes, str]:
    self.proc.stdin.write(_HEADER.pack(len(data)) + data)
    deadline = time.monotonic() + timeout
    head = self._read(1 + _HEADER.size, deadline)
    (size,) = _HEADER.unpack(head[1:])
    return head[:1], self._read(size, deadline).decode("utf-8", "replace")

  def kill(self) -> Optional[int]:
    if self.proc.poll() is None:
      self.proc.kill()
    code = self.proc.wait()
    for stream in (self.proc.stdin, self.proc.stdout):
      try:
        stream.close()
      except OSError:
        pass
    return code


def _kill_quietly(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.kill()
    proc.wait()


class IsolatedDecoder:
  """Runs a decoder (by default `blurhash_for_thumbnail`) in child processes.

  Thread-safe: each calling thread gets its own child, started on first use. A
  child that crashes (a native fault, the memory cap) or misses the deadline is
  killed and replaced on the next call; the image gets a DecoderCrash, the
  worker lives on. If no child process can be started at all, decoding falls
  back to the calling thread (pixel cap and exception mapping only), once
  logged.
  """

  def __init__(self, func_path: str = DEFAULT_FUNC_PATH,
               timeout: float = DEFAULT_DECODE_TIMEOUT,
               memory_limit: int = DEFAULT_MEMORY_LIMIT):
    self._func_path = func_path
    self._timeout = timeout
    self._memory_limit = memory_limit
    self._local = threading.local()
    self._children = []
    self._lock = threading.Lock()
    self._in_process: Optional[Callable[[bytes], str]] = None
    self.crashes = 0

  def __call__(self, data: bytes) -> str:
    if self._in_process is not None:
      return self._in_process(data)
    child = getattr(self._local, "child", None)
    if child is None:
      try:
        child = _Child(self._func_path, self._memory_limit)
      except OSError as exc:
        _LOG.warning("cannot start a decoder process (%s); decoding in-process", exc)
        self._in_process = _resolve(self._func_path)
        return self._in_process(data)
      self._local.child = child
      with self._lock:
        self._children.append(child)
    try:
      status, text = child.call(bytes(data), self._timeout)
    except (TimeoutError, EOFError, OSError, struct.error) as exc:
      self._local.child = None
      code = child.kill()
      with self._lock:
        self.crashes += 1
        if child in self._children:
          self._children.remove(child)
      if isinstance(exc, TimeoutError):
        raise DecoderCrash("decoder gave no answer within %.1f s" % self._timeout) from None
      raise DecoderCrash("decoder process died (exit code %s)" % code) from None
    if status != _OK:
      raise ThumbnailError(text)
    return text

  def close(self) -> None:
    with self._lock:
      children, self._children = self._children, []
    for child in children:
      child.kill()


def _main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description="Decoder child of IsolatedDecoder.")
  parser.add_argument("--serve", default=DEFAULT_FUNC_PATH)
  parser.add_argument("--memory-limit", type=int, default=0)
  args = parser.parse_args(argv)
  # This __main__ copy's serve() is fine: ThumbnailError comes from
  # transforms.media.thumbnail, the same class the decoder raises.
  serve(args.serve, args.memory_limit)
  return 0


if __name__ == "__main__":
  sys.exit(_main())
