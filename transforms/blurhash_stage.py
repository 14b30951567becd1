"""ComputeBlurhash: fetch each thumbnail from the configured CDN and compute its blurhash.

Input and main output: WorkItem. Thumbnails are fetched only from the configured CDN
base (other hosts are refused and counted), read with a size cap, decoded in a small
thread pool (Pillow releases the GIL while decoding) and hashed with the numpy
encoder that gives the `blurhash` package's exact string. A failure never loses the
vine: it is published without a blurhash (`blurhash_missing`), or dead-lettered when
the user asked for require_blurhash.
"""

import asyncio
import concurrent.futures
import logging
from typing import Any, List
from urllib.parse import urlsplit

import aiohttp
from apache_beam.pvalue import TaggedOutput

from transforms import accounting
from transforms import dead_letters as dl
from transforms.blurhash_fast import ThumbnailError, blurhash_for_thumbnail
from transforms.concurrency import AsyncDoFn
from transforms.records import WorkItem

_LOG = logging.getLogger(__name__)

MAX_THUMBNAIL_BYTES = 10 * 1024 * 1024
THUMBNAIL_REFUSED = "thumbnail_host_refused"


class ThumbnailFetchError(RuntimeError):
  pass


def allowed_url(url: str, cdn_base: str) -> bool:
  """True only for http(s) URLs under the configured CDN base (same scheme, host, port)."""
  try:
    target, base = urlsplit(url), urlsplit(cdn_base)
  except ValueError:
    return False
  if target.scheme not in ("http", "https") or target.username or target.password:
    return False
  base_path = base.path.rstrip("/") + "/"
  return (target.scheme == base.scheme and target.hostname == base.hostname
          and target.port == base.port and target.path.startswith(base_path))


class ComputeBlurhashFn(AsyncDoFn):
  """WorkItem -> WorkItem with `blurhash` set when the thumbnail could be hashed."""

  def __init__(self, cdn_base: str, run_id: str, max_in_flight: int = 32,
               timeout: float = 15.0, require_blurhash: bool = False, decode_threads: int = 2):
    super().__init__(max_in_flight)
    self._cdn_base = cdn_base
    self._run_id = run_id
    self._timeout = timeout
    self._require = require_blurhash
    self._decode_threads = decode_threads

  async def async_setup(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(self._decode_threads,
                                                       thread_name_prefix="blurhash")
    self._session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=self._timeout),
        connector=aiohttp.TCPConnector(limit=self._max_in_flight))

  async def async_teardown(self):
    await self._session.close()
    self._pool.shutdown(wait=False)

  async def _fetch(self, url: str) -> bytes:
    # Redirects could lead anywhere: the CDN serves thumbnails directly.
    async with self._session.get(url, allow_redirects=False) as resp:
      if resp.status != 200:
        raise ThumbnailFetchError("thumbnail HTTP %d" % resp.status)
      if (resp.content_length or 0) > MAX_THUMBNAIL_BYTES:
        raise ThumbnailFetchError("thumbnail larger than %d bytes" % MAX_THUMBNAIL_BYTES)
      chunks, size = [], 0
      async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_THUMBNAIL_BYTES:
          raise ThumbnailFetchError("thumbnail larger than %d bytes" % MAX_THUMBNAIL_BYTES)
        chunks.append(chunk)
      return b"".join(chunks)

  async def handle(self, item: WorkItem) -> List[Any]:
    if item.blurhash:
      return [item]
    url = (item.migration or {}).get("thumbnail")
    try:
      if not url:
        raise ThumbnailFetchError("no thumbnail URL")
      if not allowed_url(url, self._cdn_base):
        accounting.inc(THUMBNAIL_REFUSED)
        raise ThumbnailFetchError("thumbnail URL outside the configured CDN base refused")
      data = await self._fetch(url)
      loop = asyncio.get_running_loop()
      blurhash = await loop.run_in_executor(self._pool, blurhash_for_thumbnail, data)
    except (ThumbnailFetchError, ThumbnailError, aiohttp.ClientError,
            asyncio.TimeoutError) as exc:
      return self._missing(item, "%s: %s" % (type(exc).__name__, exc))
    return [item.replace(blurhash=blurhash)]

  def _missing(self, item: WorkItem, reason: str) -> List[Any]:
    if self._require:
      accounting.dead_lettered(dl.STAGE_BLURHASH)
      return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_BLURHASH, dl.PERMANENT, reason, item))]
    accounting.inc(accounting.BLURHASH_MISSING)
    return [item.with_note(accounting.BLURHASH_MISSING)]

  def on_unexpected(self, item: WorkItem, exc: BaseException) -> List[Any]:
    _LOG.warning("blurhash %s: unexpected %s", item.vine_id, type(exc).__name__)
    return self._missing(item, "unexpected %s" % type(exc).__name__)
