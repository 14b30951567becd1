"""ComputeBlurhash: fetch each thumbnail from the configured CDN and compute its blurhash.

Input and main output: WorkItem. Thumbnails are fetched only from the configured CDN
base (other hosts are refused and counted), read with a size cap and a deadline,
decoded in child processes (media.isolated_decoder.IsolatedDecoder: a crash, a memory
blow-up or a hang in a native decoder costs that image its blurhash, never the worker)
and hashed with the numpy encoder that gives the `blurhash` package's exact string. A
failure never loses the vine: it is published without a blurhash (`blurhash_missing`),
or dead-lettered when the user asked for require_blurhash.
"""

import asyncio
import collections
import concurrent.futures
import functools
import logging
from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

import aiohttp
from apache_beam.pvalue import TaggedOutput

from transforms.core.records import WorkItem
from transforms.media.isolated_decoder import DecoderCrash, IsolatedDecoder
from transforms.media.thumbnail import ThumbnailError
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.async_dofn import AsyncDoFn
from transforms.runtime.logs import CappedLog

_LOG = logging.getLogger(__name__)

MAX_THUMBNAIL_BYTES = 10 * 1024 * 1024
THUMBNAIL_REFUSED = "thumbnail_host_refused"
DECODER_CRASHES = "thumbnail_decoder_crashes"
# A CDN thumbnail is a few tens of KB: ten seconds is generous and bounds a hung fetch.
DEFAULT_FETCH_TIMEOUT = 10.0


class ThumbnailFetchError(RuntimeError):
  """The thumbnail could not be fetched; `transient` when a later run may succeed."""

  def __init__(self, message: str, transient: bool = False):
    super().__init__(message)
    self.transient = transient


@functools.lru_cache(maxsize=16)
def _base_parts(cdn_base: str) -> Tuple[Any, str, Optional[str]]:
  """(the parsed base, its path ending in "/", the prefix every URL written like it starts with)."""
  base = urlsplit(cdn_base)
  base_path = base.path.rstrip("/") + "/"
  prefix = None
  if base.scheme in ("http", "https") and base.netloc and "@" not in base.netloc:
    prefix = "%s://%s%s" % (base.scheme, base.netloc, base_path)
  return base, base_path, prefix


def allowed_url(url: str, cdn_base: str) -> bool:
  """True only for http(s) URLs under the configured CDN base (same scheme, host, port)."""
  try:
    base, base_path, prefix = _base_parts(cdn_base)
  except ValueError:
    return False
  if prefix is not None and url.startswith(prefix):
    # Written exactly like the base: same scheme, host, port, no user info, under its path.
    # (VerifyUrls asks this for every candidate URL: parsing each costs more than checking it.)
    return True
  try:
    target = urlsplit(url)
  except ValueError:
    return False
  if target.scheme not in ("http", "https") or target.username or target.password:
    return False
  return (target.scheme == base.scheme and target.hostname == base.hostname
          and target.port == base.port and target.path.startswith(base_path))


