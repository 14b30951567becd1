"""Fast blurhash for thumbnails: a numpy encoder bit-identical to the `blurhash` package.

The pure-Python `blurhash.encode` (1.1.5) costs tens of milliseconds per 32x32
image; this module computes the same string in tens of microseconds, so the
pipeline can hash every thumbnail without a worker pool. Exactness comes from
replicating the reference arithmetic operation for operation:

* sRGB -> linear uses a 256-entry table filled by the reference's own
  `srgb_to_linear`, so every linear value is the same double.
* Basis values are built once per (width, height, components) with `math.cos`
  and the reference's expression order: `norm * cos(pi*i*x/w) * cos(pi*j*y/h)`.
* Each component is the sum of `basis * linear` over pixels in the reference's
  order (rows, then columns), accumulated left to right from 0.0. numpy's
  `sum` along a contiguous axis uses pairwise summation, which rounds
  differently; `einsum("nc,nk->ck")` and a reduction over the first axis of a
  C-ordered array both add strictly in pixel order. Because that is a numpy
  implementation detail, `_kernel_for` checks each candidate once per shape
  against a plain Python sum and falls back to an exact row-by-row loop.
* Quantisation of the 3 x components values runs in plain Python with the
  reference's formulas (`math.pow`, `math.floor`, `int(x + 0.5)`); for a few
  dozen scalars that is also faster than numpy.

Thumbnail decoding (`thumbnail_pixels`) is the other half: a JPEG is decoded with
libjpeg's DCT scaling (Pillow's draft mode) to the smallest scale that is still at
least 32 pixels on each side, then resized to 32x32 with one fixed filter.

Decoding untrusted bytes is the one place a native library (libjpeg, libpng,
libwebp) could crash or exhaust memory, which no `except` can catch. So the
pipeline decodes through `IsolatedDecoder`: one small child process per decoding
thread (`python -m transforms.media.blurhash`), with an address-space cap, a
per-image deadline, and a replacement process after any crash or timeout. The
pixel cap and the exception mapping below still apply inside the child; they
are the whole defence only where no child process can be started.

No Beam imports: the pipeline's blurhash stage wraps these functions.
"""

import functools
import importlib
import io
import logging
import math
import os
import random
import select
import struct
import subprocess
import sys
import threading
import time
import warnings
import weakref
from typing import Callable, Optional, Tuple, Union

import numpy as np
from PIL import Image

# Declared width*height above which an image is refused before any decoding.
# A 480x480 Vine thumbnail is 0.23 MP; 40 MP covers any real poster frame.
MAX_PIXELS = 40_000_000
# Formats Pillow may try; a narrow list keeps rarely used decoders off the input.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
THUMB_SIZE = 32
# BOX averages every source pixel that falls in each output pixel: no ringing or
# overshoot, cheap, and an area average is what a blurhash wants from its input.
RESAMPLE = Image.Resampling.BOX

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ThumbnailError(ValueError):
  """Bytes that cannot be turned into a thumbnail (not an image, truncated, too large)."""


def _srgb_to_linear(value: int) -> float:
  # Same expression as blurhash.srgb_to_linear, kept here so the table never
  # depends on that package being importable.
  v = float(value) / 255.0
  if v <= 0.04045:
    return v / 12.92
  return math.pow((v + 0.055) / 1.055, 2.4)


_SRGB_TO_LINEAR = np.array([_srgb_to_linear(v) for v in range(256)], dtype=np.float64)


def _linear_to_srgb(value: float) -> int:
  value = max(0.0, min(1.0, value))
  if value <= 0.0031308:
    return int(value * 12.92 * 255 + 0.5)
  return int((1.055 * math.pow(value, 1 / 2.4) - 0.055) * 255 + 0.5)


def _quantise_ac(ac, norm: float, pow_=math.pow, floor=math.floor, copysign=math.copysign):
  """AC values (list of [r, g, b]) to their base-19 triples, as the reference rounds them.

  Plain Python on purpose: 3 * (components - 1) scalars are cheaper here than
  numpy calls, and math.pow is the very function the reference uses (numpy's
  sqrt may differ from pow(x, 0.5) in the last ulp).
  """
  out = []
  for rgb in ac:
    packed = 0
    for value in rgb:
      v = value / norm
      q = floor(copysign(pow_(abs(v), 0.5), v) * 9.0 + 9.5)
      packed = packed * 19 + (0 if q < 0 else 18 if q > 18 else q)
    out.append(packed)
  return out


