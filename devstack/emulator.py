"""Local HTTP emulator of the Cloudflare Stream migration service and its CDN.

Behaves like the migration worker described in ``shared/reference/migration-api.md`` (both the Aug 2025 and
the Oct 2025 response shapes), serves the CDN paths its URLs point at, and adds latency, fault injection,
per-call counters and a control API so that tests and benchmarks can drive the pipeline against it.

Start it standalone (prints one line ``READY http://127.0.0.1:<port>`` once listening)::

  EMULATOR_TOKEN=secret python -m devstack.emulator --port 0 --openvine-ids ids.txt

Flags (``--help`` lists them too):

  --port N                      TCP port on 127.0.0.1; 0 picks a free one (default 0).
  --token TOKEN                 Bearer token; the EMULATOR_TOKEN environment variable wins when set.
  --openvine-ids FILE           One OpenVine id per line: the videos the emulated OpenVine source holds.
  --accept-any-openvine-id      Hold every OpenVine id (benchmarks).
  --shape {oct2025,aug2025}     Success response shape (default oct2025).
  --cdn-base URL                Host used in returned URLs (default: the emulator's own base URL).
  --latency-ms MEAN             Mean added latency of migrate calls (default 0).
  --latency-jitter-ms J         Uniform jitter: each delay is MEAN + U(-J, +J), floored at 0 (default 0).
  --cdn-latency-ms MS           Fixed added latency of CDN fetches (default 0).
  --seed N                      Seed of the fault and jitter RNG (default 0).
  --fault-500/-502/-503 RATE    Rate in [0, 1] of migrate calls answered with that status.
  --fault-429 RATE              Rate of 429 answers carrying ``Retry-After: <--retry-after>``.
  --fault-429-no-retry-after R  Rate of 429 answers without Retry-After.
  --fault-hang RATE             Rate of calls that sleep --hang-seconds, then answer normally.
  --fault-reset RATE            Rate of calls whose connection is aborted mid-response.
  --fault-malformed RATE        Rate of 200 answers with a truncated JSON body.
  --retry-after S               Retry-After seconds of --fault-429 (default 2).
  --hang-seconds S              Sleep of --fault-hang and thumb_hang_uids (default 120).
  --always-fail-vine-ids FILE   Vine ids (one a line) whose migrate calls always get 503.
  --config FILE                 JSON object of knobs applied at startup (same keys as the control API).

Random faults are drawn once per migrate call in the order listed above (500, 502, 503, 429,
429_no_retry_after, hang, reset, malformed); the rates should add up to at most 1. Faults apply after
the auth checks (a wrong token still gets 403) and before the body is validated.

Runtime-only knobs (``--config`` or ``POST /_emulator/config``): ``thumb_404_uids``, ``thumb_garbage_uids``
(200 with HTML bytes), ``thumb_truncated_uids`` (first half of the JPEG), ``thumb_bomb_uids`` (a 50 KB PNG
declaring 20000x20000 pixels, served as image/jpeg), ``thumb_hang_uids`` (sleep --hang-seconds first),
``manifest_gone`` (410 for HLS/DASH manifests, as the CDN does since Oct 2025), ``fault_keyed`` (draw each
call's fault from its own generator seeded with ``(seed, vineId, call number)`` instead of one shared stream, so
that which calls fail does not depend on the order concurrent calls arrive in; ``keyed_fault`` computes it).

Control API (no auth): ``GET /_emulator/stats``, ``POST /_emulator/config`` (JSON object of knobs),
``POST /_emulator/reset_stats`` (body ``{"forget_migrations": true}`` also forgets migrated videos).
"""

import argparse
import asyncio
import collections
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np
import requests
from aiohttp import web
from PIL import Image

from devstack.processes import terminate

RATE_KNOBS = (
  'fault_500', 'fault_502', 'fault_503', 'fault_429', 'fault_429_no_retry_after', 'fault_hang',
  'fault_reset', 'fault_malformed')
SET_KNOBS = (
  'openvine_ids', 'always_fail_vine_ids', 'thumb_404_uids', 'thumb_garbage_uids',
  'thumb_truncated_uids', 'thumb_bomb_uids', 'thumb_hang_uids')
