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
none leaves the slot empty. The thumbnail ComputeBlurhash has just fetched and decoded
(`WorkItem.thumbnail_seen`) counts as working without a request, and the HLS/DASH
templates are asked for less once the CDN keeps answering 410 Gone for them (`GoneSlots`).
A vine with no working video URL (HLS, MP4 or DASH) is not published: dead letter at
`verify`, class transient (Stream may still be processing it; a replay checks again). With
verification off (`--no-verify-urls`) no request is made and each slot takes its first
candidate.

Counters: `urls_checked`, `urls_dead` (accounting), `urls_off_cdn`, `urls_presumed_gone` (here).
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
URLS_PRESUMED_GONE = "urls_presumed_gone"  # HLS/DASH not checked (GoneSlots)
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


class GoneSlots:
  """HLS and DASH on a CDN that answers 410 Gone for them, as the real one has since Oct 2025.

  The API never returns these URLs: they are template guesses (`migration_contract`).
  After `after` answers of 410 in a row for a slot, with no working one, the slot is
  presumed gone: it is checked for one vine in `every` only (the others get no such URL,
  counted in `urls_presumed_gone`), and one working answer ends the presumption. On the
  real CDN this saves two of the five or six requests a vine needs. Per DoFn instance;
  used on the event-loop thread only.
  """

  SLOTS = ("hls", "dash")

  def __init__(self, after: int = 20, every: int = 100):
    self.after = after
    self.every = every
    self._gone_in_a_row = collections.Counter()
    self._skipped = collections.Counter()

  def skip(self, slot: str) -> bool:
    """Whether this vine's `slot` goes unchecked (called once per vine and slot)."""
    if slot not in self.SLOTS or self._gone_in_a_row[slot] < self.after:
      return False
    self._skipped[slot] += 1
    return self._skipped[slot] % self.every != 0

  def saw(self, slot: str, status: Optional[int], ok: bool) -> Optional[str]:
    """Records an answer; returns "gone" or "back" when the presumption starts or ends."""
    if slot not in self.SLOTS:
      return None
    before = self._gone_in_a_row[slot] >= self.after
    if ok:
      self._gone_in_a_row[slot] = 0
      self._skipped[slot] = 0
      return "back" if before else None
    if status == 410:
      self._gone_in_a_row[slot] += 1
      if not before and self._gone_in_a_row[slot] >= self.after:
        return "gone"
    return None


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
    return {k: counts.get(k, 0)
            for k in ("checked", "dead", "known", "presumed_gone", "off_cdn", "no_video")}

  async def async_setup(self):
    self._counts = collections.Counter()  # touched on the event loop thread only
    self._dead_log = CappedLog(_LOG, "dead media URLs")
    self._gone = GoneSlots()
    self._checker = None
    if self._enabled:
      self._checker = (self._checker_factory() if self._checker_factory
                       else CdnChecker(timeout=self._timeout,
                                       max_connections=self._max_in_flight * 2))
      await self._checker.start()

  async def async_teardown(self):
    if self._checker is not None:
      await self._checker.close()

  async def _first_working(self, slot: str, urls: List[str], known: Optional[str],
                           tally: collections.Counter) -> Optional[str]:
    for url in urls:
      if url == known:  # fetched and decoded as a real image by ComputeBlurhash just now
        tally["known"] += 1
        return url
      result = await self._checker.check(url, slot)
      tally["checked"] += 1
      change = self._gone.saw(slot, result.status, result.ok)
      if change == "gone":
        _LOG.info("verify: the CDN answered 410 Gone for %s %d times in a row: checking it "
                  "for one vine in %d from now on", slot, self._gone.after, self._gone.every)
      elif change == "back":
        _LOG.info("verify: %s works again on the CDN: checking it for every vine", slot)
      if result.ok:
        return url
      tally["dead"] += 1
      if not (slot in GoneSlots.SLOTS and result.status == 410):  # gone since Oct 2025: expected
        self._dead_log.log("verify: %s %s does not work: %s", slot, url, result.reason)
    return None

  async def _choose(self, item: WorkItem, options: Dict[str, List[str]]
                    ) -> Dict[str, Optional[str]]:
    """Per slot, the first candidate that works; slots that need requests run concurrently."""
    tally = collections.Counter()
    chosen: Dict[str, Optional[str]] = dict.fromkeys(SLOTS)
    asked = []
    for slot in SLOTS:
      if not options.get(slot):
        continue
      if self._gone.skip(slot):
        tally["presumed_gone"] += 1
      else:
        asked.append(slot)
    known = {"thumbnail": item.thumbnail_seen}
    if len(asked) == 1:  # no task to spawn
      found = [await self._first_working(asked[0], options[asked[0]], known.get(asked[0]),
                                         tally)]
    else:
      found = await asyncio.gather(*(self._first_working(slot, options[slot], known.get(slot),
                                                         tally) for slot in asked))
    chosen.update(zip(asked, found))
    self._counts.update(tally)
    # One increment per counter and vine (each takes a lock).
    for name, key in ((accounting.URLS_CHECKED, "checked"), (accounting.URLS_DEAD, "dead"),
                      (URLS_PRESUMED_GONE, "presumed_gone")):
      if tally[key]:
        accounting.inc(name, tally[key])
    return chosen

  async def handle(self, item: WorkItem) -> List[Any]:
    refused = off_cdn(item, self._cdn_base)
    if refused:
      accounting.inc(URLS_OFF_CDN, refused)
      self._counts["off_cdn"] += refused
    options = candidates(item, self._cdn_base)
    if self._enabled:
      chosen = await self._choose(item, options)
    else:
      chosen = {slot: (options.get(slot) or [None])[0] for slot in SLOTS}
    if not has_video(chosen):
      self._counts["no_video"] += 1
      tried = sum(len(options[slot]) for slot in VIDEO_SLOTS)
      return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_VERIFY, dl.TRANSIENT_EXHAUSTED,
          "no working video URL on the CDN (%d candidates tried); Stream may still be "
          "processing it" % tried, item))]
    return [item.replace(migration=verified_migration(item, chosen), thumbnail_seen=None)]

  def on_unexpected(self, item: WorkItem, exc: BaseException) -> List[Any]:
    self._dead_log.log("verify %s: unexpected %s", item.vine_id, type(exc).__name__)
    return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
        self._run_id, dl.STAGE_VERIFY, dl.TRANSIENT_EXHAUSTED,
        "unexpected error: %s" % type(exc).__name__, item))]
