"""The migration emulator's CDN: its routes, and synthetic thumbnails, GIFs, MP4s and a PNG bomb.

Every file is a function of the video's uid, so a thumbnail fetched twice has the same
bytes and its blurhash can be checked across runs; distinct uids give visibly distinct
thumbnails. The bench CDN (bench/cdn.py) renders its pool with the same
`_make_thumbnail`.
"""

import asyncio
import hashlib
import io
import re
import zlib

import numpy as np
from aiohttp import web
from PIL import Image

from devstack.emulator_state import CDN_KINDS

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


# --- The CDN routes (what cdn.divine.video answers; see the reference's last section) ---
#
# The real CDN worker dispatches on the path alone, so HEAD gets GET's status and headers
# (aiohttp answers HEAD on every GET route the same way, without the body), and MP4s
# honour a byte Range (206) as its R2 path does.

PLACEHOLDER_SVG = (
  b'<svg xmlns="http://www.w3.org/2000/svg" width="480" height="480" viewBox="0 0 480 480">'
  b'<rect width="480" height="480" fill="#1f1f1f"/><text x="240" y="250" fill="#9a9a9a" '
  b'font-size="28" text-anchor="middle">No thumbnail</text></svg>')
_GONE = {'error': 'gone', 'reason': 'stream_removed',
         'message': 'HLS/DASH streaming is no longer available. Please use direct MP4 URLs instead.'}
_RANGE_RE = re.compile(r'^bytes=(\d+)-(\d*)$')


def _media_response(request, body, content_type):
  """200 with the whole body, or 206 with the asked byte range (416 when outside it)."""
  match = _RANGE_RE.match(request.headers.get('Range', '').strip())
  if not match:
    return web.Response(body=body, content_type=content_type, headers={'Accept-Ranges': 'bytes'})
  start = int(match.group(1))
  end = min(int(match.group(2)) if match.group(2) else len(body) - 1, len(body) - 1)
  if start > end:
    return web.Response(status=416, headers={'Content-Range': f'bytes */{len(body)}'})
  return web.Response(status=206, body=body[start:end + 1], content_type=content_type, headers={
    'Accept-Ranges': 'bytes', 'Content-Range': f'bytes {start}-{end}/{len(body)}'})


def _not_found():
  return web.json_response({'error': 'not_found'}, status=404)


def _placeholder():
  return web.Response(body=PLACEHOLDER_SVG, content_type='image/svg+xml')


_CDN_TYPES = {
  'thumbnail.jpg': ('image/jpeg', _make_thumbnail), 'thumbnail.gif': ('image/gif', _make_gif),
  'default.mp4': ('video/mp4', _make_mp4)}


def add_cdn_routes(app, state_key):
  """Adds the CDN paths to the emulator `app`, whose EmulatorState is at `app[state_key]`.

  * `/{uid}/manifest/video.m3u8` and `.mpd`: 410 `{"error":"gone","reason":"stream_removed"}`
    as the CDN answers since Oct 2025; a manifest is served only with the Aug 2025 shape and
    `manifest_gone` off.
  * `/{uid}/thumbnails/thumbnail.jpg|gif`: the image; a missing one (unknown uid, or a uid in
    `thumb_404_uids`) is a 200 SVG placeholder, never a 404, as on the real CDN.
  * `/{uid}/downloads/default.mp4`, `/{sha256}.mp4` and the Blossom `/{sha256}`: video/mp4
    (ranges honoured), 404 for unknown videos.
  """
  # Imported here: emulator_faults imports this module for the PNG bomb.
  from devstack.emulator_faults import (  # pylint: disable=import-outside-toplevel
    answer_thumbnail_fault,
    thumb_fault_keys,
  )

  async def cdn(request):
    state = request.app[state_key]
    uid, kind = request.match_info['uid'], request.match_info['name']
    if kind not in CDN_KINDS:
      raise web.HTTPNotFound()
    state.cdn_fetches[kind] += 1
    cfg = state.config
    if cfg['cdn_latency_ms'] > 0:
      await asyncio.sleep(cfg['cdn_latency_ms'] / 1000.0)
    if kind in ('video.m3u8', 'video.mpd'):
      if cfg['shape'] != 'aug2025' or cfg['manifest_gone']:
        return web.json_response(_GONE, status=410)
      if uid not in state.uids:
        return _not_found()
      return _manifest(uid, kind)
    content_type, factory = _CDN_TYPES[kind]
    if kind.startswith('thumbnail.'):
      missing = thumb_fault_keys(state, uid) & set(cfg['thumb_404_uids'])
      if uid not in state.uids or missing:
        if missing:
          state.faults['thumb_404'] += 1
        return _placeholder()
      if kind == 'thumbnail.jpg':
        broken = await answer_thumbnail_fault(
          state, uid, content_type, lambda: state.cached(kind, uid, factory))
        if broken is not None:
          return broken
      return web.Response(body=state.cached(kind, uid, factory), content_type=content_type)
    if uid not in state.uids:
      return _not_found()
    return _media_response(request, state.cached(kind, uid, factory), content_type)

  async def by_sha256(request):
    state = request.app[state_key]
    record = state.by_sha.get(request.match_info['sha256'])
    state.cdn_fetches['content.mp4' if request.path.endswith('.mp4') else 'blossom'] += 1
    if not record:
      return _not_found()
    return _media_response(request, state.cached('default.mp4', record['uid'], _make_mp4),
                           'video/mp4')

  app.router.add_get(r'/{sha256:[0-9a-f]{64}}', by_sha256)
  app.router.add_get(r'/{sha256:[0-9a-f]{64}}.mp4', by_sha256)
  app.router.add_get(r'/{uid:[0-9a-f]{32}}/{section:thumbnails|downloads|manifest}/{name}', cdn)


def _manifest(uid, kind):
  if kind == 'video.m3u8':
    text = f'#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000000,RESOLUTION=480x480\n/{uid}/manifest/stream.m3u8\n'
    return web.Response(text=text, content_type='application/vnd.apple.mpegurl')
  text = (
    '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
    f'mediaPresentationDuration="PT6S"><!-- {uid} --></MPD>\n')
  return web.Response(text=text, content_type='application/dash+xml')