class ComputeBlurhashFn(AsyncDoFn):
  """WorkItem -> WorkItem with `blurhash` set when the thumbnail could be hashed."""

  OUTPUTS = (dl.DEAD_LETTER,)  # tagged outputs besides "main"

  def __init__(self, cdn_base: str, run_id: str, max_in_flight: int = 32,
               timeout: float = DEFAULT_FETCH_TIMEOUT, require_blurhash: bool = False,
               decode_threads: int = 2):
    super().__init__(max_in_flight)
    self._cdn_base = cdn_base
    self._run_id = run_id
    self._timeout = timeout
    self._require = require_blurhash
    self._decode_threads = decode_threads

  def ready_details(self):
    return {"cdn": self._cdn_base, "timeout_s": float(self._timeout),
            "decode_threads": self._decode_threads, "require_blurhash": self._require}

  def done_details(self):
    counts = getattr(self, "_counts", {})
    return {k: counts.get(k, 0) for k in ("hashed", "had_blurhash", "missing", "dead_lettered",
                                          "host_refused", "decoder_crashes")}

  async def async_setup(self):
    self._counts = collections.Counter()  # touched on the event loop thread only
    self._unexpected_log = CappedLog(_LOG, "unexpected blurhash errors")
    self._pool = concurrent.futures.ThreadPoolExecutor(self._decode_threads,
                                                       thread_name_prefix="blurhash")
    self._decoder = IsolatedDecoder()
    self._session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=self._timeout),
        connector=aiohttp.TCPConnector(limit=self._max_in_flight))

  async def async_teardown(self):
    await self._session.close()
    self._pool.shutdown(wait=False)
    self._decoder.close()

  async def _fetch(self, url: str) -> bytes:
    # Redirects could lead anywhere: the CDN serves thumbnails directly.
    async with self._session.get(url, allow_redirects=False) as resp:
      if 300 <= resp.status < 400:
        accounting.inc(THUMBNAIL_REFUSED)
        self._counts["host_refused"] += 1
        raise ThumbnailFetchError("thumbnail redirect refused (HTTP %d): only the configured "
                                  "CDN base is fetched" % resp.status)
      if resp.status != 200:
        raise ThumbnailFetchError("thumbnail HTTP %d" % resp.status,
                                  transient=resp.status in (408, 425, 429) or resp.status >= 500)
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
      self._counts["had_blurhash"] += 1
      return [item]
    url = (item.migration or {}).get("thumbnail")
    try:
      if not url:
        raise ThumbnailFetchError("no thumbnail URL")
      if not allowed_url(url, self._cdn_base):
        accounting.inc(THUMBNAIL_REFUSED)
        self._counts["host_refused"] += 1
        raise ThumbnailFetchError("thumbnail URL outside the configured CDN base refused")
      try:
        data = await self._fetch(url)
      except asyncio.TimeoutError:
        raise ThumbnailFetchError("thumbnail fetch took longer than %.1f s" % self._timeout,
                                  transient=True) from None
      except aiohttp.ClientError as exc:
        raise ThumbnailFetchError("thumbnail fetch failed: %s" % type(exc).__name__,
                                  transient=True) from None
      loop = asyncio.get_running_loop()
      blurhash = await loop.run_in_executor(self._pool, self._decoder, data)
    except (ThumbnailFetchError, ThumbnailError) as exc:
      if isinstance(exc, DecoderCrash):
        accounting.inc(DECODER_CRASHES)
        self._counts["decoder_crashes"] += 1
      return self._missing(item, "%s: %s" % (type(exc).__name__, exc),
                           transient=getattr(exc, "transient", False))
    self._counts["hashed"] += 1
    return [item.replace(blurhash=blurhash, thumbnail_seen=url)]

  def _missing(self, item: WorkItem, reason: str, transient: bool = False) -> List[Any]:
    _LOG.debug("blurhash %s: no blurhash (%s)", item.vine_id, reason)
    if self._require:
      self._counts["dead_lettered"] += 1
      # Fetches are not retried within a run (a re-run tries again): a timeout or a
      # 5xx is transient_exhausted after its one attempt, anything else permanent.
      error_class = dl.TRANSIENT_EXHAUSTED if transient else dl.PERMANENT
      return [TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_BLURHASH, error_class, reason, item))]
    accounting.inc(accounting.BLURHASH_MISSING)
    self._counts["missing"] += 1
    return [item.with_note(accounting.BLURHASH_MISSING)]

  def on_unexpected(self, item: WorkItem, exc: BaseException) -> List[Any]:
    # A bug, not a bad thumbnail: worth a warning, but capped.
    self._unexpected_log.log("blurhash %s: unexpected %s", item.vine_id, type(exc).__name__)
    return self._missing(item, "unexpected %s" % type(exc).__name__)
