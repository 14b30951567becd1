"""MigrateVideoFn: its errors never carry the token, it reads the token in setup, the
migration of a vine is reused from our own kind 34236 event, earlier migrations (a bare
stream_uid, a CDN video URL) are confirmed by a lookup and reused without a call, and two
items of one vine never have calls in flight at once."""

import asyncio
import json
import logging

import pytest
from apache_beam.internal import pickler

from tests.support.runs import TOKEN_ENV
from tests.support.secret_scan import unwrap
from tests.support.security import (
  CDN,
  SECRET_NAME,
  TOKEN,
  VINE_ID,
  FakeSecretManager,
  needs_patch,
  work_item,
)
from tests.support.short_video import SHA, SIGNER, UID, short_video_item
from transforms.clients import migration_api as api
from transforms.clients import secrets as sv
from transforms.clients.migration_contract import MigrationResult
from transforms.core import records
from transforms.nostr import short_video_event as nip71_event
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.stages import earlier_migrations
from transforms.stages import migrate as migrate_stage
from transforms.stages.earlier_migrations import earlier_claim
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


# ---------------------------------------------------------------------------
# Earlier migrations: confirmed with a lookup and reused without a migrate call.

LEGACY_UID = "0123456789abcdef0123456789abcdef"
OPENVINE = "1751085897568-0fd41442"


class FakeClient:
  """The client's two calls, scripted: `lookups` answers in turn; migrate succeeds."""

  def __init__(self, *lookups, migrate_delay=0.0, answer=("migrated", "f" * 32)):
    self.lookups, self.asked, self.migrated = list(lookups), [], []
    self.answer = answer
    self.migrate_delay, self.in_flight, self.max_in_flight = migrate_delay, 0, 0

  async def lookup(self, vine_id):
    self.asked.append(vine_id)
    answer = self.lookups.pop(0)
    if isinstance(answer, Exception):
      raise answer
    return answer

  async def migrate(self, vine_id, openvine_id):
    self.in_flight += 1
    self.max_in_flight = max(self.max_in_flight, self.in_flight)
    await asyncio.sleep(self.migrate_delay)
    self.in_flight -= 1
    self.migrated.append(vine_id)
    status, uid = self.answer
    return MigrationResult(vine_id, openvine_id, "success", attempts=1, api_status=status,
                           urls={"uid": uid, "mp4": CDN + "/x.mp4"})


def _legacy_item(tags, openvine_id=OPENVINE):
  event = {"id": "e" * 64, "pubkey": "p" * 64, "created_at": 1, "kind": 32222,
           "tags": [["d", VINE_ID]] + tags, "content": "", "sig": "s" * 128}
  return records.WorkItem(vine_id=VINE_ID, source=records.to_source_event(event),
                          openvine_id=openvine_id)


def _run(fn, client, *items):
  fn._client = client  # pylint: disable=protected-access

  async def all_of():
    return await asyncio.gather(*(fn.handle(item) for item in items))
  return asyncio.run(all_of())


FOUND = {"uid": LEGACY_UID, "mp4": "%s/%s/downloads/default.mp4" % (CDN, LEGACY_UID),
         "thumbnail": "%s/%s/thumbnails/thumbnail.jpg" % (CDN, LEGACY_UID),
         "api_status": "uploading"}


@pytest.mark.parametrize("tags", [
    [["stream_uid", LEGACY_UID]],  # an earlier tool: no migration tag
    [["url", "%s/%s/downloads/default.mp4" % (CDN, LEGACY_UID)]],  # a CDN video URL only
    [["imeta", "url %s/%s.mp4" % (CDN, "ab" * 32)]],  # the content-addressed MP4
])
def test_an_earlier_migration_confirmed_by_lookup_is_reused_without_a_call(tags, clean_tally):
  client = FakeClient(FOUND)
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4)
  ((out,),) = _run(fn, client, _legacy_item(tags, openvine_id=None))  # source gone: no id
  assert client.asked == [VINE_ID] and client.migrated == []
  assert out.migration["uid"] == LEGACY_UID and out.migration["api_status"] == "reused"
  assert not out.newly_migrated
  live = accounting.live_counts()
  assert live[accounting.MIGRATION_LOOKUPS] == 1
  assert live[accounting.EARLIER_MIGRATIONS_REUSED] == live[accounting.MIGRATIONS_REUSED] == 1


