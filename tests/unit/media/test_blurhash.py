"""Tests for transforms.media.blurhash: exact agreement with `blurhash.encode`."""

import math

import blurhash
import numpy as np
import pytest
from PIL import Image

from transforms.media import blurhash as blurhash_fast
from transforms.media.blurhash import encode


def _reference(arr, x=4, y=3):
  return blurhash.encode(arr.tolist(), x, y)


def _random_images(count, seed):
  """Uniform noise, blocky, Gaussian-around-a-colour and near-solid images, in turn."""
  rng = np.random.default_rng(seed)
  for k in range(count):
    kind = k % 4
    if kind == 0:
      yield rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    elif kind == 1:
      blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
      yield np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)
    elif kind == 2:
      centre, spread = rng.integers(0, 256), rng.integers(1, 60)
      yield np.clip(rng.normal(centre, spread, (32, 32, 3)), 0, 255).astype(np.uint8)
    else:
      arr = np.full((32, 32, 3), rng.integers(0, 256, 3), dtype=np.uint8)
      arr[rng.integers(0, 32), rng.integers(0, 32)] = rng.integers(0, 256, 3)
      yield arr


def _special_images():
  yy, xx = np.mgrid[0:32, 0:32]
  black = np.zeros((32, 32, 3), np.uint8)
  white = np.full((32, 32, 3), 255, np.uint8)
  one_pixel = black.copy()
  one_pixel[13, 21] = 255
  corner = black.copy()
  corner[0, 0] = (255, 0, 0)
  hgrad = np.repeat((xx * 255 // 31)[:, :, None], 3, axis=2).astype(np.uint8)
  vgrad = np.repeat((yy * 255 // 31)[:, :, None], 3, axis=2).astype(np.uint8)
  diag = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8)
  checker = (((xx + yy) % 2) * 255).astype(np.uint8)[:, :, None].repeat(3, axis=2)
  return {
      "black": black, "white": white, "one_pixel": one_pixel, "corner": corner,
      "hgrad": hgrad, "vgrad": vgrad, "diag": diag, "checker": checker,
      "grey128": np.full((32, 32, 3), 128, np.uint8),
  }


def test_matches_reference_on_random_images():
  mismatches = [k for k, arr in enumerate(_random_images(500, seed=1234))
                if encode(arr) != _reference(arr)]
  assert mismatches == []


@pytest.mark.parametrize("name", sorted(_special_images()))
def test_matches_reference_on_special_images(name):
  arr = _special_images()[name]
  assert encode(arr) == _reference(arr)


@pytest.mark.parametrize("xy", [(1, 1), (9, 9), (3, 4), (5, 2)])
def test_other_component_counts_and_sizes(xy):
  rng = np.random.default_rng(5)
  for shape in ((32, 32, 3), (12, 20, 3)):
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    assert encode(arr, *xy) == _reference(arr, *xy)


def test_components_are_bit_identical_to_sequential_sums():
  # Guards the summation order itself, not just the rounded string.
  rng = np.random.default_rng(9)
  arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  got = blurhash_fast.components(arr)
  lin = [[[blurhash.srgb_to_linear(v) for v in px] for px in row] for row in arr.tolist()]
  want = []
  for j in range(3):
    for i in range(4):
      norm = 1.0 if (i == 0 and j == 0) else 2.0
      comp = [0.0, 0.0, 0.0]
      for y in range(32):
        for x in range(32):
          basis = norm * math.cos(math.pi * float(i) * float(x) / 32.0) * \
              math.cos(math.pi * float(j) * float(y) / 32.0)
          for c in range(3):
            comp[c] += basis * lin[y][x][c]
      want.append([v / 1024.0 for v in comp])
  assert got.tolist() == want


def test_accepts_pil_image_and_rejects_bad_input():
  arr = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  assert encode(Image.fromarray(arr)) == _reference(arr)
  assert encode(Image.fromarray(arr).convert("RGBA")) == _reference(arr)
  with pytest.raises(ValueError):
    encode(arr.astype(np.float32))
  with pytest.raises(ValueError):
    encode(arr[:, :, 0])
  with pytest.raises(ValueError):
    encode(arr, 0, 3)
