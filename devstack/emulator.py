"""Local HTTP emulator of the Cloudflare Stream migration service and its CDN.

By default behaves like the service's own code when run (``shared/reference/migration-api.md``, last
section): uids are random; the first success names the MP4 by content hash (``/{sha256}.mp4``) and every
later answer by uid (``/{uid}/downloads/default.mp4``, without ``sha256`` or ``blossomUrl``); nothing is
atomic (calls for one new vine that overlap each upload and each get their own uid, the last write is
what a lookup finds); answers carry no HLS or DASH URL; the lookup answers
``{uid, status: "uploading", mp4Url, thumbnailUrl, migratedFrom, originalUrl, vineId, sha256,
readyToStream}``. ``--api-mode documented`` keeps the documented contract instead (one md5 uid per vine,
every answer alike, with ``--shape aug2025`` the Aug 2025 shape with HLS/DASH URLs). The emulator serves
the CDN paths its URLs point at, and adds latency, fault injection, per-call counters and a control API
so that tests and benchmarks can drive the pipeline against it.

Start it standalone (prints one line ``READY http://127.0.0.1:<port>`` once listening)::

  EMULATOR_TOKEN=secret python -m devstack.emulator --port 0 --openvine-ids ids.txt

Flags (``--help`` lists them too):

  --port N                      TCP port on 127.0.0.1; 0 picks a free one (default 0).
  --token TOKEN                 Bearer token; the EMULATOR_TOKEN environment variable wins when set.
  --openvine-ids FILE           One OpenVine id per line: the videos the emulated OpenVine source holds.
  --accept-any-openvine-id      Hold every OpenVine id (benchmarks).
  --shape {oct2025,aug2025}     Success response shape (default oct2025).
  --api-mode {real,documented}  The service's real behaviour (default) or its documented contract.
  --missing-stream-credentials  Every new migration answers the service's 500 "Missing Stream
                                credentials" (also EMULATOR_MISSING_STREAM_CREDENTIALS=1).
  --cdn-base URL                Host used in returned URLs (default: the emulator's own base URL).
  --latency-ms MEAN             Mean added latency of migrate calls (default 0); in the real mode it is
                                spent uploading, between the index checks and the index writes.
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

Runtime-only knobs (``--config`` or ``POST /_emulator/config``), the ``thumb_*`` ones naming uids or
vine ids (uids are random in the real mode): ``thumb_404_uids`` (no thumbnail: the 200 SVG placeholder
the real CDN sends), ``thumb_garbage_uids``
(200 with HTML bytes), ``thumb_truncated_uids`` (first half of the JPEG), ``thumb_bomb_uids`` (a 50 KB PNG
declaring 20000x20000 pixels, served as image/jpeg), ``thumb_hang_uids`` (sleep --hang-seconds first),
``manifest_gone`` (410 for HLS/DASH manifests with the Aug 2025 shape too; with Oct 2025 they are always
410, as on the real CDN), ``fault_keyed`` (draw each
call's fault from its own generator seeded with ``(seed, vineId, call number)`` instead of one shared stream, so
that which calls fail does not depend on the order concurrent calls arrive in; ``keyed_fault`` computes it).

Control API (no auth): ``GET /_emulator/stats`` (with ``uploads`` per vine id, ``max_in_flight`` and
``max_in_flight_per_vine``, the high-water marks of calls in flight at once), ``POST /_emulator/config`` (JSON object of knobs),
``POST /_emulator/reset_stats`` (body ``{"forget_migrations": true}`` also forgets migrated videos).
"""
# The docstring above is also the --help text. This module is the HTTP layer (API, CDN and
# control routes) and the command line; knobs and state are in emulator_state, fault injection
# in emulator_faults, synthetic media in emulator_media, the subprocess wrapper in
# emulator_process.

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import uuid

from aiohttp import web

from devstack.emulator_faults import (
  add_latency,
  answer_fault,
  draw_fault,
  json_error,
)
from devstack.emulator_media import add_cdn_routes
from devstack.emulator_state import (
  API_MODES,
  RATE_KNOBS,
  SHAPES,
  EmulatorState,
  normalize_config,
)

OPENVINE_MEDIA = 'https://api.openvine.co/media/'
_MEDIA_ID_RE = re.compile(r'/media/([^/?#]+)')
_STATE = web.AppKey('state', object)


