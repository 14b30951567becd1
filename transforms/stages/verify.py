"""VerifyUrls: only media URLs that work on the configured CDN reach an event.

Input and main output: WorkItem, between ComputeBlurhash and BuildVideoEvent. For each
media slot an event may carry (HLS, DASH, MP4, thumbnail, animated preview, Blossom
fallback) the candidate URLs are, in order of preference (`candidates`):

* MP4: the content-addressed `<cdn>/<sha256>.mp4` when the hash is known (the API's first
  answer, or the previous version of the event for the same uid), then the previous
  version's MP4, then the API's, then the uid template;
* every other slot: the previous version's URL for the same uid, then the API's.

so a vine keeps the URLs its events already carry as long as they work (stable tags: a
`--force-remigrate` whose API answer names the MP4 differently changes nothing). Only URLs
on the `--cdn-base` host are candidates (the OpenVine source in the imeta fallbacks is
added by the builders, not here). Each slot's candidates are checked in order on the CDN
(`transforms.clients.cdn`): the first that answers 200 with a fitting content type wins;
none leaves the slot empty. A vine with no working video URL (HLS, MP4 or DASH) is not
published: dead letter at `verify`, class transient (Stream may still be processing it;
a replay checks again). With verification off (`--no-verify-urls`) no request is made and
each slot takes its first candidate.

Counters: `urls_checked`, `urls_dead` (accounting), `urls_off_cdn` (here).
"""

import asyncio
import collections
import logging
import re
from typing import Any, Callable, Dict, List, Optional

from apache_beam.pvalue import TaggedOutput

from transforms.clients.cdn import DEFAULT_TIMEOUT, CdnChecker
from transforms.core.ids import HEX64_RE, STREAM_UID_RE
from transforms.core.records import WorkItem
from transforms.nostr.event import first_tag_value
from transforms.nostr.short_video_event import short_video_urls
from transforms.nostr.video_event import existing_urls
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.async_dofn import AsyncDoFn
from transforms.runtime.logs import CappedLog
from transforms.stages.blurhash import allowed_url

_LOG = logging.getLogger(__name__)

URLS_OFF_CDN = "urls_off_cdn"
# Slots in the order they are reported; each is checked as the kind of the same name.
SLOTS = ("hls", "dash", "mp4", "thumbnail", "animated_thumbnail", "blossom")
VIDEO_SLOTS = ("hls", "mp4", "dash")
_HASHED_MP4 = re.compile(r"/([0-9a-f]{64})\.mp4\Z")


def _uid_of(item: WorkItem) -> Optional[str]:
  uid = (item.migration or {}).get("uid")
  return uid if isinstance(uid, str) and STREAM_UID_RE.match(uid) else None


def previous_urls(item: WorkItem, uid: Optional[str]) -> Dict[str, Optional[str]]:
  """URLs the vine's current events carry for this same uid (34236 first, then 32222)."""
  found: Dict[str, Optional[str]] = {}
  if not uid:
    return found
  events = []
  if item.video is not None and item.video.migrated_uid == uid:
    events.append(short_video_urls(item.video.event))
  tags = item.source.event.get("tags") or []
  if item.source.migrated_uid == uid or first_tag_value(tags, "stream_uid") == uid:
    events.append(existing_urls(item.source.event))
  for urls in events:
    for key, value in urls.items():
      found[key] = found.get(key) or value
  return found


def known_sha256(item: WorkItem, previous: Dict[str, Optional[str]]) -> Optional[str]:
  """The video's content hash: the API's answer, else the previous version's `x` or MP4 name."""
  for value in ((item.migration or {}).get("sha256"), previous.get("sha256")):
    if isinstance(value, str) and HEX64_RE.match(value):
      return value
  match = _HASHED_MP4.search(previous.get("mp4") or "")
  return match.group(1) if match else None


def candidates(item: WorkItem, cdn_base: str) -> Dict[str, List[str]]:
  """Each slot's candidate URLs on the CDN, best first, without duplicates.

  URLs off `cdn_base` are dropped here (and counted by the caller via `off_cdn`).
  """
  urls = item.migration or {}
  uid = _uid_of(item)
  previous = previous_urls(item, uid)
  base = cdn_base.rstrip("/")
  sha256 = known_sha256(item, previous)
  wanted = {slot: [previous.get(slot), urls.get(slot)] for slot in SLOTS}
  wanted["mp4"] = [("%s/%s.mp4" % (base, sha256)) if sha256 else None, previous.get("mp4"),
                   urls.get("mp4"), ("%s/%s/downloads/default.mp4" % (base, uid)) if uid else None]
  wanted["blossom"] = [urls.get("blossom"), previous.get("blossom")]
  out: Dict[str, List[str]] = {}
  for slot, values in wanted.items():
    seen: List[str] = []
    for value in values:
      if isinstance(value, str) and value and value not in seen and allowed_url(value, cdn_base):
        seen.append(value)
    out[slot] = seen
  return out