SHAPES = ('oct2025', 'aug2025')
DEFAULTS = {
  'token': '', 'accept_any_openvine_id': False, 'shape': 'oct2025', 'cdn_base': '',
  'latency_ms': 0.0, 'latency_jitter_ms': 0.0, 'cdn_latency_ms': 0.0, 'seed': 0,
  'retry_after': 2, 'hang_seconds': 120.0, 'manifest_gone': False, 'fault_keyed': False,
  **{k: 0.0 for k in RATE_KNOBS}, **{k: frozenset() for k in SET_KNOBS}}
CDN_KINDS = ('thumbnail.jpg', 'thumbnail.gif', 'default.mp4', 'video.m3u8', 'video.mpd')
THUMB_SIZE = 480
THUMB_CACHE_SIZE = 512
OPENVINE_MEDIA = 'https://api.openvine.co/media/'
_MEDIA_ID_RE = re.compile(r'/media/([^/?#]+)')
_STATE = web.AppKey('state', object)


def _error(status, **body):
  return web.json_response(body, status=status)


def normalize_config(updates, base=None):
  """Validates knob updates and merges them into a config.

  Args:
    updates: Mapping of knob name to new value (JSON types; lists for the set knobs).
    base: Config to update; the defaults when None.

  Returns:
    A new config dict.

  Raises:
    ValueError: On an unknown knob, a rate outside [0, 1] or an unknown shape.
  """
  config = dict(DEFAULTS if base is None else base)
  for key, value in updates.items():
    if key not in DEFAULTS:
      raise ValueError(f'unknown knob {key!r}')
    if key in SET_KNOBS:
      value = frozenset(str(v) for v in (value or ()))
    elif key in RATE_KNOBS:
      value = float(value)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'{key} must be in [0, 1]')
    elif key == 'shape' and value not in SHAPES:
      raise ValueError(f'shape must be one of {SHAPES}')
    elif isinstance(DEFAULTS[key], bool):
      value = bool(value)
    elif isinstance(DEFAULTS[key], (int, float)):
      value = type(DEFAULTS[key])(value)
    config[key] = value
  return config


def _uid_for(key):
  return hashlib.md5(key.encode()).hexdigest()


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


class _State:
  """Mutable emulator state: config, migrated videos, counters and media caches."""

  def __init__(self, config):
    self.config = config
    self.rng = random.Random(config['seed'])
    self.by_vine, self.by_sha, self.by_url, self.uids = {}, {}, {}, {}
    self.media = collections.OrderedDict()
    self.bomb = None
    self.reset_stats()

  def reset_stats(self):
    self.migrate_calls = collections.Counter()
    self.faults = collections.Counter()
    self.responses = collections.Counter()
    self.cdn_fetches = collections.Counter({k: 0 for k in CDN_KINDS})
    self.migrations = self.already = self.lookups = 0
    self.auth_refused = collections.Counter()
    self.in_flight = getattr(self, 'in_flight', 0)
    self.max_in_flight = self.in_flight
    self.busy = 0.0
    self.busy_mark = time.monotonic()

  def track(self, delta):
    now = time.monotonic()
    self.busy += self.in_flight * (now - self.busy_mark)
    self.busy_mark = now
    self.in_flight += delta
    self.max_in_flight = max(self.max_in_flight, self.in_flight)

  def stats(self):
    self.track(0)
    return {
      'migrate_calls': dict(self.migrate_calls), 'migrate_calls_total': sum(self.migrate_calls.values()),
      'migrations': self.migrations, 'already_migrated': self.already,
      'faults_injected': dict(self.faults), 'responses': dict(self.responses),
      'lookups': self.lookups, 'cdn_fetches': dict(self.cdn_fetches),
      'auth_refused': dict(self.auth_refused),
      'in_flight': self.in_flight, 'max_in_flight': self.max_in_flight,
      'busy_seconds': round(self.busy, 6), 'migrated_videos': len(self.uids)}

  def cached(self, kind, uid, factory):
    key = (kind, uid)
    if key in self.media:
      self.media.move_to_end(key)
    else:
      self.media[key] = factory(uid)
      if len(self.media) > THUMB_CACHE_SIZE:
        self.media.popitem(last=False)
    return self.media[key]

  def urls(self, request, uid, sha256):
    base = (self.config['cdn_base'] or f'{request.scheme}://{request.host}').rstrip('/')
    thumb = f'{base}/{uid}/thumbnails/thumbnail.jpg'
    common = {
      'mp4Url': f'{base}/{uid}/downloads/default.mp4', 'thumbnailUrl': thumb,
      'animatedThumbnailUrl': f'{base}/{uid}/thumbnails/thumbnail.gif'}
    if self.config['shape'] == 'aug2025':
      return {
        'hlsUrl': f'{base}/{uid}/manifest/video.m3u8', 'dashUrl': f'{base}/{uid}/manifest/video.mpd',
        **common}
    return {**common, 'posterUrl': thumb, 'blossomUrl': f'{base}/{sha256}'}

  def body(self, request, status, record):
    uid, sha256 = record['uid'], record['sha256']
    if self.config['shape'] == 'aug2025':
      return {'status': status, 'uid': uid, **self.urls(request, uid, sha256), 'downloadStatus': 'inprogress'}
    return {
      'status': status, 'uid': uid, 'sha256': sha256, **self.urls(request, uid, sha256),
      'vineId': record['vineId'], 'videoId': record['videoId']}


