"""Client for the video migration API (`POST /v1/openvine/migrate`, `GET /v1/lookup`).

`MigrationClient` is an asyncio/aiohttp client that a DoFn builds in `setup()` and
drives on its own event loop with many calls in flight. It retries transient
failures with backoff and returns every outcome as a `MigrationResult` value; it
never raises for an API answer. What an answer means (error classes, retry
schedule, URL normalisation, id validation) is in `transforms.clients.migration_contract`.

The bearer token lives only in a private attribute of the client: it is hidden
from `repr`, registered for redaction (`transforms.clients.secrets`) so every
sanitiser scrubs it from error text, and the client refuses to be pickled so it
can never travel in a Beam job graph. Requests never follow redirects (the
Authorization header must not travel to another host) and bodies are read with a
size cap.
"""

import asyncio
import dataclasses
import logging
import random
import urllib.parse
from typing import Any, Callable, Dict, Optional, Tuple

import aiohttp

from transforms.clients import secrets as secret_values
from transforms.clients.migration_contract import (
  LOOKUP_PATH,
  MIGRATE_PATH,
  ORIGIN_MAY_BE_RUNNING,
  MigrationResult,
  Outcome,
  ResponseTooLarge,
  RetryPolicy,
  backoff_delay,
  classify,
  error_line,
  error_text,
  normalise_urls,
  parse_json_object,
  validate_openvine_id,
  validate_vine_id,
)
from transforms.core.text import utc_now_iso
from transforms.runtime.logs import CappedLog, log_stage

_LOG = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024
# MigrationResult.api_status of a vine the lookup found after a call went unanswered.
FOUND_AFTER_TIMEOUT = "found_after_timeout"
_CHUNK_BYTES = 64 * 1024


class MigrationApiError(RuntimeError):
  """A lookup failure; the message is sanitised and safe to log.

  Attributes:
    status: HTTP status of the answer, or None when no answer arrived.
  """

  def __init__(self, message: str, status: Optional[int] = None):
    super().__init__(message)
    self.status = status


