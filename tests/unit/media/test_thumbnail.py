"""Tests for transforms.media.thumbnail: safe decoding to 32x32 pixels and their blurhash."""

import io
import struct
import zlib

import blurhash
import numpy as np
import pytest
from PIL import Image

from transforms.media.thumbnail import ThumbnailError, blurhash_for_thumbnail, thumbnail_pixels


def _jpeg(size=480, quality=85):
  yy, xx = np.mgrid[0:size, 0:size]
  arr = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1),
                  (xx + yy) * 255 // (2 * size - 2)], -1).astype(np.uint8)
  arr[200:280, 100:380] = (230, 40, 90)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def _png_header_only(width, height):
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_thumbnail_pixels_of_real_jpeg():
  data = _jpeg()
  pixels = thumbnail_pixels(data)
  assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
  assert pixels.flags["C_CONTIGUOUS"]
  assert pixels[0, 0].max() < 30 and pixels[-1, -1].min() > 220
  # The red bar survives the downscale.
  r, g, b = (int(v) for v in pixels[15, 16])
  assert r > 180 and g < 90 and b < 130
  hashed = blurhash_for_thumbnail(data)
  assert hashed == blurhash.encode(pixels.tolist(), 4, 3)
  assert len(hashed) == 28
  # Deterministic.
  assert blurhash_for_thumbnail(data) == hashed


def test_thumbnail_converts_other_modes():
  for mode in ("L", "RGBA", "P", "CMYK"):
    img = Image.new("RGB", (64, 48), (10, 200, 30)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode in ("L", "CMYK") else "PNG")
    pixels = thumbnail_pixels(buf.getvalue())
    assert pixels.shape == (32, 32, 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all" * 10, b"\xff\xd8\xff\xe0garbage"])
def test_garbage_is_refused(data):
  with pytest.raises(ThumbnailError):
    thumbnail_pixels(data)


def test_truncated_jpeg_is_refused():
  data = _jpeg()
  with pytest.raises(ThumbnailError, match="truncated"):
    thumbnail_pixels(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
  with pytest.raises(ThumbnailError):
    thumbnail_pixels(_png_header_only(30000, 30000))
  with pytest.raises(ThumbnailError, match="pixel cap"):
    thumbnail_pixels(_png_header_only(8000, 6000))


def test_thumbnail_error_is_a_value_error():
  assert issubclass(ThumbnailError, ValueError)