def off_cdn(item: WorkItem, cdn_base: str) -> int:
  """How many of the API's URLs are outside the configured CDN (they are never published)."""
  urls = item.migration or {}
  return sum(1 for slot in SLOTS
             if isinstance(urls.get(slot), str) and not allowed_url(urls[slot], cdn_base))


def verified_migration(item: WorkItem, chosen: Dict[str, Optional[str]]) -> Dict[str, Any]:
  """The item's `migration` with each slot set to its chosen URL (None: nothing works)."""
  migration = dict(item.migration or {})
  migration.update({slot: chosen.get(slot) for slot in SLOTS})
  mp4 = chosen.get("mp4") or ""
  match = _HASHED_MP4.search(mp4)
  previous = previous_urls(item, _uid_of(item))
  migration["sha256"] = match.group(1) if match else known_sha256(item, previous)
  return migration


def has_video(chosen: Dict[str, Optional[str]]) -> bool:
  return any(chosen.get(slot) for slot in VIDEO_SLOTS)


async def choose(options: Dict[str, List[str]],
                 works: Callable[[str, str], "asyncio.Future"]) -> Dict[str, Optional[str]]:
  """Per slot, the first candidate `works(url, slot)` says yes to; slots run concurrently."""
  async def first(slot: str) -> Optional[str]:
    for url in options.get(slot) or ():
      if await works(url, slot):
        return url
    return None
  found = await asyncio.gather(*(first(slot) for slot in SLOTS))
  return dict(zip(SLOTS, found))


class VerifyUrlsFn(AsyncDoFn):
  """WorkItem -> WorkItem whose `migration` holds working CDN URLs only; or a dead letter."""

  OUTPUTS = (dl.DEAD_LETTER,)  # tagged outputs besides "main"

  def __init__(self, cdn_base: str, run_id: str, enabled: bool = True,
               max_in_flight: int = 32, timeout: float = DEFAULT_TIMEOUT,
               checker_factory: Optional[Callable[[], Any]] = None):
    super().__init__(max_in_flight)
    self._cdn_base = cdn_base
    self._run_id = run_id
    self._enabled = enabled
    self._timeout = timeout
    self._checker_factory = checker_factory

  def ready_details(self):
    return {"cdn": self._cdn_base, "enabled": self._enabled, "timeout_s": float(self._timeout)}

  def done_details(self):
    counts = getattr(self, "_counts", {})
    return {k: counts.get(k, 0) for k in ("checked", "dead", "off_cdn", "no_video")}

  async def async_setup(self):
    self._counts = collections.Counter()  # touched on the event loop thread only
    self._dead_log = CappedLog(_LOG, "dead media URLs")
    self._checker = None
    if self._enabled:
      self._checker = (self._checker_factory() if self._checker_factory
                       else CdnChecker(timeout=self._timeout,
                                       max_connections=self._max_in_flight * 2))
      await self._checker.start()

  async def async_teardown(self):
    if self._checker is not None:
      await self._checker.close()

  async def _works(self, url: str, slot: str) -> bool:
    result = await self._checker.check(url, slot)
    accounting.inc(accounting.URLS_CHECKED)
    self._counts["checked"] += 1
    if not result.ok:
      accounting.inc(accounting.URLS_DEAD)
      self._counts["dead"] += 1
      if not (slot in ("hls", "dash") and result.status == 410):  # gone since Oct 2025: expected
        self._dead_log.log("verify: %s %s does not work: %s", slot, url, result.reason)
    return result.ok

  async def _first_candidates(self, url: str, slot: str) -> bool:
    return True

  async def handle(self, item: WorkItem) -> List[Any]:
    refused = off_cdn(item, self._cdn_base)
    if refused:
      accounting.inc(URLS_OFF_CDN, refused)
      self._counts["off_cdn"] += refused
    options = candidates(item, self._cdn_base)
    chosen = await choose(options, self._works if self._enabled else self._first_candidates)
    if not has_video(chosen):
      self._counts["no_video"] += 1
      tried = sum(len(options[slot]) for slot in VIDEO_SLOTS)
      return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_VERIFY, dl.TRANSIENT_EXHAUSTED,
          "no working video URL on the CDN (%d candidates tried); Stream may still be "
          "processing it" % tried, item))]
    return [item.replace(migration=verified_migration(item, chosen))]

  def on_unexpected(self, item: WorkItem, exc: BaseException) -> List[Any]:
    self._dead_log.log("verify %s: unexpected %s", item.vine_id, type(exc).__name__)
    return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
        self._run_id, dl.STAGE_VERIFY, dl.TRANSIENT_EXHAUSTED,
        "unexpected error: %s" % type(exc).__name__, item))]
