"""Tests of the emulator's CDN routes (devstack.emulator_media) against the real CDN's behaviour.

What the real CDN does (../shared/reference/migration-api.md, last section): 410 for HLS and
DASH manifests, a 200 SVG placeholder for a missing thumbnail, MP4s by uid and by content
hash, byte ranges; HEAD answers like GET (the worker dispatches on the path alone).
"""

import json

import pytest
import requests

from devstack.emulator_process import EmulatorProcess

TOKEN = 'cdn-test-token'
HELD = ['1751085897568-0fd41442']
AUTH = {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/json'}


@pytest.fixture(scope='module')
def emu():
  with EmulatorProcess(token=TOKEN, openvine_ids=HELD, seed=3) as process:
    yield process


@pytest.fixture(scope='module')
def video(emu):
  body = requests.post(f'{emu.url}/v1/openvine/migrate', headers=AUTH, timeout=10,
                       data=json.dumps({'videoId': HELD[0], 'vineId': 'b9KOOWX7HUx'})).json()
  return body['uid'], body['sha256']


@pytest.fixture(autouse=True)
def _clean(emu):
  emu.configure(shape='oct2025', manifest_gone=False, thumb_404_uids=[])


@pytest.mark.parametrize('name', ['video.m3u8', 'video.mpd'])
def test_manifests_are_gone(emu, video, name):
  r = requests.get(f'{emu.url}/{video[0]}/manifest/{name}', timeout=10)
  assert r.status_code == 410
  assert r.json()['reason'] == 'stream_removed'
  emu.configure(shape='aug2025')  # the Aug 2025 CDN still served them
  assert requests.get(f'{emu.url}/{video[0]}/manifest/{name}', timeout=10).status_code == 200
  emu.configure(manifest_gone=True)
  assert requests.get(f'{emu.url}/{video[0]}/manifest/{name}', timeout=10).status_code == 410


def test_missing_thumbnail_is_an_svg_placeholder(emu, video):
  for uid in ('0' * 32, video[0]):
    emu.configure(thumb_404_uids=[video[0]])
    for name in ('thumbnail.jpg', 'thumbnail.gif'):
      r = requests.get(f'{emu.url}/{uid}/thumbnails/{name}', timeout=10)
      assert r.status_code == 200
      assert r.headers['Content-Type'] == 'image/svg+xml'
      assert r.content.startswith(b'<svg')
  emu.configure(thumb_404_uids=[])
  r = requests.get(f'{emu.url}/{video[0]}/thumbnails/thumbnail.jpg', timeout=10)
  assert r.headers['Content-Type'] == 'image/jpeg'


def test_mp4_by_uid_and_by_content_hash(emu, video):
  uid, sha256 = video
  by_uid = requests.get(f'{emu.url}/{uid}/downloads/default.mp4', timeout=10)
  by_hash = requests.get(f'{emu.url}/{sha256}.mp4', timeout=10)
  for r in (by_uid, by_hash):
    assert (r.status_code, r.headers['Content-Type']) == (200, 'video/mp4')
  assert by_uid.content == by_hash.content
  assert requests.get(f'{emu.url}/{"ab" * 32}.mp4', timeout=10).status_code == 404


def test_head_answers_like_get_without_a_body(emu, video):
  uid, sha256 = video
  for url, status, kind in ((f'{emu.url}/{uid}/downloads/default.mp4', 200, 'video/mp4'),
                            (f'{emu.url}/{sha256}.mp4', 200, 'video/mp4'),
                            (f'{emu.url}/{uid}/thumbnails/thumbnail.jpg', 200, 'image/jpeg'),
                            (f'{emu.url}/{uid}/manifest/video.m3u8', 410, 'application/json')):
    r = requests.head(url, timeout=10)
    assert (r.status_code, r.headers['Content-Type'].split(';')[0]) == (status, kind)
    assert r.content == b''


def test_byte_range_is_206(emu, video):
  url = f'{emu.url}/{video[1]}.mp4'
  whole = requests.get(url, timeout=10).content
  r = requests.get(url, headers={'Range': 'bytes=0-0'}, timeout=10)
  assert r.status_code == 206
  assert r.content == whole[:1]
  assert r.headers['Content-Range'] == f'bytes 0-0/{len(whole)}'
  far = requests.get(url, headers={'Range': f'bytes={len(whole)}-'}, timeout=10)
  assert far.status_code == 416
