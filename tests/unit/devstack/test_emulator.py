"""Tests of devstack.emulator* over real sockets: API, CDN media, faults, stats, control API."""

import io
import json
import re

import pytest
import requests
from PIL import Image

from devstack.emulator_process import EmulatorProcess

TOKEN = 'test-token'
HELD = ['1751085897568-0fd41442', '1751085897569-1a2b3c4d', '1751085897570-deadbeef']
AUTH = {'Authorization': f'Bearer {TOKEN}'}
UID_RE = re.compile(r'^[0-9a-f]{32}$')
OCT_KEYS = {
  'status', 'uid', 'sha256', 'mp4Url', 'thumbnailUrl', 'posterUrl', 'animatedThumbnailUrl', 'blossomUrl',
  'vineId', 'videoId'}
AUG_KEYS = {
  'status', 'uid', 'hlsUrl', 'dashUrl', 'mp4Url', 'thumbnailUrl', 'animatedThumbnailUrl', 'downloadStatus'}


@pytest.fixture(scope='module')
def emu():
  with EmulatorProcess(token=TOKEN, openvine_ids=HELD, seed=7) as process:
    yield process


@pytest.fixture(autouse=True)
def _clean(emu):
  emu.configure(
    fault_429=0.0, fault_malformed=0.0, fault_reset=0.0, fault_503=0.0, always_fail_vine_ids=[],
    latency_ms=0, shape='oct2025')
  emu.reset_stats(forget_migrations=True)


def migrate(emu, body, headers=AUTH):
  data = body if isinstance(body, (str, bytes)) else json.dumps(body)
  return requests.post(
    f'{emu.url}/v1/openvine/migrate', data=data, headers={'Content-Type': 'application/json', **headers},
    timeout=10)


def test_missing_or_non_bearer_auth_is_401(emu):
  for headers in ({}, {'Authorization': f'Basic {TOKEN}'}):
    r = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {'error': 'Missing or invalid Authorization header'}


def test_wrong_token_is_403_even_with_faults(emu):
  emu.configure(fault_503=1.0)
  r = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}, headers={'Authorization': 'Bearer nope'})
  assert r.status_code == 403
  assert r.json() == {'error': 'Invalid migration token'}
  assert emu.stats()['migrate_calls_total'] == 0


def test_body_not_json_is_500(emu):
  r = migrate(emu, 'not json{')
  assert r.status_code == 500
  assert r.json()['error'] == 'Migration failed'
  assert r.json()['message']


def test_missing_video_id_is_400(emu):
  r = migrate(emu, {'vineId': 'b9KOOWX7HUx'})
  assert r.status_code == 400
  assert r.json() == {'error': 'Missing videoId or sourceUrl'}


def test_source_missing_is_500_with_video_url(emu):
  r = migrate(emu, {'videoId': '1751085897999-00000000', 'vineId': 'MYxVapFvz2z'})
  assert r.status_code == 500
  assert r.json() == {
    'error': 'OpenVine migration failed', 'message': 'Failed to fetch video: 404 Not Found',
    'videoUrl': 'https://api.openvine.co/media/1751085897999-00000000'}


def test_success_oct2025_shape_and_already_migrated(emu):
  first = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})
  assert first.status_code == 200
  body = first.json()
  assert set(body) == OCT_KEYS
  assert body['status'] == 'hybrid_migration_completed'
  assert UID_RE.match(body['uid'])
  assert body['mp4Url'] == f'{emu.url}/{body["uid"]}/downloads/default.mp4'
  assert body['thumbnailUrl'] == f'{emu.url}/{body["uid"]}/thumbnails/thumbnail.jpg'
  again = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).json()
  assert again == {**body, 'status': 'already_migrated'}
  stats = emu.stats()
  assert (stats['migrations'], stats['already_migrated']) == (1, 1)


def test_success_aug2025_shape_and_deterministic_uid(emu):
  oct_uid = migrate(emu, {'videoId': HELD[1], 'vineId': 'e192BnZnZ9V'}).json()['uid']
  emu.reset_stats(forget_migrations=True)
  emu.configure(shape='aug2025')
  body = migrate(emu, {'videoId': HELD[1], 'vineId': 'e192BnZnZ9V'}).json()
  assert set(body) == AUG_KEYS
  assert body['status'] == 'migrated'
  assert body['downloadStatus'] == 'inprogress'
  assert body['uid'] == oct_uid
  assert body['hlsUrl'] == f'{emu.url}/{body["uid"]}/manifest/video.m3u8'
  assert body['dashUrl'] == f'{emu.url}/{body["uid"]}/manifest/video.mpd'


