"""Fast blurhash: a numpy encoder bit-identical to the `blurhash` package.

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

Pixels only: decoding image bytes is `transforms.media.thumbnail`, and doing it
in a sandboxed child process is `transforms.media.isolated_decoder`. No Beam
imports: the pipeline's blurhash stage wraps these functions.
"""

import functools
import math
import random
from typing import Tuple, Union

import numpy as np
from PIL import Image

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


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
