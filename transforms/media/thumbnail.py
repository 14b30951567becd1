"""Thumbnail decoding: image bytes to 32x32 sRGB pixels, and those pixels to a blurhash.

A JPEG is decoded with libjpeg's DCT scaling (Pillow's draft mode) to the smallest
scale that is still at least 32 pixels on each side, then resized to 32x32 with one
fixed filter; other formats are decoded in full, then resized the same way. EXIF
orientation is applied, and a declared size above MAX_PIXELS is refused before any
decoding.

Decoding untrusted bytes is the one place a native library (libjpeg, libpng,
libwebp) could crash or exhaust memory, which no `except` can catch, so the
pipeline runs `blurhash_for_thumbnail` in a child process
(`transforms.media.isolated_decoder`). The pixel cap and the exception mapping
below still apply inside the child; they are the whole defence only where no
child process can be started.

No Beam imports: the pipeline's blurhash stage wraps these functions.
"""

import io
import warnings

import numpy as np
from PIL import Image

from transforms.media.blurhash import encode

# Declared width*height above which an image is refused before any decoding.
# A 480x480 Vine thumbnail is 0.23 MP; 40 MP covers any real poster frame.
MAX_PIXELS = 40_000_000
# Formats Pillow may try; a narrow list keeps rarely used decoders off the input.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
THUMB_SIZE = 32
# BOX averages every source pixel that falls in each output pixel: no ringing or
# overshoot, cheap, and an area average is what a blurhash wants from its input.
RESAMPLE = Image.Resampling.BOX

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
