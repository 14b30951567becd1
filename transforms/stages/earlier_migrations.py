"""Earlier migrations: events whose video is already on Stream, and one call per vine at a time.

Earlier tools wrote a `stream_uid` tag without this pipeline's `migration` tag, or only
a video URL on the CDN; this pipeline writes both tags. Any of these is a claim that the
vine is migrated: `earlier_claim` finds it, and the migrate stage confirms it with
`GET /v1/lookup?vineId=` before it reuses the migration without a migrate call (the
seed's update script did the same for "videos with Stream UIDs but missing timestamps").
A claim the lookup does not confirm is not trusted: the vine is migrated as usual.

`one_call_per_vine` keeps two calls for one vine id from being in flight at once in this
process (two authors claiming one vine): the service is not atomic, and overlapping
calls for one new vine each upload the video and each get their own uid.
"""

import asyncio
import contextlib
import re
import urllib.parse
from typing import Any, AsyncIterator, Dict, List, Optional

from transforms.core.ids import HEX64_RE, STREAM_UID_RE
from transforms.core.records import WorkItem
from transforms.nostr.event import first_tag_value

# Tags whose value is a video URL (the first value), and the imeta entry that is one.
_URL_TAGS = ("url", "r", "streaming")
_UID_PATH = re.compile(r"^/([0-9a-f]{32})/(downloads|manifest)/")
_CONTENT_PATH = re.compile(r"^/([0-9a-f]{64})\.mp4$")


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _host(url: str) -> str:
  """`host:port` of a URL (the scheme's default port when none is given), "" if unusable."""
  try:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
  except ValueError:
    return ""
  return "%s:%s" % (parts.hostname.lower(), port) if parts.hostname and port else ""


def _video_urls(tags: List[List[Any]]) -> List[str]:
  urls = [tag[1] for tag in tags
          if len(tag) >= 2 and tag[0] in _URL_TAGS and isinstance(tag[1], str)]
  for tag in tags:
    if tag and tag[0] == "imeta":
      urls += [entry[len("url "):] for entry in tag[1:]
               if isinstance(entry, str) and entry.startswith("url ")]
  return urls


def cdn_video_claim(tags: List[List[Any]], cdn_base: str) -> Optional[str]:
  """The uid (or content hash) of a video URL on the CDN host in these tags, else None.

  Args:
    tags: An event's tags.
    cdn_base: The CDN origin (`--cdn-base`); only URLs on its host and port count.

  Returns:
    The 32-hex uid of a `/{uid}/downloads/...` or `/{uid}/manifest/...` URL, or the
    64-hex hash of a `/{sha256}.mp4` URL; None when no video URL is on the CDN.
  """
  cdn_host = _host(cdn_base)
  if not cdn_host:
    return None
  for url in _video_urls(tags):
    if _host(url) != cdn_host:
      continue
    path = urllib.parse.urlsplit(url).path
    found = _UID_PATH.match(path) or _CONTENT_PATH.match(path)
    if found:
      return found.group(1)
  return None


def earlier_claim(item: WorkItem, cdn_base: str) -> Optional[str]:
  """What says this vine's video is already on Stream: a uid or content hash, else None.

  Our own migration tags (`marked_uid` of the records), a bare `stream_uid` tag, or a
  video URL on the CDN, on the vine's 32222 event or its 34236 event.
  """
  events = [item.source] + ([item.video] if item.video is not None else [])
  for source in events:
    if source.migrated_uid:
      return source.migrated_uid
  for source in events:
    tags = source.event["tags"]
    uid = first_tag_value(tags, "stream_uid")
    if uid and STREAM_UID_RE.match(uid):
      return uid
    found = cdn_video_claim(tags, cdn_base)
    if found and (STREAM_UID_RE.match(found) or HEX64_RE.match(found)):
      return found
  return None


def confirmed_urls(found: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
  """The URLs of a migration the lookup confirmed, marked reused (no migrate call made)."""
  return dict(found, api_status="reused")


_VINE_LOCKS: Dict[str, list] = {}


@contextlib.asynccontextmanager
async def one_call_per_vine(vine_id: str) -> AsyncIterator[None]:
  """Holds this process's lock of one vine id (on the AsyncDoFn loop, so no thread lock).

  Every AsyncDoFn of a process runs on one event loop (`transforms.runtime.async_dofn`),
  so the locks are shared by every migrate DoFn instance in it; an entry is dropped when
  no one holds or waits for it. Workers in other processes are not covered: there the
  join, which gives every vine id to one key, and the lookup before a resend are the
  guards.
  """
  entry = _VINE_LOCKS.get(vine_id)
  if entry is None:
    entry = _VINE_LOCKS[vine_id] = [asyncio.Lock(), 0]
  entry[1] += 1
  try:
    async with entry[0]:
      yield
  finally:
    entry[1] -= 1
    if entry[1] == 0:
      del _VINE_LOCKS[vine_id]
