"""MigrateVideo: copy each vine's video into Cloudflare Stream through the migration API.

Input and main output: WorkItem. An item whose 32222 or 34236 event says its video is
already on Stream (our migration tags, an earlier tool's bare `stream_uid`, or a video URL
on the CDN: `earlier_migrations.earlier_claim`) is looked up (`GET /v1/lookup?vineId=`)
and, when the service confirms it, reused without a migrate call, unless force_remigrate.
Otherwise one `POST /v1/openvine/migrate` with the seed's retry policy, many in flight
(AsyncDoFn), never two for one vine id at once in a process (the service is not atomic).
Permanent failures and exhausted retries are dead letters; a refused token stops
the run (StopRun). Counters: `migrate_calls` (requests sent, retries included),
`migrations_reused` (no call: the migration was confirmed), `earlier_migrations_reused`
(of those, the ones without our tags), `migration_lookups` (lookups sent).
"""

import logging
from typing import Any, List, Optional, Tuple

from apache_beam.pvalue import TaggedOutput

from transforms.clients import secrets as secret_values
from transforms.clients.migration_api import MigrationApiError, MigrationClient
from transforms.clients.migration_contract import RetryPolicy, error_line, validate_openvine_id
from transforms.core.ids import STREAM_UID_RE
from transforms.core.records import SKIP_NO_OPENVINE_ID, WorkItem
from transforms.nostr.short_video_event import short_video_urls
from transforms.nostr.video_event import existing_urls
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.async_dofn import AsyncDoFn
from transforms.runtime.logs import CappedLog
from transforms.runtime.outcomes import StopRun
from transforms.stages.earlier_migrations import confirmed_urls, earlier_claim, one_call_per_vine

_LOG = logging.getLogger(__name__)

MIGRATE_CALLS = "migrate_calls"
MIGRATE_CONFIG_ERRORS = "migrate_config_errors"  # streaming: once per worker process
CONFIG_LATCH = dl.ConfigLatch("MigrateVideo", "every vine is a migrate dead letter (class config)",
                              MIGRATE_CONFIG_ERRORS)


def _count_lookups(n: int) -> None:
  # Counted once the call's outcome is known: a StopRun must come before any counter.
  if n:
    accounting.inc(accounting.MIGRATION_LOOKUPS, n)


def monitor_migrated(item: WorkItem) -> str:
  """The seed's monitor line MIGRATED,{vine_id},{stream_uid},{hls_url},{mp4_url}."""
  urls = item.migration or {}
  return "MIGRATED,%s,%s,%s,%s" % (item.vine_id, urls.get("uid") or "", urls.get("hls") or "",
                                   urls.get("mp4") or "")


def marked_uid(item: WorkItem) -> Optional[str]:
  """The Stream uid this migration already gave the vine: on its 32222 or its 34236 event."""
  if item.source.migrated_uid:
    return item.source.migrated_uid
  return item.video.migrated_uid if item.video is not None else None


def reuse_migration(item: WorkItem, cdn_base: str) -> WorkItem:
  """URLs for an already-migrated vine: its events' own tags, else the CDN templates."""
  uid = marked_uid(item)
  have = existing_urls(item.source.event) if item.source.migrated_uid == uid else {}
  video = (short_video_urls(item.video.event)
           if item.video is not None and item.video.migrated_uid == uid else {})
  base = cdn_base.rstrip("/")

  def pick(key: str, template: Optional[str]) -> Optional[str]:
    return have.get(key) or video.get(key) or template

  urls = {
      "uid": uid,
      "hls": pick("hls", "%s/%s/manifest/video.m3u8" % (base, uid)),
      "dash": pick("dash", "%s/%s/manifest/video.mpd" % (base, uid)),
      "mp4": pick("mp4", "%s/%s/downloads/default.mp4" % (base, uid)),
      "thumbnail": pick("thumbnail", "%s/%s/thumbnails/thumbnail.jpg" % (base, uid)),
      "animated_thumbnail": pick("animated_thumbnail",
                                 "%s/%s/thumbnails/thumbnail.gif" % (base, uid)),
      "sha256": pick("sha256", None),
      "blossom": pick("blossom", None),
      "api_status": "reused",
  }
  return item.replace(migration=urls, blurhash=item.blurhash or pick("blurhash", None))


