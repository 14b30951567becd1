"""Checks that media URLs work on the CDN before an event carries them; no Beam.

A URL works when it answers 200 (or 206 to a ranged GET) with a content type that fits
what it is meant to be (`EXPECTED_TYPES`): an SVG placeholder is not a thumbnail, a JSON
410 is not a manifest. The check asks `HEAD` first; a server that refuses HEAD (405, 501)
gets a one-byte ranged GET instead (`Range: bytes=0-0`), for that host from then on.
Redirects are not followed (the CDN serves media directly; a redirect could lead to any
host). 429, 5xx, timeouts and connection errors are retried a few times with a short
backoff; a URL still failing then is `transient` (a later run may find it working).
"""

import asyncio
import dataclasses
from typing import Callable, Dict, Optional, Tuple

from transforms.clients.http_head import HeadClient, HttpError, request_target
from transforms.core.backoff import exponential_backoff

# A HEAD or a one-byte GET on a CDN is fast: a few seconds bound a hung edge.
DEFAULT_TIMEOUT = 8.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BASE_DELAY = 0.5
_HEAD_REFUSED = (405, 501)
_TRANSIENT = (408, 425, 429)

# Content types (lower case, without parameters) a working URL of each kind may answer.
VIDEO_TYPES = ("video/mp4",)
EXPECTED_TYPES: Dict[str, Tuple[str, ...]] = {
    "hls": ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl"),
    "dash": ("application/dash+xml",),
    "mp4": VIDEO_TYPES,
    "blossom": VIDEO_TYPES,
    # Real images only (the reference: decode JPEG, PNG, WebP); never image/svg+xml.
    "thumbnail": ("image/jpeg", "image/png", "image/webp"),
    "animated_thumbnail": ("image/gif", "image/webp", "image/png"),
}


@dataclasses.dataclass(frozen=True)
class UrlCheck:
  """The answer of one URL check.

  Attributes:
    url: The URL checked.
    ok: True when it answered 200/206 with an expected content type.
    status: The last HTTP status, or None when no answer came.
    content_type: The answer's content type (lower case, no parameters), or None.
    reason: Why it does not work ("" when it does); safe to log.
    transient: True when it failed in a way a later try may not (429, 5xx, timeout).
    attempts: Requests sent.
  """

  url: str
  ok: bool
  status: Optional[int] = None
  content_type: Optional[str] = None
  reason: str = ""
  transient: bool = False
  attempts: int = 1


def judge(url: str, kind: str, status: int, content_type: Optional[str],
          attempts: int = 1) -> UrlCheck:
  """The verdict on one answer: pure, so the rules are testable without a server."""
  ctype = (content_type or "").split(";")[0].strip().lower() or None
  if status in (200, 206):
    if ctype in EXPECTED_TYPES[kind]:
      return UrlCheck(url, True, status, ctype, attempts=attempts)
    return UrlCheck(url, False, status, ctype, "HTTP %d but %s is not a %s" % (
        status, ctype or "no content type", kind), attempts=attempts)
  transient = status in _TRANSIENT or status >= 500
  return UrlCheck(url, False, status, ctype, "HTTP %d" % status, transient, attempts)


class CdnChecker:
  """Checks URLs concurrently over pooled keep-alive connections; `start` before, `close` after."""

  def __init__(self, timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS,
               base_delay: float = DEFAULT_BASE_DELAY, max_connections: int = 64,
               sleep: Optional[Callable[[float], "asyncio.Future"]] = None):
    self._timeout = timeout
    self._attempts = max(1, attempts)
    self._base_delay = base_delay
    self._max_connections = max_connections
    self._sleep = sleep or asyncio.sleep
    self._head_refused = set()  # hosts (host, port) that refuse HEAD
    self._client: Optional[HeadClient] = None

  async def start(self) -> None:
    self._client = HeadClient(self._timeout, max_connections=self._max_connections)

  async def close(self) -> None:
    if self._client is not None:
      await self._client.close()
      self._client = None

  async def _ask(self, url: str) -> Tuple[int, Optional[str]]:
    target = request_target(url)
    host = target[0]  # (scheme, host, port)
    if host not in self._head_refused:
      answer = await self._client.request("HEAD", url, target=target)
      if answer.status not in _HEAD_REFUSED:
        return answer.status, answer.headers.get("content-type")
      self._head_refused.add(host)
    # A server that ignores Range and sends the whole file: the client closes the connection
    # instead of reading it.
    answer = await self._client.request("GET", url, {"Range": "bytes=0-0"}, target=target)
    return answer.status, answer.headers.get("content-type")

  async def check(self, url: str, kind: str) -> UrlCheck:
    """Whether `url` works as a `kind` (a key of EXPECTED_TYPES); never raises for I/O."""
    if kind not in EXPECTED_TYPES:
      raise ValueError("unknown media kind %r" % (kind,))
    verdict = UrlCheck(url, False, reason="not checked")
    for attempt in range(1, self._attempts + 1):
      try:
        status, ctype = await self._ask(url)
        verdict = judge(url, kind, status, ctype, attempt)
      except asyncio.TimeoutError:
        verdict = UrlCheck(url, False, reason="no answer in %.1f s" % self._timeout,
                           transient=True, attempts=attempt)
      except (HttpError, OSError, ValueError) as exc:
        verdict = UrlCheck(url, False, reason="request failed: %s" % type(exc).__name__,
                           transient=True, attempts=attempt)
      if verdict.ok or not verdict.transient or attempt == self._attempts:
        return verdict
      await self._sleep(exponential_backoff(attempt, self._base_delay, self._base_delay * 4))
    return verdict