def test_a_claim_the_lookup_does_not_confirm_is_migrated(clean_tally):
  client = FakeClient(None)
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4)
  ((out, _monitor),) = _run(fn, client, _legacy_item([["stream_uid", LEGACY_UID]]))
  assert client.migrated == [VINE_ID] and out.migration["uid"] == "f" * 32
  live = accounting.live_counts()
  assert live.get(accounting.EARLIER_MIGRATIONS_REUSED, 0) == 0
  assert live[accounting.MIGRATION_LOOKUPS] == 1 and live["migrate_calls"] == 1


def test_urls_on_another_host_or_a_failed_lookup_are_no_confirmation(clean_tally):
  foreign = _legacy_item([["url", "https://elsewhere.example/%s/downloads/default.mp4" % LEGACY_UID]])
  assert earlier_claim(foreign, CDN) is None
  other_port = _legacy_item([["url", "http://127.0.0.1:9/%s/downloads/default.mp4" % LEGACY_UID]])
  assert earlier_claim(other_port, "http://127.0.0.1:8080") is None
  assert earlier_claim(other_port, "http://127.0.0.1:9/") == LEGACY_UID
  client = FakeClient(api.MigrationApiError("lookup failed (HTTP 500)", 500))
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4)
  _run(fn, client, foreign, _legacy_item([["stream_uid", LEGACY_UID]]))
  assert client.asked == [VINE_ID] and client.migrated == [VINE_ID, VINE_ID]


def test_our_own_tags_are_confirmed_too_and_force_remigrate_skips_the_lookup(clean_tally):
  item = short_video_item()
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  bare = item.replace(migration=None, blurhash=None, video=records.to_source_event(video))
  client = FakeClient({"uid": UID, "mp4": CDN + "/other.mp4"})
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4)
  ((out,),) = _run(fn, client, bare)
  assert client.asked == [bare.vine_id] and out.migration == reuse_migration(bare, CDN).migration
  assert accounting.live_counts().get(accounting.EARLIER_MIGRATIONS_REUSED, 0) == 0
  forced = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4, force_remigrate=True)
  other = FakeClient(answer=("already_migrated", UID))
  ((again, _monitor),) = _run(forced, other, bare)
  assert other.asked == [] and other.migrated == [bare.vine_id]
  # The service names the uid our tags carry: the URLs stay those of a reuse (no churn).
  assert again.migration == out.migration and not again.newly_migrated


def test_two_items_of_one_vine_never_have_calls_in_flight_at_once():
  client = FakeClient(migrate_delay=0.05)
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=4)
  items = [_legacy_item([]), _legacy_item([])]
  _run(fn, client, *items)
  assert client.migrated == [VINE_ID, VINE_ID] and client.max_in_flight == 1
  assert earlier_migrations._VINE_LOCKS == {}  # pylint: disable=protected-access


class _RefusingClient(FakeClient):
  """The API answers every migration with a configuration error (a revoked token)."""

  async def migrate(self, vine_id, openvine_id):
    self.migrated.append(vine_id)
    return MigrationResult(vine_id, openvine_id, "config", attempts=1,
                           error="migration API refused the token (HTTP 403)")


@pytest.mark.usefixtures("clean_tally")
def test_streaming_config_error_is_reported_once_and_stops_the_calls(caplog, monkeypatch):
  """Streaming: no StopRun (Dataflow would retry it forever); one ERROR line and one counter
  per process, no call after the first, and every vine a `config` dead letter."""
  monkeypatch.setattr(migrate_stage, "CONFIG_LATCH", dl.ConfigLatch(
      "MigrateVideo", "every vine is a migrate dead letter", migrate_stage.MIGRATE_CONFIG_ERRORS))
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=1, stop_on_config=False)
  client = _RefusingClient()
  items = [_legacy_item([]).replace(vine_id="MYxVapFvz%02d" % n) for n in range(3)]
  with caplog.at_level(logging.ERROR):
    outs = [_run(fn, client, item)[0] for item in items]  # one after another
  assert client.migrated == [items[0].vine_id]
  letters = [out.value for (out,) in outs]
  assert [(d["stage"], d["error_class"]) for d in letters] == [("migrate", dl.CONFIG)] * 3
  assert "refused the token" in letters[2]["error"]
  assert sum("configuration error" in r.getMessage() for r in caplog.records) == 1
  assert accounting.live_counts()[migrate_stage.MIGRATE_CONFIG_ERRORS] == 1


def test_batch_config_error_stops_the_run():
  fn = MigrateVideoFn("http://127.0.0.1:1", CDN, "run", max_in_flight=1)
  with pytest.raises(dl.StopRun):
    _run(fn, _RefusingClient(), _legacy_item([]))