def test_lookup(emu):
  uid = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).json()['uid']
  found = requests.get(f'{emu.url}/v1/lookup', params={'vineId': 'b9KOOWX7HUx'}, timeout=10)
  assert found.status_code == 200
  assert found.json()['uid'] == uid
  assert found.json()['thumbnailUrl'].endswith(f'/{uid}/thumbnails/thumbnail.jpg')
  missing = requests.get(f'{emu.url}/v1/lookup', params={'vineId': '5002wXwQOKX'}, timeout=10)
  assert (missing.status_code, missing.json()) == (404, {'error': 'not_found'})
  bad = requests.get(f'{emu.url}/v1/lookup', timeout=10)
  assert (bad.status_code, bad.json()) == (400, {'error': 'bad_request', 'reason': 'missing_query'})
  assert emu.stats()['lookups'] == 2


def test_thumbnails_are_distinct_480_jpegs(emu):
  urls = [
    migrate(emu, {'videoId': video_id, 'vineId': vine_id}).json()['thumbnailUrl']
    for video_id, vine_id in ((HELD[0], 'b9KOOWX7HUx'), (HELD[1], 'MYxVapFvz2z'))]
  images = []
  for url in urls:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers['Content-Type'] == 'image/jpeg'
    image = Image.open(io.BytesIO(r.content))
    image.load()
    assert (image.format, image.size) == ('JPEG', (480, 480))
    images.append(r.content)
  assert images[0] != images[1]
  gif = requests.get(urls[0].replace('.jpg', '.gif'), timeout=10)
  assert gif.headers['Content-Type'] == 'image/gif'
  assert Image.open(io.BytesIO(gif.content)).format == 'GIF'
  mp4 = requests.get(urls[0].replace('thumbnails/thumbnail.jpg', 'downloads/default.mp4'), timeout=10)
  assert mp4.headers['Content-Type'] == 'video/mp4'
  assert emu.stats()['cdn_fetches']['thumbnail.jpg'] == 2


def test_unknown_uid_mp4_is_404(emu):
  # Its thumbnail is the CDN's SVG placeholder (test_emulator_media.py).
  r = requests.get(f'{emu.url}/{"0" * 32}/downloads/default.mp4', timeout=10)
  assert r.status_code == 404


def test_thumbnail_faults(emu):
  uid = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).json()['uid']
  url = f'{emu.url}/{uid}/thumbnails/thumbnail.jpg'
  emu.configure(thumb_garbage_uids=[uid])
  with pytest.raises(OSError):
    Image.open(io.BytesIO(requests.get(url, timeout=10).content))
  emu.configure(thumb_garbage_uids=[], thumb_bomb_uids=[uid])
  with pytest.raises(Image.DecompressionBombError):
    Image.open(io.BytesIO(requests.get(url, timeout=10).content))
  emu.configure(thumb_bomb_uids=[])
  assert requests.get(url, timeout=10).status_code == 200


def test_429_carries_retry_after(emu):
  emu.configure(fault_429=1.0, retry_after=3)
  r = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})
  assert r.status_code == 429
  assert r.headers['Retry-After'] == '3'
  assert emu.stats()['faults_injected'] == {'429': 1}


def test_malformed_is_200_with_invalid_json(emu):
  emu.configure(fault_malformed=1.0)
  r = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})
  assert r.status_code == 200
  with pytest.raises(ValueError):
    json.loads(r.text)


def test_reset_closes_connection(emu):
  emu.configure(fault_reset=1.0)
  with pytest.raises(requests.ConnectionError):
    migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})


def test_always_fail_and_counts_per_vine_id(emu):
  emu.configure(always_fail_vine_ids=['MYxVapFvz2z'])
  for _ in range(3):
    assert migrate(emu, {'videoId': HELD[1], 'vineId': 'MYxVapFvz2z'}).status_code == 503
  assert migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).status_code == 200
  stats = emu.stats()
  assert stats['migrate_calls'] == {'MYxVapFvz2z': 3, 'b9KOOWX7HUx': 1}
  assert stats['migrate_calls_total'] == 4
  assert stats['faults_injected'] == {'always_fail': 3}
  assert stats['max_in_flight'] >= 1
  assert stats['busy_seconds'] > 0


def test_config_changes_at_runtime(emu):
  emu.configure(fault_503=1.0)
  assert migrate(emu, {'videoId': HELD[2], 'vineId': '5002wXwQOKX'}).status_code == 503
  emu.configure(fault_503=0.0)
  assert migrate(emu, {'videoId': HELD[2], 'vineId': '5002wXwQOKX'}).status_code == 200
  bad = requests.post(f'{emu.url}/_emulator/config', json={'fault_9000': 1}, timeout=10)
  assert bad.status_code == 400
  bad = requests.post(f'{emu.url}/_emulator/config', json={'fault_503': 2}, timeout=10)
  assert bad.status_code == 400
