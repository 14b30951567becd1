"""The contract of the video migration API, as pure functions and values with no I/O.

What `POST /v1/openvine/migrate` and `GET /v1/lookup` answer and what each answer means
(../shared/reference/migration-api.md), kept apart from the HTTP client
(`transforms.clients.migration_api`) so it can be tested alone:

* `classify` sorts one answer (status, body, exception) into an `Outcome`: success,
  transient, permanent or config. aiohttp is imported only for its exception types.
* `RetryPolicy` and `backoff_delay` (with `parse_retry_after`) give the retry schedule.
* `normalise_urls` picks a migrated video's media URLs from an answer;
  `parse_json_object` and `error_text` read an answer's body.
* `validate_vine_id` and `validate_openvine_id` check ids before they go into a request.
* `error_line` turns an exception or text into one short line that is safe to log
  (the scrubbing itself is `secrets.scrub`).
* `MigrationResult` is the value the client returns for one migration.
"""

import dataclasses
import datetime
import email.utils
import json
import math
import random
import re
from typing import Any, Dict, Iterable, Optional

import aiohttp

from transforms.clients import secrets as secret_values
from transforms.core.backoff import backoff_at_least
from transforms.core.ids import HEX64_RE, OPENVINE_ID_RE, OPENVINE_ID_USABLE_RE, STREAM_UID_RE

MIGRATE_PATH = "/v1/openvine/migrate"
LOOKUP_PATH = "/v1/lookup"
SUCCESS_STATUSES = frozenset({"already_migrated", "migrated", "hybrid_migration_completed"})
_MAX_REASON_CHARS = 300