def _uid_for(key):
  return hashlib.md5(key.encode()).hexdigest()


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
    return json_error(401, error='Missing or invalid Authorization header')
  if auth[len('Bearer '):] != state.config['token']:
    state.auth_refused['403'] += 1
    return json_error(403, error='Invalid migration token')
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
  state.track_vine(vine_id, 1)
  try:
    return await _migrate_call(state, request, body, vine_id, parse_error)
  finally:
    state.track_vine(vine_id, -1)


async def _migrate_call(state, request, body, vine_id, parse_error):
  real = state.config['api_mode'] == 'real'
  if not real:
    await add_latency(state)
  fault = draw_fault(state, vine_id)
  if fault:
    response = await answer_fault(state, request, fault)
    if response is not None:
      return response
  if parse_error:
    return json_error(500, error='Migration failed', message=parse_error)
  video_id, source_url = body.get('videoId'), body.get('sourceUrl')
  if not video_id and not source_url:
    return json_error(400, error='Missing videoId or sourceUrl')
  media_id, url = _source_id(video_id, source_url)
  sha256 = hashlib.sha256(url.encode()).hexdigest()
  asked = {'videoId': video_id, 'vineId': vine_id}
  record = state.by_vine.get(vine_id) if vine_id else None
  found_by = 'vine' if record else 'sha256'
  record = record or state.by_sha.get(sha256)
  if record:
    if vine_id:
      state.by_vine.setdefault(vine_id, record)
    state.already += 1
    return web.json_response(
      state.body(request, 'already_migrated', record, {**asked, 'found_by': found_by}))
  if not (state.config['accept_any_openvine_id'] or media_id in state.config['openvine_ids']):
    return json_error(
      500, error='OpenVine migration failed', message='Failed to fetch video: 404 Not Found', videoUrl=url)
  if state.config['missing_stream_credentials']:
    return json_error(
      500, error='Failed to store OpenVine video in hybrid storage',
      errors={'stream': 'Missing Stream credentials'}, videoUrl=url)
  if real:
    # The upload: the service checked its indexes above and writes them only below, so
    # calls for one vine that overlap here each upload and each get their own uid.
    await add_latency(state)
  uid = uuid.uuid4().hex if real else _uid_for(vine_id or url)
  record = {'uid': uid, 'sha256': sha256, 'vineId': vine_id or None, 'videoId': media_id,
            'sourceUrl': url}
  if vine_id:
    state.by_vine[vine_id] = record  # Last write wins, as in the service's KV.
  state.by_sha[sha256] = state.by_url[url] = state.uids[uid] = record
  state.migrations += 1
  state.uploads[vine_id] += 1
  status = 'migrated' if state.config['shape'] == 'aug2025' else 'hybrid_migration_completed'
  return web.json_response(state.body(request, status, record, asked))


async def _lookup(request):
  state = request.app[_STATE]
  query = request.query
  if not any(query.get(k) for k in ('vineId', 'sha256', 'url')):
    return json_error(400, error='bad_request', reason='missing_query')
  state.lookups += 1
  record = (
    state.by_vine.get(query.get('vineId', '')) or state.by_sha.get(query.get('sha256', ''))
    or state.by_url.get(query.get('url', '')))
  if not record:
    return json_error(404, error='not_found')
  return web.json_response(state.lookup_body(request, record))


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
    return json_error(400, error='bad_config', reason=str(e))
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
    config: Knobs (see ``emulator_state.DEFAULTS``); missing ones take their defaults.

  Returns:
    An ``aiohttp.web.Application`` serving the API, the CDN paths and the control API.
  """
  app = web.Application()
  app[_STATE] = EmulatorState(normalize_config(config))
  app.router.add_post('/v1/openvine/migrate', _migrate)
  app.router.add_get('/v1/lookup', _lookup)
  app.router.add_get('/_emulator/stats', _stats)
  app.router.add_post('/_emulator/config', _configure)
  app.router.add_post('/_emulator/reset_stats', _reset_stats)
  add_cdn_routes(app, _STATE)
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
  p.add_argument('--api-mode', choices=API_MODES, default='real')
  p.add_argument('--missing-stream-credentials', action='store_true')
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
  if os.environ.get('EMULATOR_MISSING_STREAM_CREDENTIALS', '') not in ('', '0'):
    config['missing_stream_credentials'] = True
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


if __name__ == '__main__':
  main()
