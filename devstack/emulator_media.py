"""Synthetic CDN media of the migration emulator: thumbnails, GIFs, MP4s and a PNG bomb.

Every file is a function of the video's uid, so a thumbnail fetched twice has the same
bytes and its blurhash can be checked across runs; distinct uids give visibly distinct
thumbnails. The bench CDN (bench/cdn.py) renders its pool with the same
`_make_thumbnail`.
"""

import hashlib
import io
import zlib

import numpy as np
from PIL import Image

THUMB_SIZE = 480


def _make_thumbnail(uid):
  """Renders a 480x480 JPEG whose gradient and blocks derive from the uid."""
  digest = hashlib.sha256(uid.encode()).digest()
  c1, c2 = np.frombuffer(digest[:3], np.uint8), np.frombuffer(digest[3:6], np.uint8)
  t = np.linspace(0.0, 1.0, THUMB_SIZE)[None, :, None]
  img = np.broadcast_to(c1 * (1 - t) + c2 * t, (THUMB_SIZE, THUMB_SIZE, 3)).copy()
  cell = THUMB_SIZE // 4
  for i, byte in enumerate(digest[6:22]):  # A 4x4 grid of lighter or darker blocks.
    row, col = divmod(i, 4)
    img[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] *= 0.6 + byte / 320.0
  out = io.BytesIO()
  Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, 'JPEG', quality=85)
  return out.getvalue()


def _make_gif(uid):
  digest = hashlib.sha256(uid.encode()).digest()
  frames = [Image.new('RGB', (96, 96), tuple(digest[i:i + 3])) for i in (0, 3, 6)]
  out = io.BytesIO()
  frames[0].save(out, 'GIF', save_all=True, append_images=frames[1:], duration=200, loop=0)
  return out.getvalue()


def _make_mp4(uid):
  ftyp = b'\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom'
  payload = uid.encode() * 64
  return ftyp + (8 + len(payload)).to_bytes(4, 'big') + b'mdat' + payload


def _make_bomb(side=20000):
  """A 1-bit greyscale PNG of side x side pixels: about 50 KB on the wire, 400 Mpx decoded."""
  def chunk(kind, data):
    return len(data).to_bytes(4, 'big') + kind + data + zlib.crc32(kind + data).to_bytes(4, 'big')
  row = b'\x00' * (1 + (side + 7) // 8)
  comp = zlib.compressobj(9)
  block = row * 500
  body = b''.join(comp.compress(block) for _ in range(side // 500)) + comp.flush()
  ihdr = side.to_bytes(4, 'big') * 2 + bytes([1, 0, 0, 0, 0])
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', body) + chunk(b'IEND', b'')