class MigrateVideoFn(AsyncDoFn):
  """WorkItem -> WorkItem with `migration` set; tagged dead letters, skips, monitor lines."""

  OUTPUTS = (dl.DEAD_LETTER, dl.SKIPPED, dl.MONITOR)  # tagged outputs besides "main"

  def __init__(self, api_url: str, cdn_base: str, run_id: str, max_in_flight: int,
               policy: RetryPolicy = RetryPolicy(), force_remigrate: bool = False,
               token_env: str = secret_values.TOKEN_ENV_VAR, token_secret: str = "", sleep=None,
               stop_on_config: bool = True):
    super().__init__(max_in_flight)
    # Batch: a configuration error stops the run (StopRun). Streaming: Dataflow would retry
    # that forever, so the error trips CONFIG_LATCH and items become `config` dead letters.
    self._stop_on_config = stop_on_config
    self._api_url = api_url
    self._cdn_base = cdn_base
    self._run_id = run_id
    self._policy = policy
    self._force = force_remigrate
    self._token_env = token_env
    self._token_secret = token_secret  # a Secret Manager name, never the token
    self._sleep = sleep

  async def async_setup(self):
    # The token is read here, on the worker: from Secret Manager when a secret is
    # named (Dataflow), else from the environment. It never passes a constructor.
    self._client = None
    try:
      token = secret_values.resolve_token(self._token_env, self._token_secret or None)
    except secret_values.SecretError as exc:
      if self._stop_on_config:
        raise StopRun("migration API token: %s" % exc) from None
      CONFIG_LATCH.trip("migration API token: %s" % exc)
      return
    kwargs = {"sleep": self._sleep} if self._sleep else {}
    self._client = MigrationClient(self._api_url, token, self._cdn_base, policy=self._policy,
                                   max_connections=self._max_in_flight, **kwargs)
    await self._client.start()

  def ready_details(self):
    return {"api": self._api_url, "force_remigrate": self._force}

  async def async_teardown(self):
    if self._client is not None:
      await self._client.close()

  def _dead(self, item: WorkItem, error_class: str, error: str, **kwargs) -> List[Any]:
    accounting.inc(accounting.FAILED_MIGRATIONS)
    return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
        self._run_id, dl.STAGE_MIGRATE, error_class, error, item, **kwargs))]

  async def handle(self, item: WorkItem) -> List[Any]:
    async with one_call_per_vine(item.vine_id):
      return await self._handle(item)

  async def _confirmed(self, item: WorkItem) -> Tuple[Optional[WorkItem], int]:
    """(the item with its earlier migration when the lookup confirms one, else None; lookups)."""
    claim = earlier_claim(item, self._cdn_base)
    if not claim or self._force:
      return None, 0
    try:
      found = await self._client.lookup(item.vine_id)
    except (MigrationApiError, ValueError) as exc:
      # Unconfirmed: our own tags are still trusted (as before lookups); another tool's
      # claim is not, and the migrate call answers already_migrated if it was right.
      _LOG.debug("lookup of vine %s failed: %s", item.vine_id, error_line(exc))
      found = None if not marked_uid(item) else {}
    if found is None:
      return None, 1
    accounting.inc(accounting.MIGRATION_LOOKUPS)
    accounting.inc(accounting.VIDEOS_ALREADY_MIGRATED)
    accounting.inc(accounting.MIGRATIONS_REUSED)
    if marked_uid(item):
      return reuse_migration(item, self._cdn_base), 1
    accounting.inc(accounting.EARLIER_MIGRATIONS_REUSED)
    return item.replace(migration=confirmed_urls(found)), 1

  async def _handle(self, item: WorkItem) -> List[Any]:
    if CONFIG_LATCH.reason is not None and not self._stop_on_config:
      return self._dead(item, dl.CONFIG, "migration stopped: %s" % CONFIG_LATCH.reason)
    reused, lookups = await self._confirmed(item)
    if reused is not None:
      return [reused]
    if not item.openvine_id:
      _count_lookups(lookups)
      return [TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_MIGRATE, SKIP_NO_OPENVINE_ID,
                                                     item.vine_id, item.event_id))]
    try:
      openvine_id = validate_openvine_id(item.openvine_id, permissive=True)
    except ValueError as exc:
      shown = error_line(repr(item.openvine_id))[:80]
      _count_lookups(lookups)
      return self._dead(item, dl.BAD_INPUT, "openvine id %s refused: %s" % (shown, exc))
    result = await self._client.migrate(item.vine_id, openvine_id)
    if result.kind == "config":
      if self._stop_on_config:  # the run stops: nothing of this item is counted
        raise StopRun("migration API: %s" % result.error)
      return self._dead(item, dl.CONFIG,
                        "migration API: %s" % CONFIG_LATCH.trip("migration API: %s" % result.error))
    accounting.inc(MIGRATE_CALLS, result.attempts)
    _count_lookups(lookups + result.lookups)
    accounting.add_seconds(accounting.THROTTLING_SECONDS, result.throttled_seconds)
    timing = {"attempts": result.attempts, "first_failure": result.first_failure,
              "last_failure": result.last_failure}
    if result.kind == "permanent":
      return self._dead(item, dl.PERMANENT, result.error, **timing)
    if result.kind != "success":
      return self._dead(item, dl.TRANSIENT_EXHAUSTED, result.error, **timing)
    urls = dict(result.urls or {})
    if not STREAM_UID_RE.match(urls.get("uid") or ""):
      return self._dead(item, dl.PERMANENT, "API answered without a valid Stream uid", **timing)
    if result.api_status == "already_migrated" and urls["uid"] == marked_uid(item):
      # --force-remigrate, and the service names the uid our tags carry: the migration
      # stands; its URLs are picked as for a reuse (the API names the MP4 differently in
      # its first and its later answers: taking them as they come would churn the tags).
      accounting.inc(accounting.VIDEOS_ALREADY_MIGRATED)
      migrated = reuse_migration(item, self._cdn_base)
    elif result.api_status == "already_migrated":
      accounting.inc(accounting.VIDEOS_ALREADY_MIGRATED)
      migrated = item.replace(migration=urls)
    else:  # FOUND_AFTER_TIMEOUT (the lookup found it) too: the unanswered call uploaded it.
      accounting.inc(accounting.VIDEOS_MIGRATED)
      migrated = item.replace(migration=urls, newly_migrated=True)
    return [migrated, TaggedOutput(dl.MONITOR, monitor_migrated(migrated))]

  def on_unexpected(self, item: WorkItem, exc: BaseException) -> List[Any]:
    if getattr(self, "_unexpected_log", None) is None:  # made here: a lock does not pickle
      self._unexpected_log = CappedLog(_LOG, "unexpected migrate errors")
    self._unexpected_log.log("migrate %s: unexpected %s", item.vine_id, type(exc).__name__)
    return self._dead(item, dl.TRANSIENT_EXHAUSTED,
                      "unexpected error: %s" % error_line(exc))