class MigrationClient:
  """Async client of the migration API; build in `DoFn.setup()`, one per event loop.

  Usage: `await client.start()`, then many concurrent `await client.migrate(...)`,
  then `await client.close()`. Requests in flight are bounded by `max_connections`
  (a semaphore taken before each request, so waiting for a slot does not eat
  into the per-request timeout). Backoff sleeps happen outside the semaphore.
  """

  def __init__(
    self,
    base_url: str,
    token: str,
    cdn_base: str,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], Any] = asyncio.sleep,
    rng: Optional[random.Random] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_connections: int = 32,
    permissive_ids: bool = False,
  ):
    """Stores configuration; no I/O happens until `start()`.

    Args:
      base_url: API origin, e.g. "https://api.divine.video" (no trailing path).
      token: Bearer token for the migrate endpoint (kept private, never logged).
      cdn_base: CDN origin for URL templates.
      policy: Retry and timeout policy.
      sleep: Awaitable sleep, injected by tests.
      rng: Random source for jitter.
      max_body_bytes: Larger answers are refused unread.
      max_connections: Requests in flight at most (connector limit and semaphore).
      permissive_ids: Accept any `[A-Za-z0-9._-]{1,64}` OpenVine id.

    Raises:
      ValueError: If the token is empty or holds line breaks, or a number is invalid.
    """
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
      raise ValueError("migration token must be a non-empty single-line string")
    if max_connections < 1 or max_body_bytes < 1 or policy.max_attempts < 1:
      raise ValueError("max_connections, max_body_bytes and max_attempts must be >= 1")
    self.base_url = base_url.rstrip("/")
    self.cdn_base = cdn_base.rstrip("/")
    self.policy = policy
    self.max_body_bytes = max_body_bytes
    self.max_connections = max_connections
    self.permissive_ids = permissive_ids
    self._token = token
    secret_values.register(token)
    self._sleep = sleep
    self._rng = rng or random.Random()
    self._session: Optional[aiohttp.ClientSession] = None
    self._slots: Optional[asyncio.Semaphore] = None
    self._counts = {"vines": 0, "calls": 0, "successes": 0, "retries": 0, "exhausted": 0,
                    "permanent": 0, "config": 0, "lookups": 0}
    self._throttled = 0.0
    self._exhausted_log = CappedLog(_LOG, "migrations with exhausted retries")

  def stats(self) -> Dict[str, Any]:
    """Counts since start: vines, calls (requests), successes, retries, exhausted,
    permanent, config, lookups (before a resend), throttled_seconds (backoff and
    Retry-After sleeps)."""
    return dict(self._counts, throttled_seconds=round(self._throttled, 3))

  def __repr__(self) -> str:
    return f"MigrationClient(base_url={self.base_url!r}, cdn_base={self.cdn_base!r}, token='***')"

  def __reduce__(self):
    raise TypeError("MigrationClient holds a secret and must not be pickled; build it in setup()")

  async def start(self) -> None:
    """Opens the HTTP session; call on the event loop that will run the requests."""
    if self._session is not None:
      return
    self._slots = asyncio.Semaphore(self.max_connections)
    self._session = aiohttp.ClientSession(
      connector=aiohttp.TCPConnector(limit=self.max_connections),
      timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
      headers={"User-Agent": "vine-migration", "Accept": "application/json"},
    )
    log_stage(_LOG, "MigrationClient", "ready", api=self.base_url,
              max_connections=self.max_connections, attempts=self.policy.max_attempts,
              base_delay_s=float(self.policy.base_delay), timeout_s=float(self.policy.timeout))

  async def close(self) -> None:
    """Closes the HTTP session; safe to call twice."""
    session, self._session = self._session, None
    if session is not None:
      await session.close()
      log_stage(_LOG, "MigrationClient", "done", **self.stats())

  async def __aenter__(self) -> "MigrationClient":
    await self.start()
    return self

  async def __aexit__(self, *exc_info) -> None:
    await self.close()

  def _require_session(self) -> aiohttp.ClientSession:
    if self._session is None:
      raise RuntimeError("MigrationClient.start() was not awaited")
    return self._session

  async def _read_capped(self, resp: aiohttp.ClientResponse) -> str:
    """Reads the body in chunks; raises ResponseTooLarge past the cap, unread."""
    if resp.content_length is not None and resp.content_length > self.max_body_bytes:
      resp.close()  # Drops the connection instead of draining a huge body.
      raise ResponseTooLarge(f"Content-Length {resp.content_length} > {self.max_body_bytes}")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
      size += len(chunk)
      if size > self.max_body_bytes:
        resp.close()
        raise ResponseTooLarge(f"body exceeds {self.max_body_bytes} bytes")
      chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")

  async def _post_once(self, payload: Dict[str, str]) -> Tuple[Outcome, Optional[int]]:
    """One POST; returns (outcome, HTTP status or None) without raising for network errors."""
    session = self._require_session()
    status = None
    async with self._slots:
      try:
        async with session.post(
          self.base_url + MIGRATE_PATH,
          json=payload,
          headers={"Authorization": f"Bearer {self._token}"},
          allow_redirects=False,
        ) as resp:
          status = resp.status
          retry_after = resp.headers.get("Retry-After")
          try:
            body_text = await self._read_capped(resp)
          except ResponseTooLarge as exc:
            return classify(status, None, exc, retry_after), status
          return classify(status, body_text, None, retry_after), status
      except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        outcome = classify(status, None, exc)
        # Scrub again with the token itself, in case an exception quoted it.
        return dataclasses.replace(
          outcome, reason=error_line(outcome.reason, (self._token,))
        ), status

  async def migrate(self, vine_id: str, openvine_id: str) -> MigrationResult:
    """Migrates one video with bounded, classified retries; never raises for API answers.

    Args:
      vine_id: Sent as `vineId` (validated by `validate_vine_id`).
      openvine_id: Sent as `videoId` (validated by `validate_openvine_id`).

    Returns:
      A MigrationResult: success with urls; permanent at once (invalid ids, 4xx,
      source missing); config at once (the caller should stop the run); or
      transient_exhausted after `policy.max_attempts` attempts. After an attempt
      that got no answer (a timeout, a reset, a gateway error), the vine is looked
      up before the call is sent again: the service is not atomic, and a resend
      while the first call still uploads would upload the video twice; when the
      lookup finds it, that is the success (api_status `FOUND_AFTER_TIMEOUT`).

    Raises:
      RuntimeError: If `start()` was not awaited.
    """
    result = MigrationResult(vine_id=vine_id, openvine_id=openvine_id, kind="permanent")
    try:
      payload = {
        "videoId": validate_openvine_id(openvine_id, self.permissive_ids),
        "vineId": validate_vine_id(vine_id),
      }
    except ValueError as exc:
      result.error = f"invalid id: {exc}"
      return result
    self._require_session()
    self._counts["vines"] += 1
    for attempt in range(1, self.policy.max_attempts + 1):
      result.attempts = attempt
      self._counts["calls"] += 1
      outcome, result.http_status = await self._post_once(payload)
      if outcome.kind == "success":
        try:
          result.urls = normalise_urls(outcome.data, self.cdn_base)
        except ValueError as exc:  # classify checked the uid; kept as a guard.
          outcome = Outcome("transient", f"malformed response: {exc}")
        else:
          result.kind, result.api_status, result.error = "success", outcome.reason, None
          self._counts["successes"] += 1
          return result
      now = utc_now_iso()
      result.first_failure = result.first_failure or now
      result.last_failure = now
      result.error = outcome.reason
      if outcome.kind in ("permanent", "config"):
        result.kind = outcome.kind
        self._counts[outcome.kind] += 1
        _LOG.debug("vine %s: %s after %d attempts: %s", vine_id, outcome.kind, attempt,
                   outcome.reason)
        return result
      if attempt == self.policy.max_attempts:
        break
      delay = backoff_delay(attempt, self.policy, self._rng, outcome.retry_after,
                            throttled=result.http_status == 429)
      _LOG.debug(
        "vine %s attempt %d: %s; retrying in %.1fs", vine_id, attempt, outcome.reason, delay
      )
      self._counts["retries"] += 1
      self._throttled += delay
      result.throttled_seconds += delay
      await self._sleep(delay)
      if result.http_status in ORIGIN_MAY_BE_RUNNING and await self._found_after_timeout(result):
        return result
    result.kind = "transient_exhausted"
    self._counts["exhausted"] += 1
    # The reason is the classified, sanitised outcome: never the body, headers or token.
    self._exhausted_log.log("migrate: vine %s: retries exhausted (transient_exhausted) after %d "
                            "attempts: %s", vine_id, result.attempts, result.error)
    result.error = f"gave up after {result.attempts} attempts: {result.error}"
    return result

  async def _found_after_timeout(self, result: MigrationResult) -> bool:
    """Looks the vine up before a call is sent again: the unanswered one may have uploaded it.

    Sets `result` to a success (api_status "found_after_timeout") when the service has
    the vine. A failed lookup proves nothing either way: the call is then sent again.
    """
    result.lookups += 1
    self._counts["lookups"] += 1
    try:
      found = await self.lookup(result.vine_id)
    except MigrationApiError as exc:
      _LOG.debug("vine %s: lookup before a resend failed: %s", result.vine_id, exc)
      return False
    if found is None:
      return False
    result.kind, result.urls, result.error = "success", found, None
    result.api_status = FOUND_AFTER_TIMEOUT
    self._counts["successes"] += 1
    return True

  async def lookup(self, vine_id: str) -> Optional[Dict[str, Optional[str]]]:
    """Asks whether a Vine id is already migrated (`GET /v1/lookup?vineId=`), one attempt.

    Args:
      vine_id: The Vine id (validated by `validate_vine_id`).

    Returns:
      `normalise_urls` of the answer on 200, None on 404 (unknown, or lookups off).

    Raises:
      ValueError: If the id is invalid.
      MigrationApiError: Any other status, a malformed answer or a network error
        (message sanitised).
    """
    session = self._require_session()
    query = urllib.parse.urlencode({"vineId": validate_vine_id(vine_id)})
    status = None
    try:
      async with self._slots:
        async with session.get(
          f"{self.base_url}{LOOKUP_PATH}?{query}", allow_redirects=False
        ) as resp:
          status = resp.status
          body_text = await self._read_capped(resp)
    except (aiohttp.ClientError, TimeoutError, OSError, ResponseTooLarge) as exc:
      raise MigrationApiError(
        f"lookup failed: {error_line(exc, (self._token,))}", status
      ) from None
    if status == 404:
      return None
    body = parse_json_object(body_text)
    if status != 200:
      raise MigrationApiError(
        f"lookup failed (HTTP {status}): {error_text(body, body_text)}", status
      )
    try:
      return normalise_urls(body or {}, self.cdn_base)
    except ValueError:
      raise MigrationApiError("lookup failed: malformed response (no valid uid)", status) from None