def _base83(value: int, length: int) -> str:
  return "".join(_ALPHABET[(value // 83 ** (length - i)) % 83] for i in range(1, length + 1))


_BASE83_2 = [_base83(v, 2) for v in range(19 ** 3)]


@functools.lru_cache(maxsize=32)
def _basis(height: int, width: int, x_components: int, y_components: int) -> np.ndarray:
  """Basis table of shape (height*width, components): row n is pixel (n // width, n % width)."""
  w, h = float(width), float(height)
  cos_x = [[math.cos(math.pi * float(i) * float(x) / w) for x in range(width)]
           for i in range(x_components)]
  cos_y = [[math.cos(math.pi * float(j) * float(y) / h) for y in range(height)]
           for j in range(y_components)]
  table = np.empty((height * width, x_components * y_components), dtype=np.float64)
  for j in range(y_components):
    for i in range(x_components):
      norm = 1.0 if (i == 0 and j == 0) else 2.0
      col = j * x_components + i
      for y in range(height):
        cy = cos_y[j][y]
        row = y * width
        for x in range(width):
          table[row + x, col] = norm * cos_x[i][x] * cy
  table.setflags(write=False)
  return table


# Kernels: each returns the (3, components) sums of basis * linear over pixels.
# All must add the terms strictly in pixel order, starting from 0.0, as the
# reference does; which numpy routines do so is an implementation detail of
# numpy, so _kernel_for() checks each candidate against a plain Python sum.
def _kernel_einsum(linear: np.ndarray, basis: np.ndarray) -> np.ndarray:
  # One pass, no temporaries; numpy's einsum walks n outermost for this pattern.
  return np.einsum("nc,nk->ck", linear, basis, optimize=False)


def _kernel_reduce(linear: np.ndarray, basis: np.ndarray) -> np.ndarray:
  # Reducing axis 0 of a C-ordered (pixels, k) array adds row after row.
  products = basis[:, None, :] * linear[:, :, None]
  return np.add.reduce(products.reshape(linear.shape[0], -1), axis=0).reshape(3, -1)


def _kernel_rows(linear: np.ndarray, basis: np.ndarray) -> np.ndarray:
  # Exact by construction (elementwise IEEE adds in pixel order); slow, last resort.
  acc = np.zeros((3, basis.shape[1]), dtype=np.float64)
  for n in range(linear.shape[0]):
    acc += linear[n][:, None] * basis[n][None, :]
  return acc


_KERNELS = (_kernel_einsum, _kernel_reduce, _kernel_rows)
_CHOSEN = {}


def _python_sums(linear: np.ndarray, basis: np.ndarray):
  rows, comps = basis.shape
  lin, bas = linear.tolist(), basis.tolist()
  out = []
  for c in range(3):
    line = []
    for k in range(comps):
      total = 0.0
      for n in range(rows):
        total += bas[n][k] * lin[n][c]
      line.append(total)
    out.append(line)
  return out


def _kernel_for(key: Tuple[int, int, int, int]):
  """Picks, once per shape, the fastest kernel that matches sequential summation."""
  kernel = _CHOSEN.get(key)
  if kernel is None:
    basis = _basis(*key)
    rng = random.Random(20240601)
    values = [rng.randrange(256) for _ in range(basis.shape[0] * 3)]
    linear = _SRGB_TO_LINEAR[np.array(values, dtype=np.uint8).reshape(-1, 3)]
    want = _python_sums(linear, basis)
    kernel = _kernel_rows
    for candidate in _KERNELS:
      if candidate(linear, basis).tolist() == want:
        kernel = candidate
        break
    _CHOSEN[key] = kernel
  return kernel


def _as_array(pixels) -> np.ndarray:
  if isinstance(pixels, Image.Image):
    if pixels.mode != "RGB":
      pixels = pixels.convert("RGB")
  arr = np.asarray(pixels)
  if arr.ndim != 3 or arr.shape[2] < 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError("expected an HxWx3 RGB array, got shape %r" % (arr.shape,))
  if arr.dtype != np.uint8:
    raise ValueError("expected uint8 sRGB values, got %s" % arr.dtype)
  return arr[:, :, :3]


def components(pixels: Union[np.ndarray, Image.Image], x_components: int = 4,
               y_components: int = 3) -> np.ndarray:
  """Returns the unquantised components, shape (x*y, 3), as the reference computes them."""
  arr = _as_array(pixels)
  height, width = arr.shape[0], arr.shape[1]
  key = (height, width, x_components, y_components)
  linear = _SRGB_TO_LINEAR[arr.reshape(height * width, 3)]
  sums = _kernel_for(key)(linear, _basis(*key))
  return sums.T / (float(width) * float(height))


def encode(pixels: Union[np.ndarray, Image.Image], x_components: int = 4,
           y_components: int = 3) -> str:
  """Returns the blurhash of an sRGB image, identical to `blurhash.encode`.

  Args:
    pixels: an HxWx3 uint8 numpy array (rows first, as PIL gives) or a PIL image.
    x_components: horizontal components, 1-9.
    y_components: vertical components, 1-9.

  Returns:
    The blurhash string (4 + 2 * x_components * y_components characters).

  Raises:
    ValueError: component counts out of range, or pixels not HxWx3 uint8.
  """
  if not (1 <= x_components <= 9 and 1 <= y_components <= 9):
    raise ValueError("x and y component counts must be between 1 and 9 inclusive.")
  comps = components(pixels, x_components, y_components)
  dc = comps[0].tolist()
  dc_value = ((_linear_to_srgb(dc[0]) << 16) + (_linear_to_srgb(dc[1]) << 8)
              + _linear_to_srgb(dc[2]))
  ac = comps[1:].tolist()
  max_ac = 0.0
  for r, g, b in ac:
    max_ac = max(max_ac, abs(r), abs(g), abs(b))
  quant_max = int(max(0, min(82, math.floor(max_ac * 166 - 0.5))))
  parts = [
      _ALPHABET[(x_components - 1) + (y_components - 1) * 9],
      _ALPHABET[quant_max],
      _base83(dc_value, 4),
  ]
  parts.extend(_BASE83_2[v] for v in _quantise_ac(ac, float(quant_max + 1) / 166.0))
  return "".join(parts)


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any mode to RGB; transparent areas are composited over white."""
  if img.mode == "RGB":
    return img
  if img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    # 16-bit and float greys: scale to 8 bits rather than clipping to white.
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
  return img.convert("RGB")


def thumbnail_pixels(data: bytes, size: int = THUMB_SIZE) -> np.ndarray:
  """Decodes an image (a JPEG thumbnail, usually) into size x size x 3 uint8 sRGB.

  JPEGs are decoded with Pillow's draft mode, which picks the smallest libjpeg
  DCT scale (1/1, 1/2, 1/4, 1/8) whose output is still at least `size` on both
  sides (480x480 -> 60x60); the result, like any other format, is then resized
  to exactly size x size with a BOX filter (aspect ratio is not kept: a blurhash
  describes the frame it is shown in). EXIF orientation is applied. Truncated
  files are refused because Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is
  False by default; this module never changes it.

  Args:
    data: the encoded image bytes.
    size: output side in pixels.

  Returns:
    A C-contiguous numpy array of shape (size, size, 3), dtype uint8.

  Raises:
    ThumbnailError: not an image, an unsupported format, declared size above
      MAX_PIXELS (checked before decoding), truncated or corrupt data.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
    raise ThumbnailError("empty or non-bytes thumbnail data")
  try:
    with warnings.catch_warnings():
      # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that; our
      # own cap below is lower, so the warning is noise here.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(bytes(data)), formats=ALLOWED_FORMATS)
  except Image.DecompressionBombError:
    raise ThumbnailError("declared image size exceeds the decompression-bomb cap") from None
  except Image.UnidentifiedImageError:
    raise ThumbnailError("not a recognised image (allowed: %s)" % ", ".join(ALLOWED_FORMATS)) from None
  except (OSError, SyntaxError, ValueError, EOFError) as exc:
    raise ThumbnailError("unreadable image header: %s" % type(exc).__name__) from None
  with img:
    width, height = img.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
      raise ThumbnailError("declared image size %dx%d exceeds the %d pixel cap"
                           % (width, height, MAX_PIXELS))
    try:
      orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # pylint: disable=broad-except
      orientation = 1  # corrupt EXIF should not cost the thumbnail
    try:
      if img.format == "JPEG":
        img.draft("RGB", (size, size))
      img.load()
      rgb = _to_rgb(img)
      small = rgb.resize((size, size), RESAMPLE)
    except Image.DecompressionBombError:
      raise ThumbnailError("image exceeds the decompression-bomb cap") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
      message = str(exc)
      if "truncated" in message:
        raise ThumbnailError("truncated image data") from None
      raise ThumbnailError("corrupt image data: %s" % type(exc).__name__) from None
  transpose = _TRANSPOSE.get(orientation)
  if transpose is not None:
    small = small.transpose(transpose)
  return np.ascontiguousarray(np.asarray(small, dtype=np.uint8))


def blurhash_for_thumbnail(data: bytes) -> str:
  """Decodes thumbnail bytes to 32x32 and returns their 4x3 blurhash.

  Raises:
    ThumbnailError: as `thumbnail_pixels`.
  """
  return encode(thumbnail_pixels(data))


# ---------------------------------------------------------------------------
# Isolation: decode in a child process.

_LOG = logging.getLogger(__name__)
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


def serve(func_path: str = "transforms.media.blurhash:blurhash_for_thumbnail",
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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # One thread is all a 32x32 decode needs; BLAS thread pools would only reserve memory.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "transforms.media.blurhash", "--serve", func_path,
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

  def __init__(self, func_path: str = "transforms.media.blurhash:blurhash_for_thumbnail",
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
  parser.add_argument("--serve", default="transforms.media.blurhash:blurhash_for_thumbnail")
  parser.add_argument("--memory-limit", type=int, default=0)
  args = parser.parse_args(argv)
  # Run the imported module's loop, not this __main__ copy's: exceptions raised by
  # the decoder are the imported module's ThumbnailError.
  real = importlib.import_module("transforms.media.blurhash")
  real.serve(args.serve, args.memory_limit)
  return 0


if __name__ == "__main__":
  sys.exit(_main())
