"""MigrateVideoFn: its errors never carry the token, it reads the token in setup, and the
migration of a vine is reused from our own kind 34236 event."""

import json
import logging

from apache_beam.internal import pickler

from tests.support.runs import TOKEN_ENV
from tests.support.secret_scan import unwrap
from tests.support.security import (
  CDN,
  SECRET_NAME,
  TOKEN,
  FakeSecretManager,
  needs_patch,
  work_item,
)
from tests.support.short_video import SHA, SIGNER, UID, short_video_item
from transforms.clients import secrets as sv
from transforms.core import records
from transforms.nostr import short_video_event as nip71_event
from transforms.runtime import outcomes as dl
from transforms.stages.migrate import MigrateVideoFn, reuse_migration


def test_migrate_stage_dead_letters_unexpected_errors_without_the_token(caplog):
  sv.register(TOKEN)
  caplog.set_level(logging.DEBUG)
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=1)
  (out,) = fn.on_unexpected(work_item(None), RuntimeError(
      "boom Authorization: Bearer %s and again %s" % (TOKEN, TOKEN)))
  assert out.tag == dl.DEAD_LETTER
  assert TOKEN not in json.dumps(out.value) and TOKEN not in caplog.text


@needs_patch
def test_migrate_stage_reads_the_token_from_secret_manager_in_setup(monkeypatch):
  from google.cloud import secretmanager  # pylint: disable=import-outside-toplevel

  fake = FakeSecretManager(data=TOKEN.encode())
  monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", lambda: fake)
  monkeypatch.delenv(TOKEN_ENV, raising=False)
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=1,
                      token_secret="gcp-secret:" + SECRET_NAME)
  assert TOKEN.encode() not in unwrap(pickler.dumps(fn)) and fake.names == []  # not read yet
  fn.setup()
  try:
    assert fake.names == [SECRET_NAME]
    assert fn._client._token == TOKEN  # pylint: disable=protected-access
  finally:
    fn.teardown()


def test_reuse_takes_urls_from_our_34236_event_when_the_32222_is_unmigrated():
  item = short_video_item()
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  bare = item.replace(migration=None, blurhash=None, video=records.to_source_event(video))
  reused = reuse_migration(bare, "https://cdn.example")
  urls = reused.migration
  assert urls["uid"] == UID and urls["sha256"] == SHA
  assert urls["mp4"] == item.migration["mp4"] and urls["blossom"] == item.migration["blossom"]
  assert reused.blurhash == item.blurhash
  # Rebuilt from the reused URLs, the 34236 event is unchanged: a re-run publishes nothing.
  rebuilt = nip71_event.build_short_video_event(reused, now=2200000000)
  assert rebuilt["tags"] == video["tags"] and rebuilt["content"] == video["content"]
