"""Fault injection of the migration emulator: latency, failing migrate calls, broken thumbnails.

Migrate calls draw their fault from one seeded generator shared with the latency
jitter (or, with ``fault_keyed``, from a generator per vine id and call number,
see `keyed_fault`); thumbnails are broken per uid or vine id by the ``thumb_*_uids`` knobs.
Each `answer_*` function returns the response the fault calls for, or None when
the request then proceeds normally (a hang, once it has slept).
"""

import asyncio
import random

from aiohttp import web

from devstack.emulator_media import _make_bomb
from devstack.emulator_state import RATE_KNOBS

THUMB_FAULTS = ('404', 'garbage', 'truncated', 'bomb', 'hang')


def json_error(status, **body):
  """A JSON error response, as the migration worker and its CDN send them."""
  return web.json_response(body, status=status)


async def add_latency(state):
  """Sleeps the configured migrate latency, jittered with the shared fault generator."""
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


def draw_fault(state, vine_id):
  """The fault of this migrate call (after its call count was incremented), or None."""
  if state.config['fault_keyed']:
    return keyed_fault(state.config, vine_id, state.migrate_calls[vine_id])
  if vine_id in state.config['always_fail_vine_ids']:
    return 'always_fail'
  return _fault_from(state.config, state.rng.random())


async def answer_fault(state, request, kind):
  """Returns the response of an injected fault, or None when the call proceeds normally."""
  state.faults[kind] += 1
  if kind in ('500', '502', '503', 'always_fail'):
    status = 503 if kind == 'always_fail' else int(kind)
    return json_error(status, error=f'Injected fault {status}')
  if kind == '429':
    return web.json_response(
      {'error': 'Too Many Requests'}, status=429, headers={'Retry-After': str(state.config['retry_after'])})
  if kind == '429_no_retry_after':
    return json_error(429, error='Too Many Requests')
  if kind == 'hang':
    await asyncio.sleep(state.config['hang_seconds'])
    return None
  if kind == 'reset':
    request.transport.write(b'HTTP/1.1 2')
    request.transport.abort()
    raise asyncio.CancelledError()  # Nothing more can be written; let aiohttp drop the request.
  return web.Response(
    status=200, text='{"status":"hybrid_migration_completed","uid":"0f3', content_type='application/json')


def thumb_fault_keys(state, uid):
  """What the thumb_* knobs may name for a video: its uid or its vine id (uids are random in
  the real mode, so tests name the vine)."""
  return {uid, (state.uids.get(uid) or {}).get('vineId')}


async def answer_thumbnail_fault(state, uid, content_type, render):
  """The response of a thumbnail broken by the ``thumb_*_uids`` knobs, or None.

  Args:
    state: The EmulatorState.
    uid: The video whose thumbnail is asked for (the knobs name it or its vine id).
    content_type: The thumbnail's usual content type, kept on the broken answers.
    render: Returns the real thumbnail bytes (the truncated fault sends half of them).
  """
  cfg = state.config
  keys = thumb_fault_keys(state, uid)
  for fault in THUMB_FAULTS:
    if fault == '404':  # answered before this, with the real CDN's placeholder (emulator_media)
      continue
    if keys & cfg[f'thumb_{fault}_uids']:
      state.faults[f'thumb_{fault}'] += 1
      if fault == 'garbage':
        return web.Response(body=b'<html><body>502 Bad Gateway</body></html>', content_type=content_type)
      if fault == 'truncated':
        data = render()
        return web.Response(body=data[:len(data) // 2], content_type=content_type)
      if fault == 'bomb':
        state.bomb = state.bomb or _make_bomb()
        return web.Response(body=state.bomb, content_type=content_type)
      await asyncio.sleep(cfg['hang_seconds'])
      return None
  return None