# The worker reports a dead source as "Failed to fetch video: 404 Not Found".
_SOURCE_MISSING = re.compile(r"fail\w*\s+to\s+fetch\s+video\W+(404|403|410)\b", re.IGNORECASE)
_MISSING_CREDENTIALS = re.compile(r"missing\s+stream\s+credentials", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class ResponseTooLarge(Exception):
  """The answer's body exceeds the client's size cap; it was not read into memory."""


@dataclasses.dataclass(frozen=True)
class Outcome:
  """The class of one API answer.

  Attributes:
    kind: "success", "permanent", "config" or "transient".
    reason: Short text safe to log (never headers or the token).
    retry_after: Seconds the server asked us to wait (429/503), or None.
    data: The parsed JSON body of a success, else None.
  """

  kind: str
  reason: str
  retry_after: Optional[float] = None
  data: Optional[Dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """Retry schedule of the seed design: 5 attempts, waits of at least 2-4-8-16-32 s, 60 s timeout.

  Attributes:
    max_attempts: Attempts in total, the first included.
    base_delay: Delay before the second attempt; doubles per attempt.
    max_delay: Cap of the exponential delay (before jitter and the 429 factor).
    timeout: Seconds allowed for one request, body included.
    retry_after_cap: Cap applied to a server's Retry-After.
    jitter: Whether jitter adds to the delay (see `backoff_delay`).
    jitter_spread: The largest jitter, as a fraction of the scheduled delay.
    throttle_factor: A 429 without Retry-After waits this many times the delay.
  """

  max_attempts: int = 5
  base_delay: float = 2.0
  max_delay: float = 32.0
  timeout: float = 60.0
  retry_after_cap: float = 60.0
  jitter: bool = True
  jitter_spread: float = 0.25
  throttle_factor: float = 2.0


@dataclasses.dataclass
class MigrationResult:
  """What happened to one (vine id, OpenVine id) migration; safe to log and serialise.

  Attributes:
    vine_id: The Vine id sent as `vineId`.
    openvine_id: The OpenVine id sent as `videoId`.
    kind: "success", "permanent", "transient_exhausted" or "config".
    urls: `normalise_urls` output on success, else None.
    api_status: The API's `status` field on success.
    error: Sanitised reason of the last failure, or None.
    attempts: Requests made.
    first_failure: ISO-8601 UTC time of the first failed attempt, or None.
    last_failure: ISO-8601 UTC time of the last failed attempt, or None.
    throttled_seconds: Seconds slept between attempts (backoff and Retry-After).
    http_status: Status of the last answer, None if the last attempt got none.
    lookups: `GET /v1/lookup` calls made before resending a call whose answer never came.
  """

  vine_id: str
  openvine_id: str
  kind: str
  urls: Optional[Dict[str, Optional[str]]] = None
  api_status: Optional[str] = None
  error: Optional[str] = None
  attempts: int = 0
  first_failure: Optional[str] = None
  last_failure: Optional[str] = None
  throttled_seconds: float = 0.0
  http_status: Optional[int] = None
  lookups: int = 0


# Answers after which the call may still be running on the service: none at all (a
# timeout, a reset) or the edge giving up on the origin. The service is not atomic, so
# the vine is looked up before the call is sent again (reference, last section).
ORIGIN_MAY_BE_RUNNING = frozenset({None, 502, 504, 520, 522, 524})


def error_line(exc_or_text: Any, secrets: Iterable[str] = ()) -> str:
  """Turns an exception or text into one short line that is safe to log.

  Args:
    exc_or_text: An exception (rendered as "TypeName: message") or any text.
    secrets: Strings to replace with "***" wherever they appear (URL-encoded too).

  Returns:
    The text scrubbed by `secrets.scrub` (the secrets given, every registered
    value, Authorization header values, bearer tokens, nsec keys), control
    characters collapsed, at most 300 characters.
  """
  if isinstance(exc_or_text, BaseException):
    message = str(exc_or_text)
    text = f"{type(exc_or_text).__name__}: {message}" if message else type(exc_or_text).__name__
  else:
    text = str(exc_or_text)
  text = _CONTROL.sub(" ", secret_values.scrub(text, secrets)).strip()
  if len(text) > _MAX_REASON_CHARS:
    text = text[: _MAX_REASON_CHARS - 3] + "..."
  return text


def validate_vine_id(v: Any) -> str:
  """Checks a Vine id before it goes into a JSON body.

  Real Vine ids are 11 characters of [0-9A-Za-z], but the API takes any string, so
  this only refuses what is unsafe to send or to key on.

  Args:
    v: The candidate id.

  Returns:
    The id unchanged.

  Raises:
    ValueError: If it is not a non-empty string of at most 64 printable
      characters without control characters or surrounding whitespace.
  """
  if not isinstance(v, str) or not v or len(v) > 64:
    raise ValueError("vine id must be a non-empty string of at most 64 characters")
  if not v.isprintable() or v != v.strip():
    raise ValueError("vine id contains control characters or surrounding whitespace")
  return v


def validate_openvine_id(v: Any, permissive: bool = False) -> str:
  """Checks an OpenVine video id before it goes into a JSON body.

  Args:
    v: The candidate id.
    permissive: Accept any `[A-Za-z0-9._-]{1,64}` without a leading dot or ".."
      instead of the strict `\\d{13}-[0-9a-f]{8}` shape (epoch milliseconds, dash,
      8 hex).

  Returns:
    The id unchanged.

  Raises:
    ValueError: If the id does not match.
  """
  pattern = OPENVINE_ID_USABLE_RE if permissive else OPENVINE_ID_RE
  if not isinstance(v, str) or not pattern.fullmatch(v):
    mode = "permissive" if permissive else "strict"
    raise ValueError(f"openvine id does not match the {mode} pattern")
  return v


def parse_retry_after(
  value: Optional[str], now: Optional[datetime.datetime] = None
) -> Optional[float]:
  """Parses a Retry-After header: delta seconds or an HTTP date.

  Args:
    value: The header value, or None.
    now: Current time for HTTP dates (default: now, UTC).

  Returns:
    Non-negative seconds to wait, or None if absent or unparseable. The cap is
    applied later, by `backoff_delay`.
  """
  if value is None:
    return None
  value = value.strip()
  if not value:
    return None
  if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
    seconds = float(value)
    return seconds if math.isfinite(seconds) else None
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError, IndexError):
    return None
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  now = now or datetime.datetime.now(datetime.timezone.utc)
  return max(0.0, (when - now).total_seconds())


def backoff_delay(
  attempt: int,
  policy: RetryPolicy,
  rng: Optional[random.Random] = None,
  retry_after: Optional[float] = None,
  throttled: bool = False,
) -> float:
  """Seconds to wait after failed attempt number `attempt` (1-based).

  The schedule is `transforms.core.backoff.backoff_at_least`: `base_delay * 2 **
  (attempt - 1)` capped at `max_delay` (2, 4, 8, 16, 32 s by default) is a floor, and
  `policy.jitter` adds up to `jitter_spread` of it, never less. A 429 without
  Retry-After (`throttled`) waits `throttle_factor` times that: the server said we
  are too fast, a 5xx only that it failed. A server's Retry-After (429/503) is capped
  at `retry_after_cap` and then wins if longer: `max(min(retry_after, cap), delay)`,
  so a throttled call never waits less than asked (up to the cap).

  Args:
    attempt: The attempt that just failed, >= 1.
    policy: The retry policy.
    rng: Random source for jitter (default: a fresh `random.Random()`).
    retry_after: Parsed Retry-After seconds, or None.
    throttled: The attempt was answered 429.

  Returns:
    The delay in seconds.

  Raises:
    ValueError: If attempt < 1.
  """
  if attempt < 1:
    raise ValueError("attempt is 1-based")
  spread = policy.jitter_spread if policy.jitter else 0.0
  delay = backoff_at_least(attempt, policy.base_delay, policy.max_delay,
                           rng=rng or random.Random(), spread=spread)
  if retry_after is not None:
    return max(min(retry_after, policy.retry_after_cap), delay)
  return delay * policy.throttle_factor if throttled else delay


def _template_urls(uid: str, cdn_base: str) -> Dict[str, str]:
  cdn = cdn_base.rstrip("/")
  return {
    "hls": f"{cdn}/{uid}/manifest/video.m3u8",
    "dash": f"{cdn}/{uid}/manifest/video.mpd",
    "mp4": f"{cdn}/{uid}/downloads/default.mp4",
    "thumbnail": f"{cdn}/{uid}/thumbnails/thumbnail.jpg",
    "animated_thumbnail": f"{cdn}/{uid}/thumbnails/thumbnail.gif",
  }


def _http_url(value: Any) -> Optional[str]:
  if isinstance(value, str) and value.startswith(("https://", "http://")) and value.isprintable():
    return value
  return None


def normalise_urls(data: Dict[str, Any], cdn_base: str) -> Dict[str, Optional[str]]:
  """Picks the media URLs of a migrated video from an API answer.

  Uses the URLs the API returned (`hlsUrl`, `dashUrl`, `mp4Url`, `thumbnailUrl`
  with `posterUrl` as fallback, `animatedThumbnailUrl`) and fills only the missing
  ones from the CDN templates. The Oct 2025 API returns no HLS/DASH URLs (the CDN
  answers 410 for them since), so those come from the templates.

  Args:
    data: A parsed migrate or lookup answer with a `uid`.
    cdn_base: CDN origin, e.g. "https://cdn.divine.video".

  Returns:
    {"uid", "hls", "dash", "mp4", "thumbnail", "animated_thumbnail", "api_status",
    "sha256", "blossom"} (the last two None when not returned).

  Raises:
    ValueError: If `uid` is not 32 lowercase hex characters.
  """
  uid = data.get("uid")
  if not isinstance(uid, str) or not STREAM_UID_RE.fullmatch(uid):
    raise ValueError("uid is not 32 lowercase hex characters")
  templates = _template_urls(uid, cdn_base)
  returned = {
    "hls": _http_url(data.get("hlsUrl")),
    "dash": _http_url(data.get("dashUrl")),
    "mp4": _http_url(data.get("mp4Url")),
    "thumbnail": _http_url(data.get("thumbnailUrl")) or _http_url(data.get("posterUrl")),
    "animated_thumbnail": _http_url(data.get("animatedThumbnailUrl")),
  }
  urls: Dict[str, Optional[str]] = {"uid": uid}
  for key, template in templates.items():
    urls[key] = returned[key] or template
  status = data.get("status")
  urls["api_status"] = status if isinstance(status, str) else None
  # Oct 2025 answers also carry the content hash and a Blossom URL (NIP-71 `x`, fallback).
  sha256 = data.get("sha256")
  urls["sha256"] = sha256 if isinstance(sha256, str) and HEX64_RE.fullmatch(sha256) else None
  urls["blossom"] = _http_url(data.get("blossomUrl"))
  return urls


def error_text(body: Optional[Dict[str, Any]], body_text: Optional[str]) -> str:
  """The server's own error words in an answer, sanitised.

  Args:
    body: The answer parsed by `parse_json_object`, or None if it is not a JSON object.
    body_text: The raw body, used (its first 200 characters) when `body` is None.

  Returns:
    The `error`, `message` and `reason` strings joined by ": ", or the raw text if
    the body is not JSON; "" when there is nothing to show.
  """
  if body is not None:
    parts = [str(body[k]) for k in ("error", "message", "reason") if isinstance(body.get(k), str)]
    return error_line(": ".join(parts)) if parts else ""
  return error_line(body_text[:200]) if body_text else ""


def parse_json_object(body_text: Optional[str]) -> Optional[Dict[str, Any]]:
  """Parses an answer's body as a JSON object.

  Args:
    body_text: The decoded body, or None.

  Returns:
    The object, or None if the body is empty, not JSON or not a JSON object.
  """
  if not body_text:
    return None
  try:
    body = json.loads(body_text)
  except ValueError:
    return None
  return body if isinstance(body, dict) else None


def _classify_exception(exc: BaseException) -> Outcome:
  if isinstance(exc, aiohttp.InvalidURL):
    return Outcome("config", "migration API URL is invalid: check the base URL")
  if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeouts.
    return Outcome("transient", "timeout")
  if isinstance(exc, aiohttp.ClientPayloadError):
    return Outcome("transient", f"payload error: {error_line(exc)}")
  if isinstance(exc, (aiohttp.ClientError, OSError)):
    return Outcome("transient", f"connection error: {error_line(exc)}")
  return Outcome("transient", f"unexpected error: {error_line(exc)}")


def classify(
  status: Optional[int],
  body_text: Optional[str],
  exc: Optional[BaseException],
  retry_after_header: Optional[str] = None,
) -> Outcome:
  """Classifies one answer of `POST /v1/openvine/migrate` (reference error table).

  Args:
    status: HTTP status, or None if no answer arrived.
    body_text: The decoded body, or None.
    exc: The exception raised while calling, or None. `ResponseTooLarge` with a
      status classifies by the status alone (the body was not read).
    retry_after_header: The raw Retry-After header; parsed for 429 and 503.

  Returns:
    The Outcome. Rules: 2xx with a success status and a 32-hex uid -> success;
    2xx not JSON or without a uid -> transient ("malformed response"); 401/403 and
    500 "Missing Stream credentials" -> config; 500 "Failed to fetch video:
    404/403/410" -> permanent ("source missing"); 408/425/429/5xx, timeouts,
    connection and payload errors -> transient; 3xx -> config (redirects are not
    followed, the Authorization header must not travel); other 4xx -> permanent.
  """
  too_large = isinstance(exc, ResponseTooLarge)
  if exc is not None and not too_large:
    return _classify_exception(exc)
  if status is None:
    return Outcome("transient", "response too large" if too_large else "no response")
  body = None if too_large else parse_json_object(body_text)
  server_says = error_text(body, None if too_large else body_text)
  suffix = f": {server_says}" if server_says else ""

  if 200 <= status < 300:
    if too_large:
      return Outcome("transient", f"malformed response (HTTP {status}): body too large")
    uid = body.get("uid") if body else None
    if not isinstance(uid, str) or not STREAM_UID_RE.fullmatch(uid):
      return Outcome("transient", f"malformed response (HTTP {status}): no valid uid")
    api_status = body.get("status")
    if api_status not in SUCCESS_STATUSES:
      shown = error_line(str(api_status))[:40]
      return Outcome(
        "transient", f"malformed response (HTTP {status}): unexpected status {shown!r}"
      )
    return Outcome("success", str(api_status), data=body)
  if status in (401, 403):
    return Outcome(
      "config", f"migration API refused the token (HTTP {status}): check {secret_values.TOKEN_ENV_VAR}"
    )
  if 300 <= status < 400:
    return Outcome("config", f"migration API redirected (HTTP {status}): check the base URL")
  if status == 500 and not too_large:
    haystack = body_text or ""
    if _MISSING_CREDENTIALS.search(haystack):
      return Outcome(
        "config",
        "migration API has no Stream credentials (HTTP 500): fix the worker's configuration",
      )
    found = _SOURCE_MISSING.search(haystack)
    if found:
      return Outcome("permanent", f"source missing (OpenVine answered {found.group(1)})")
  if status in (408, 425, 429) or 500 <= status < 600:
    retry_after = parse_retry_after(retry_after_header) if status in (429, 503) else None
    return Outcome("transient", f"HTTP {status}{suffix}", retry_after=retry_after)
  if 400 <= status < 500:
    return Outcome("permanent", f"HTTP {status}{suffix}")
  return Outcome("transient", f"unexpected HTTP {status}")