async def _delay(state):
  cfg = state.config
  delay = cfg['latency_ms'] + state.rng.uniform(-1, 1) * cfg['latency_jitter_ms']
  if delay > 0:
    await asyncio.sleep(delay / 1000.0)


def _fault_from(config, r):
  acc = 0.0
  for knob in RATE_KNOBS:
    acc += config[knob]
    if r < acc:
      return knob[len('fault_'):]
  return None


def keyed_fault(config, vine_id, call_number):
  """The fault of call number ``call_number`` (1-based) for ``vine_id`` under ``fault_keyed``.

  Args:
    config: A normalised config (rates and seed).
    vine_id: The ``vineId`` of the call.
    call_number: How many calls for that vine id the emulator has seen, this one included.

  Returns:
    The fault name (``'500'``, ``'429_no_retry_after'``, ``'hang'``, ...) or None.
  """
  if vine_id in config['always_fail_vine_ids']:
    return 'always_fail'
  rng = random.Random(f"{config['seed']}:{vine_id}:{call_number}")
  return _fault_from(config, rng.random())


def _draw_fault(state, vine_id):
  if state.config['fault_keyed']:
    return keyed_fault(state.config, vine_id, state.migrate_calls[vine_id])
  if vine_id in state.config['always_fail_vine_ids']:
    return 'always_fail'
  return _fault_from(state.config, state.rng.random())


async def _answer_fault(state, request, kind):
  """Returns the response of an injected fault, or None when the call proceeds normally."""
  state.faults[kind] += 1
  if kind in ('500', '502', '503', 'always_fail'):
    status = 503 if kind == 'always_fail' else int(kind)
    return _error(status, error=f'Injected fault {status}')
  if kind == '429':
    return web.json_response(
      {'error': 'Too Many Requests'}, status=429, headers={'Retry-After': str(state.config['retry_after'])})
  if kind == '429_no_retry_after':
    return _error(429, error='Too Many Requests')
  if kind == 'hang':
    await asyncio.sleep(state.config['hang_seconds'])
    return None
  if kind == 'reset':
    request.transport.write(b'HTTP/1.1 2')
    request.transport.abort()
    raise asyncio.CancelledError()  # Nothing more can be written; let aiohttp drop the request.
  return web.Response(
    status=200, text='{"status":"hybrid_migration_completed","uid":"0f3', content_type='application/json')


def _source_id(video_id, source_url):
  if video_id:
    return str(video_id), OPENVINE_MEDIA + str(video_id)
  match = _MEDIA_ID_RE.search(str(source_url))
  return (match.group(1) if match else str(source_url)), str(source_url)


async def _migrate(request):
  state = request.app[_STATE]
  auth = request.headers.get('Authorization', '')
  if not auth.startswith('Bearer '):
    state.auth_refused['401'] += 1
    return _error(401, error='Missing or invalid Authorization header')
  if auth[len('Bearer '):] != state.config['token']:
    state.auth_refused['403'] += 1
    return _error(403, error='Invalid migration token')
  state.track(1)
  try:
    response = await _migrate_authorized(state, request)
    state.responses[str(response.status)] += 1
    return response
  finally:
    state.track(-1)


