"""The migration emulator's model: its knobs (validated) and its mutable state.

`normalize_config` is the one place knob values are checked, for the command line,
``--config`` files and ``POST /_emulator/config`` alike. `EmulatorState` holds what
the emulated service remembers (migrated videos by vine id, sha256 and source URL),
the counters ``GET /_emulator/stats`` reports, a bounded cache of rendered CDN media,
and the response shapes (Aug 2025 and Oct 2025) built from a migration record.
"""

import collections
import random
import time

RATE_KNOBS = (
  'fault_500', 'fault_502', 'fault_503', 'fault_429', 'fault_429_no_retry_after', 'fault_hang',
  'fault_reset', 'fault_malformed')
SET_KNOBS = (
  'openvine_ids', 'always_fail_vine_ids', 'thumb_404_uids', 'thumb_garbage_uids',
  'thumb_truncated_uids', 'thumb_bomb_uids', 'thumb_hang_uids')
SHAPES = ('oct2025', 'aug2025')
# 'real': what the service's own code does when run (reference, last section): random uids, the
# MP4 named by content hash in the first answer and by uid in later ones, nothing atomic.
# 'documented': the Aug/Oct 2025 documentation: one uid per vine (md5), every answer alike.
API_MODES = ('real', 'documented')
DEFAULTS = {
  'token': '', 'accept_any_openvine_id': False, 'shape': 'oct2025', 'api_mode': 'real',
  'missing_stream_credentials': False, 'cdn_base': '',
  'latency_ms': 0.0, 'latency_jitter_ms': 0.0, 'cdn_latency_ms': 0.0, 'seed': 0,
  'retry_after': 2, 'hang_seconds': 120.0, 'manifest_gone': False, 'fault_keyed': False,
  **{k: 0.0 for k in RATE_KNOBS}, **{k: frozenset() for k in SET_KNOBS}}
CDN_KINDS = ('thumbnail.jpg', 'thumbnail.gif', 'default.mp4', 'video.m3u8', 'video.mpd')
THUMB_CACHE_SIZE = 512


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
    elif key == 'api_mode' and value not in API_MODES:
      raise ValueError(f'api_mode must be one of {API_MODES}')
    elif isinstance(DEFAULTS[key], bool):
      value = bool(value)
    elif isinstance(DEFAULTS[key], (int, float)):
      value = type(DEFAULTS[key])(value)
    config[key] = value
  return config


class EmulatorState:
  """Mutable emulator state: config, migrated videos, counters and media caches.

  One instance per application; aiohttp runs every handler on one event loop
  thread, so the counters need no lock.
  """

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
    self.uploads = collections.Counter()  # per vine id: videos stored (each one a new uid)
    self.vine_in_flight = collections.Counter()
    self.max_in_flight_per_vine = 0
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

  def track_vine(self, vine_id, delta):
    """Calls in flight for one vine id (the service is not atomic: two at once upload twice)."""
    self.vine_in_flight[vine_id] += delta
    self.max_in_flight_per_vine = max(self.max_in_flight_per_vine, self.vine_in_flight[vine_id])
    if self.vine_in_flight[vine_id] <= 0:
      del self.vine_in_flight[vine_id]

  def stats(self):
    self.track(0)
    return {
      'migrate_calls': dict(self.migrate_calls), 'migrate_calls_total': sum(self.migrate_calls.values()),
      'migrations': self.migrations, 'already_migrated': self.already,
      'faults_injected': dict(self.faults), 'responses': dict(self.responses),
      'lookups': self.lookups, 'cdn_fetches': dict(self.cdn_fetches),
      'auth_refused': dict(self.auth_refused),
      'in_flight': self.in_flight, 'max_in_flight': self.max_in_flight,
      'max_in_flight_per_vine': self.max_in_flight_per_vine,
      'uploads': dict(self.uploads), 'uploads_total': sum(self.uploads.values()),
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

  def base(self, request):
    return (self.config['cdn_base'] or f'{request.scheme}://{request.host}').rstrip('/')

  def urls(self, request, uid, sha256):
    base = self.base(request)
    thumb = f'{base}/{uid}/thumbnails/thumbnail.jpg'
    common = {
      'mp4Url': f'{base}/{uid}/downloads/default.mp4', 'thumbnailUrl': thumb,
      'animatedThumbnailUrl': f'{base}/{uid}/thumbnails/thumbnail.gif'}
    if self.config['shape'] == 'aug2025':
      return {
        'hlsUrl': f'{base}/{uid}/manifest/video.m3u8', 'dashUrl': f'{base}/{uid}/manifest/video.mpd',
        **common}
    return {**common, 'posterUrl': thumb, 'blossomUrl': f'{base}/{sha256}'}

  def body(self, request, status, record, asked=None):
    """A migrate answer for ``record``; ``asked`` is the request (real mode: its ids, and how
    the record was found: None for a new upload, 'vine' or 'sha256' for already_migrated)."""
    uid, sha256 = record['uid'], record['sha256']
    if self.config['shape'] == 'aug2025':
      return {'status': status, 'uid': uid, **self.urls(request, uid, sha256), 'downloadStatus': 'inprogress'}
    if self.config['api_mode'] == 'real':
      return self._real_body(request, status, record, asked or {})
    return {
      'status': status, 'uid': uid, 'sha256': sha256, **self.urls(request, uid, sha256),
      'vineId': record['vineId'], 'videoId': record['videoId']}

  def _real_body(self, request, status, record, asked):
    base, uid, sha256 = self.base(request), record['uid'], record['sha256']
    thumb = f'{base}/{uid}/thumbnails/thumbnail.jpg'
    media = {
      'thumbnailUrl': thumb, 'posterUrl': f'{thumb}?time=0s',
      'animatedThumbnailUrl': f'{base}/{uid}/thumbnails/thumbnail.gif'}
    ids = {k: asked[k] for k in ('videoId', 'vineId') if asked.get(k)}
    if status != 'already_migrated':  # The first answer: the MP4 by its content hash.
      return {
        'status': status, 'uid': uid, 'sha256': sha256, **ids, 'sourceUrl': record['sourceUrl'],
        'storageResults': {'stream': True, 'r2': True}, 'mp4Url': f'{base}/{sha256}.mp4', **media,
        'blossomUrl': f'{base}/{sha256}', 'blossomMp4Url': f'{base}/{sha256}.mp4',
        'message': 'Video migrated to hybrid storage'}
    by_sha = asked.get('found_by') == 'sha256'
    return {
      'status': status, 'uid': uid, **({'sha256': sha256} if by_sha else {}), **ids,
      'mp4Url': f'{base}/{uid}/downloads/default.mp4', **media,
      'message': 'Video already migrated' + (' (detected via SHA-256)' if by_sha else '')}

  def lookup_body(self, request, record):
    """A 200 of ``GET /v1/lookup``: real mode has no poster, animated or blossom URLs."""
    uid, sha256 = record['uid'], record['sha256']
    if self.config['api_mode'] != 'real':
      return {'uid': uid, 'vineId': record['vineId'], 'sha256': sha256,
              **self.urls(request, uid, sha256)}
    base = self.base(request)
    return {
      'uid': uid, 'status': 'uploading', 'mp4Url': f'{base}/{uid}/downloads/default.mp4',
      'thumbnailUrl': f'{base}/{uid}/thumbnails/thumbnail.jpg', 'migratedFrom': 'openvine',
      'originalUrl': record['sourceUrl'], 'vineId': record['vineId'], 'sha256': sha256,
      'readyToStream': False}
