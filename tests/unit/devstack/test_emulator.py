"""Tests of devstack.emulator* over real sockets: API, CDN media, faults, stats, control API."""

import concurrent.futures
import hashlib
import io
import json
import re

import pytest
import requests
from PIL import Image

from devstack.emulator import parse_args
from devstack.emulator_process import EmulatorProcess

TOKEN = 'test-token'
HELD = ['1751085897568-0fd41442', '1751085897569-1a2b3c4d', '1751085897570-deadbeef']
AUTH = {'Authorization': f'Bearer {TOKEN}'}
UID_RE = re.compile(r'^[0-9a-f]{32}$')
OCT_KEYS = {
  'status', 'uid', 'sha256', 'mp4Url', 'thumbnailUrl', 'posterUrl', 'animatedThumbnailUrl', 'blossomUrl',
  'vineId', 'videoId'}
REAL_FIRST_KEYS = {
  'status', 'uid', 'sha256', 'videoId', 'vineId', 'sourceUrl', 'storageResults', 'mp4Url', 'thumbnailUrl',
  'posterUrl', 'animatedThumbnailUrl', 'blossomUrl', 'blossomMp4Url', 'message'}
REAL_LATER_KEYS = {
  'status', 'uid', 'videoId', 'vineId', 'mp4Url', 'thumbnailUrl', 'posterUrl', 'animatedThumbnailUrl',
  'message'}
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
    latency_ms=0, shape='oct2025', api_mode='real', missing_stream_credentials=False)
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


def test_real_mode_first_answer_names_the_mp4_by_hash_later_ones_by_uid(emu):
  ask = {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}
  first = migrate(emu, ask)
  assert first.status_code == 200
  body = first.json()
  assert set(body) == REAL_FIRST_KEYS
  assert body['status'] == 'hybrid_migration_completed'
  uid, sha256 = body['uid'], body['sha256']
  assert UID_RE.match(uid) and uid != hashlib.md5(b'b9KOOWX7HUx').hexdigest()
  assert body['mp4Url'] == f'{emu.url}/{sha256}.mp4'
  assert body['thumbnailUrl'] == f'{emu.url}/{uid}/thumbnails/thumbnail.jpg'
  assert not any('manifest' in str(v) for v in body.values())
  again = migrate(emu, ask).json()
  assert set(again) == REAL_LATER_KEYS  # no sha256, no blossomUrl
  assert (again['status'], again['uid'], again['videoId']) == ('already_migrated', uid, HELD[0])
  assert again['mp4Url'] == f'{emu.url}/{uid}/downloads/default.mp4'
  by_bytes = migrate(emu, {'videoId': HELD[0], 'vineId': 'MYxVapFvz2z'}).json()
  assert (by_bytes['uid'], by_bytes['sha256']) == (uid, sha256)
  assert 'SHA-256' in by_bytes['message']
  for url in (body['mp4Url'], again['mp4Url']):
    assert requests.get(url, timeout=10).status_code == 200
  stats = emu.stats()
  assert (stats['migrations'], stats['already_migrated']) == (1, 2)
  assert stats['uploads'] == {'b9KOOWX7HUx': 1}


def test_real_mode_uids_are_random_across_emulator_restarts(emu):
  ask = {'videoId': HELD[1], 'vineId': 'e192BnZnZ9V'}
  first = migrate(emu, ask).json()['uid']
  emu.reset_stats(forget_migrations=True)
  assert migrate(emu, ask).json()['uid'] != first


def test_real_mode_overlapping_calls_for_one_vine_each_upload(emu):
  emu.configure(latency_ms=400)
  ask = {'videoId': HELD[2], 'vineId': 'e192BnZnZ9V'}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    bodies = [r.json() for r in pool.map(lambda _: migrate(emu, ask), range(2))]
  assert [b['status'] for b in bodies] == ['hybrid_migration_completed'] * 2
  assert bodies[0]['uid'] != bodies[1]['uid']
  stats = emu.stats()
  assert stats['uploads'] == {'e192BnZnZ9V': 2} and stats['uploads_total'] == 2
  assert stats['max_in_flight'] == stats['max_in_flight_per_vine'] == 2
  found = requests.get(f'{emu.url}/v1/lookup', params={'vineId': 'e192BnZnZ9V'}, timeout=10).json()
  assert found['uid'] in {b['uid'] for b in bodies}  # whichever was written last


def test_missing_stream_credentials_fails_every_new_migration(emu):
  emu.configure(missing_stream_credentials=True)
  for video_id, vine_id in ((HELD[0], 'b9KOOWX7HUx'), (HELD[1], 'MYxVapFvz2z')):
    r = migrate(emu, {'videoId': video_id, 'vineId': vine_id})
    assert r.status_code == 500
    assert r.json() == {
      'error': 'Failed to store OpenVine video in hybrid storage',
      'errors': {'stream': 'Missing Stream credentials'},
      'videoUrl': f'https://api.openvine.co/media/{video_id}'}
  assert emu.stats()['migrations'] == 0


def test_documented_oct2025_shape_repeats_its_first_body(emu):
  emu.configure(api_mode='documented')
  first = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})
  body = first.json()
  assert set(body) == OCT_KEYS
  assert body['uid'] == hashlib.md5(b'b9KOOWX7HUx').hexdigest()
  assert body['mp4Url'] == f'{emu.url}/{body["uid"]}/downloads/default.mp4'
  again = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).json()
  assert again == {**body, 'status': 'already_migrated'}


def test_documented_aug2025_shape_and_deterministic_uid(emu):
  emu.configure(api_mode='documented')
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
  first = migrate(emu, {'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'}).json()
  uid = first['uid']
  found = requests.get(f'{emu.url}/v1/lookup', params={'vineId': 'b9KOOWX7HUx'}, timeout=10)
  assert found.status_code == 200
  assert found.json() == {
    'uid': uid, 'status': 'uploading', 'mp4Url': f'{emu.url}/{uid}/downloads/default.mp4',
    'thumbnailUrl': f'{emu.url}/{uid}/thumbnails/thumbnail.jpg', 'migratedFrom': 'openvine',
    'originalUrl': first['sourceUrl'], 'vineId': 'b9KOOWX7HUx', 'sha256': first['sha256'],
    'readyToStream': False}
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
  emu.configure(thumb_garbage_uids=[], thumb_bomb_uids=['b9KOOWX7HUx'])  # by vine id
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


def test_command_line_switches_of_the_real_service(monkeypatch):
  monkeypatch.delenv('EMULATOR_MISSING_STREAM_CREDENTIALS', raising=False)
  _, config = parse_args(['--token', 't'])
  assert (config['api_mode'], config['missing_stream_credentials']) == ('real', False)
  _, config = parse_args(['--token', 't', '--api-mode', 'documented', '--missing-stream-credentials'])
  assert (config['api_mode'], config['missing_stream_credentials']) == ('documented', True)
  monkeypatch.setenv('EMULATOR_MISSING_STREAM_CREDENTIALS', '1')
  assert parse_args(['--token', 't'])[1]['missing_stream_credentials'] is True
  with pytest.raises(SystemExit):
    parse_args(['--token', 't', '--api-mode', 'kind'])