async def _migrate_authorized(state, request):
  raw = await request.read()
  try:
    body, parse_error = json.loads(raw), None
  except ValueError as e:
    body, parse_error = {}, str(e)
  body = body if isinstance(body, dict) else {}  # Like JS: [].videoId is undefined, hence a 400.
  vine_id = str(body.get('vineId') or '')
  state.migrate_calls[vine_id] += 1
  await _delay(state)
  fault = _draw_fault(state, vine_id)
  if fault:
    response = await _answer_fault(state, request, fault)
    if response is not None:
      return response
  if parse_error:
    return _error(500, error='Migration failed', message=parse_error)
  video_id, source_url = body.get('videoId'), body.get('sourceUrl')
  if not video_id and not source_url:
    return _error(400, error='Missing videoId or sourceUrl')
  media_id, url = _source_id(video_id, source_url)
  sha256 = hashlib.sha256(url.encode()).hexdigest()
  record = state.by_vine.get(vine_id) if vine_id else None
  record = record or state.by_sha.get(sha256)
  if record:
    if vine_id:
      state.by_vine.setdefault(vine_id, record)
    state.already += 1
    return web.json_response(state.body(request, 'already_migrated', record))
  if not (state.config['accept_any_openvine_id'] or media_id in state.config['openvine_ids']):
    return _error(
      500, error='OpenVine migration failed', message='Failed to fetch video: 404 Not Found', videoUrl=url)
  uid = _uid_for(vine_id or url)
  record = {'uid': uid, 'sha256': sha256, 'vineId': vine_id or None, 'videoId': media_id}
  if vine_id:
    state.by_vine[vine_id] = record
  state.by_sha[sha256] = state.by_url[url] = state.uids[uid] = record
  state.migrations += 1
  status = 'migrated' if state.config['shape'] == 'aug2025' else 'hybrid_migration_completed'
  return web.json_response(state.body(request, status, record))


async def _lookup(request):
  state = request.app[_STATE]
  query = request.query
  if not any(query.get(k) for k in ('vineId', 'sha256', 'url')):
    return _error(400, error='bad_request', reason='missing_query')
  state.lookups += 1
  record = (
    state.by_vine.get(query.get('vineId', '')) or state.by_sha.get(query.get('sha256', ''))
    or state.by_url.get(query.get('url', '')))
  if not record:
    return _error(404, error='not_found')
  return web.json_response(
    {'uid': record['uid'], 'vineId': record['vineId'], 'sha256': record['sha256'],
     **state.urls(request, record['uid'], record['sha256'])})


_CDN_TYPES = {
  'thumbnail.jpg': ('image/jpeg', _make_thumbnail), 'thumbnail.gif': ('image/gif', _make_gif),
  'default.mp4': ('video/mp4', _make_mp4)}


async def _cdn(request):
  state = request.app[_STATE]
  uid, kind = request.match_info['uid'], request.match_info['name']
  if kind not in CDN_KINDS:
    raise web.HTTPNotFound()
  state.cdn_fetches[kind] += 1
  cfg = state.config
  if cfg['cdn_latency_ms'] > 0:
    await asyncio.sleep(cfg['cdn_latency_ms'] / 1000.0)
  if uid not in state.uids:
    return _error(404, error='not_found')
  if kind in ('video.m3u8', 'video.mpd'):
    if cfg['manifest_gone']:
      return _error(410, error='gone')
    if kind == 'video.m3u8':
      text = f'#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000000,RESOLUTION=480x480\n/{uid}/manifest/stream.m3u8\n'
      return web.Response(text=text, content_type='application/vnd.apple.mpegurl')
    text = (
      '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
      f'mediaPresentationDuration="PT6S"><!-- {uid} --></MPD>\n')
    return web.Response(text=text, content_type='application/dash+xml')
  content_type, factory = _CDN_TYPES[kind]
  if kind == 'thumbnail.jpg':
    for fault in ('404', 'garbage', 'truncated', 'bomb', 'hang'):
      if uid in cfg[f'thumb_{fault}_uids']:
        state.faults[f'thumb_{fault}'] += 1
        if fault == '404':
          return _error(404, error='not_found')
        if fault == 'garbage':
          return web.Response(body=b'<html><body>502 Bad Gateway</body></html>', content_type=content_type)
        if fault == 'truncated':
          data = state.cached(kind, uid, factory)
          return web.Response(body=data[:len(data) // 2], content_type=content_type)
        if fault == 'bomb':
          state.bomb = state.bomb or _make_bomb()
          return web.Response(body=state.bomb, content_type=content_type)
        await asyncio.sleep(cfg['hang_seconds'])
        break
  return web.Response(body=state.cached(kind, uid, factory), content_type=content_type)


async def _blossom(request):
  record = request.app[_STATE].by_sha.get(request.match_info['sha256'])
  if not record:
    return _error(404, error='not_found')
  return web.Response(body=_make_mp4(record['uid']), content_type='video/mp4')


async def _stats(request):
  return web.json_response(request.app[_STATE].stats())


async def _configure(request):
  state = request.app[_STATE]
  try:
    updates = await request.json()
    if not isinstance(updates, dict):
      raise ValueError('body must be a JSON object')
    state.config = normalize_config(updates, state.config)
  except ValueError as e:
    return _error(400, error='bad_config', reason=str(e))
  if 'seed' in updates:
    state.rng.seed(state.config['seed'])
  return web.json_response({'ok': True, 'updated': sorted(updates)})


async def _reset_stats(request):
  state = request.app[_STATE]
  try:
    body = await request.json() if request.can_read_body else {}
  except ValueError:
    body = {}
  state.reset_stats()
  if isinstance(body, dict) and body.get('forget_migrations'):
    state.by_vine, state.by_sha, state.by_url, state.uids = {}, {}, {}, {}
  return web.json_response({'ok': True})


def make_app(config):
  """Builds the emulator application.

  Args:
    config: Knobs (see ``DEFAULTS``); missing ones take their defaults.

  Returns:
    An ``aiohttp.web.Application`` serving the API, the CDN paths and the control API.
  """
  app = web.Application()
  app[_STATE] = _State(normalize_config(config))
  app.router.add_post('/v1/openvine/migrate', _migrate)
  app.router.add_get('/v1/lookup', _lookup)
  app.router.add_get('/_emulator/stats', _stats)
  app.router.add_post('/_emulator/config', _configure)
  app.router.add_post('/_emulator/reset_stats', _reset_stats)
  app.router.add_get(r'/{sha256:[0-9a-f]{64}}', _blossom)
  app.router.add_get(r'/{uid:[0-9a-f]{32}}/{section:thumbnails|downloads|manifest}/{name}', _cdn)
  return app


def _read_ids(path):
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def parse_args(argv=None):
  """Parses the command line into ``(port, config)``."""
  p = argparse.ArgumentParser(
    prog='python -m devstack.emulator', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--port', type=int, default=0)
  p.add_argument('--token', default='', help='Bearer token (EMULATOR_TOKEN env wins).')
  p.add_argument('--openvine-ids', metavar='FILE', help='File of held OpenVine ids, one a line.')
  p.add_argument('--accept-any-openvine-id', action='store_true')
  p.add_argument('--shape', choices=SHAPES, default='oct2025')
  p.add_argument('--cdn-base', default='')
  p.add_argument('--latency-ms', type=float, default=0.0)
  p.add_argument('--latency-jitter-ms', type=float, default=0.0, help='Uniform +-J around the mean.')
  p.add_argument('--cdn-latency-ms', type=float, default=0.0)
  p.add_argument('--seed', type=int, default=0)
  for knob in RATE_KNOBS:
    p.add_argument('--' + knob.replace('_', '-'), type=float, default=0.0, metavar='RATE')
  p.add_argument('--retry-after', type=int, default=2)
  p.add_argument('--hang-seconds', type=float, default=120.0)
  p.add_argument('--always-fail-vine-ids', metavar='FILE')
  p.add_argument('--config', metavar='FILE', help='JSON object of knobs applied last.')
  args = p.parse_args(argv)
  config = {k: v for k, v in vars(args).items() if k not in ('port', 'config') and v is not None}
  config['token'] = os.environ.get('EMULATOR_TOKEN') or args.token
  if not config['token']:
    p.error('a token is required: set EMULATOR_TOKEN or pass --token')
  for key in ('openvine_ids', 'always_fail_vine_ids'):
    if key in config:
      config[key] = _read_ids(config[key])
  if args.config:
    with open(args.config, encoding='utf-8') as f:
      config.update(json.load(f))
  try:
    return args.port, normalize_config(config)
  except ValueError as e:
    p.error(str(e))


async def _serve(port, config):
  runner = web.AppRunner(make_app(config), access_log=None, shutdown_timeout=1.0)
  await runner.setup()
  site = web.TCPSite(runner, '127.0.0.1', port)
  await site.start()
  bound = runner.addresses[0][1]
  print(f'READY http://127.0.0.1:{bound}', flush=True)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
  await stop.wait()
  await runner.cleanup()


def main(argv=None):
  """Runs the emulator until SIGTERM or SIGINT."""
  port, config = parse_args(argv)
  asyncio.run(_serve(port, config))


class EmulatorProcess:
  """Runs the emulator as a subprocess; a context manager for tests and scripts.

  Example::

    with EmulatorProcess(token='t', openvine_ids=['1751085897568-0fd41442'], shape='aug2025') as emu:
      requests.post(emu.url + '/v1/openvine/migrate', ...)
      assert emu.stats()['migrations'] == 1
  """

  def __init__(self, token='test-token', openvine_ids=(), startup_timeout=20.0, **knobs):
    """Stores the settings; ``start()`` (or ``with``) launches the process.

    Args:
      token: Bearer token, passed through the EMULATOR_TOKEN environment variable.
      openvine_ids: OpenVine ids the emulator holds (written to a file for --openvine-ids).
      startup_timeout: Seconds to wait for the READY line.
      **knobs: Any config knob; those with a command-line flag are passed as flags, the rest in a
        --config file.
    """
    self.token, self.openvine_ids, self.startup_timeout, self.knobs = (
      token, list(openvine_ids), startup_timeout, knobs)
    self.url, self._proc, self._tmp, self._stderr, self._stderr_tail = None, None, None, None, ''

  def _argv(self):
    argv = ['--port', '0', '--openvine-ids', self._write('openvine_ids.txt', self.openvine_ids)]
    rest = {}
    for key, value in self.knobs.items():
      if key == 'always_fail_vine_ids':
        argv += ['--always-fail-vine-ids', self._write('always_fail.txt', value)]
      elif key in _CLI_KNOBS and isinstance(value, bool):
        argv += ['--' + key.replace('_', '-')] if value else []
      elif key in _CLI_KNOBS:
        argv += ['--' + key.replace('_', '-'), str(value)]
      else:
        rest[key] = sorted(value) if isinstance(value, (set, frozenset, tuple, list)) else value
    if rest:
      argv += ['--config', self._write('config.json', None, json.dumps(rest))]
    return argv

  def _write(self, name, lines, text=None):
    path = os.path.join(self._tmp.name, name)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text if text is not None else ''.join(f'{x}\n' for x in lines))
    return path

  def start(self):
    """Starts the process and waits for READY; returns self."""
    self._tmp = tempfile.TemporaryDirectory(prefix='emulator-')
    cmd = [sys.executable, '-m', 'devstack.emulator', *self._argv()]
    env = {**os.environ, 'EMULATOR_TOKEN': self.token}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
    self._stderr = open(os.path.join(self._tmp.name, 'stderr.log'), 'w+', encoding='utf-8')
    self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
    line = _read_line(self._proc.stdout, self.startup_timeout)
    if not line.startswith('READY '):
      self.stop()
      raise RuntimeError(f'emulator did not start (got {line!r}); stderr tail:\n{self._stderr_tail}')
    self.url = line.split()[1]
    return self

  def stats(self):
    """Returns the ``/_emulator/stats`` JSON."""
    return self._control('get', 'stats')

  def configure(self, **knobs):
    """Updates knobs at runtime (sets given as lists, sets or tuples)."""
    body = {k: sorted(v) if isinstance(v, (set, frozenset, tuple)) else v for k, v in knobs.items()}
    return self._control('post', 'config', json=body)

  def reset_stats(self, forget_migrations=False):
    """Zeroes the counters; optionally forgets migrated videos too."""
    return self._control('post', 'reset_stats', json={'forget_migrations': forget_migrations})

  def _control(self, method, name, **kwargs):
    response = requests.request(method, f'{self.url}/_emulator/{name}', timeout=10, **kwargs)
    response.raise_for_status()
    return response.json()

  def stop(self):
    """Stops the process (SIGTERM, then SIGKILL after 5 s) and removes its temporary files."""
    if self._proc is not None:
      terminate(self._proc)
      self._proc.stdout.close()
      self._stderr_tail = self._read_stderr_tail()
      self._proc = None
    if self._tmp is not None:
      self._tmp.cleanup()
      self._tmp = None

  def _read_stderr_tail(self):
    self._stderr.seek(0)
    tail = self._stderr.read()[-2000:]
    self._stderr.close()
    return tail

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


_CLI_KNOBS = set(DEFAULTS) - set(SET_KNOBS) - {'token', 'manifest_gone', 'fault_keyed'}


def _read_line(stream, timeout):
  """Reads one line from a pipe, giving up after ``timeout`` seconds."""
  result = []
  reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
  reader.start()
  reader.join(timeout)
  return result[0].strip() if result else ''


if __name__ == '__main__':
  main()
