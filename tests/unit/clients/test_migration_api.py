"""Tests of transforms.clients.migration_contract (pure classification and retry logic) and
transforms.clients.migration_api (the client against a scripted in-process aiohttp server on 127.0.0.1)."""

import asyncio
import datetime
import json
import pickle
import random
import socket

import aiohttp
import pytest
from aiohttp import web

from transforms.clients import migration_api as api
from transforms.clients import migration_contract as contract

TOKEN = "s3cr3t-token-value-0123456789"
CDN = "https://cdn.example.test"
UID = "0123456789abcdef0123456789abcdef"
OPENVINE_ID = "1751085897568-0fd41442"
VINE_ID = "bqJ5A2xW6Ke"
NO_JITTER = contract.RetryPolicy(jitter=False, timeout=2.0)

OCT_2025 = {
  "status": "hybrid_migration_completed",
  "uid": UID,
  "sha256": "ab" * 32,
  "mp4Url": f"https://cdn.divine.video/{UID}/downloads/default.mp4",
  "thumbnailUrl": f"https://cdn.divine.video/{UID}/thumbnails/thumbnail.jpg",
  "posterUrl": f"https://cdn.divine.video/{UID}/poster.jpg",
  "animatedThumbnailUrl": f"https://cdn.divine.video/{UID}/thumbnails/thumbnail.gif",
  "blossomUrl": "https://blossom.example/abc",
}
AUG_2025 = {
  "status": "migrated",
  "uid": UID,
  "hlsUrl": f"https://stream.example/{UID}/manifest/video.m3u8",
  "dashUrl": f"https://stream.example/{UID}/manifest/video.mpd",
  "mp4Url": f"https://stream.example/{UID}/downloads/default.mp4",
  "thumbnailUrl": f"https://stream.example/{UID}/thumbnails/thumbnail.jpg",
  "animatedThumbnailUrl": f"https://stream.example/{UID}/thumbnails/thumbnail.gif",
  "downloadStatus": "ready",
}
ALREADY = {"status": "already_migrated", "uid": UID}


def _j(obj):
  return json.dumps(obj)


# ---------------------------------------------------------------------------
# classify: every row of the reference table.


@pytest.mark.parametrize(
  "status,body,kind",
  [
    (200, _j(OCT_2025), "success"),
    (200, _j(AUG_2025), "success"),
    (200, _j(ALREADY), "success"),
    (200, "<html>oops</html>", "transient"),
    (200, _j({"status": "migrated"}), "transient"),
    (200, _j({"status": "migrated", "uid": "NOT-A-UID"}), "transient"),
    (200, _j({"status": "processing", "uid": UID}), "transient"),
    (200, _j([1, 2]), "transient"),
    (200, "", "transient"),
    (400, _j({"error": "Missing videoId or sourceUrl"}), "permanent"),
    (404, _j({"error": "not_found"}), "permanent"),
    (422, "", "permanent"),
    (401, _j({"error": "Missing or invalid Authorization header"}), "config"),
    (403, _j({"error": "Invalid migration token"}), "config"),
    (
      500,
      _j(
        {
          "error": "OpenVine migration failed",
          "message": "Failed to fetch video: 404 Not Found",
          "videoUrl": "https://api.openvine.co/media/x",
        }
      ),
      "permanent",
    ),
    (500, _j({"error": "x", "message": "Failed to fetch video: 403 Forbidden"}), "permanent"),
    (500, _j({"error": "x", "message": "Failed to fetch video: 410 Gone"}), "permanent"),
    (500, _j({"error": "x", "message": "Failed to fetch video: 502 Bad Gateway"}), "transient"),
    (
      500,
      _j(
        {
          "error": "Failed to store OpenVine video in hybrid storage",
          "errors": {"stream": "Missing Stream credentials"},
        }
      ),
      "config",
    ),
    (500, _j({"error": "Migration failed", "message": "Unexpected token"}), "transient"),
    (502, "<html>bad gateway</html>", "transient"),
    (503, "", "transient"),
    (524, "", "transient"),
    (408, "", "transient"),
    (425, "", "transient"),
    (429, "", "transient"),
    (301, "", "config"),
  ],
)
def test_classify_status_table(status, body, kind):
  outcome = contract.classify(status, body, None)
  assert outcome.kind == kind, outcome
  assert TOKEN not in outcome.reason
  if kind == "success":
    assert outcome.data["uid"] == UID
  else:
    assert outcome.data is None


def test_classify_messages():
  assert contract.classify(200, "{", None).reason.startswith("malformed response")
  assert contract.classify(401, "", None).reason == (
    "migration API refused the token (HTTP 401): check CF_STREAM_MIGRATION_TOKEN"
  )
  missing = contract.classify(500, _j({"message": "Failed to fetch video: 404 Not Found"}), None)
  assert missing.reason.startswith("source missing")
  missing_id = contract.classify(400, _j({"error": "Missing videoId or sourceUrl"}), None)
  assert "Missing videoId" in missing_id.reason


@pytest.mark.parametrize(
  "exc",
  [
    asyncio.TimeoutError(),
    TimeoutError(),
    aiohttp.ServerTimeoutError("read timeout"),
    ConnectionResetError(104, "Connection reset by peer"),
    aiohttp.ClientConnectionError("boom"),
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    OSError("network unreachable"),
  ],
)
def test_classify_exceptions_are_transient(exc):
  outcome = contract.classify(None, None, exc)
  assert outcome.kind == "transient"


def test_classify_too_large_uses_status():
  too_large = contract.ResponseTooLarge("big")
  assert contract.classify(200, None, too_large).kind == "transient"
  assert contract.classify(400, None, too_large).kind == "permanent"
  assert contract.classify(401, None, too_large).kind == "config"
  assert contract.classify(503, None, too_large).kind == "transient"


def test_classify_retry_after_for_429_only_when_given():
  assert contract.classify(429, "", None, "7").retry_after == 7.0
  assert contract.classify(429, "", None).retry_after is None
  assert contract.classify(503, "", None, "3").retry_after == 3.0
  assert contract.classify(500, "", None, "3").retry_after is None


# ---------------------------------------------------------------------------
# Retry-After and backoff.


def test_parse_retry_after():
  now = datetime.datetime(2025, 10, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
  assert contract.parse_retry_after("7") == 7.0
  assert contract.parse_retry_after(" 120 ") == 120.0
  assert contract.parse_retry_after("Wed, 01 Oct 2025 12:00:30 GMT", now=now) == 30.0
  assert contract.parse_retry_after("Wed, 01 Oct 2025 11:00:00 GMT", now=now) == 0.0
  for bad in (None, "", "soon", "-5", "1e400", "nan"):
    assert contract.parse_retry_after(bad) is None, bad


def test_backoff_without_jitter_is_exact():
  policy = contract.RetryPolicy(jitter=False)
  assert [contract.backoff_delay(a, policy) for a in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]
  assert contract.backoff_delay(6, policy) == 32.0
  assert contract.backoff_delay(10_000, policy) == 32.0
  with pytest.raises(ValueError):
    contract.backoff_delay(0, policy)


def test_backoff_equal_jitter_bounds():
  policy = contract.RetryPolicy()
  rng = random.Random(42)
  for attempt, full in zip(range(1, 6), (2, 4, 8, 16, 32), strict=True):
    delays = [contract.backoff_delay(attempt, policy, rng) for _ in range(200)]
    assert all(full / 2 <= d <= full for d in delays)
    assert max(delays) - min(delays) > full / 4  # Actually jittered.


def test_backoff_retry_after_cap_and_429_waits_longer():
  policy = contract.RetryPolicy(jitter=False)
  assert contract.backoff_delay(1, policy, retry_after=7) == 7.0
  assert contract.backoff_delay(1, policy, retry_after=600) == 60.0
  assert contract.backoff_delay(5, policy, retry_after=2) == 32.0
  jittered = contract.RetryPolicy()
  assert all(contract.backoff_delay(1, jittered, random.Random(i), 7) >= 7 for i in range(50))


# ---------------------------------------------------------------------------
# URLs, ids, sanitising.


def test_normalise_urls_oct_2025_without_hls():
  urls = contract.normalise_urls(OCT_2025, CDN + "/")
  assert urls == {
    "uid": UID,
    "hls": f"{CDN}/{UID}/manifest/video.m3u8",
    "dash": f"{CDN}/{UID}/manifest/video.mpd",
    "mp4": OCT_2025["mp4Url"],
    "thumbnail": OCT_2025["thumbnailUrl"],
    "animated_thumbnail": OCT_2025["animatedThumbnailUrl"],
    "api_status": "hybrid_migration_completed",
    "sha256": "ab" * 32,
    "blossom": "https://blossom.example/abc",
  }


def test_normalise_urls_aug_2025_with_hls():
  urls = contract.normalise_urls(AUG_2025, CDN)
  assert urls["hls"] == AUG_2025["hlsUrl"]
  assert urls["dash"] == AUG_2025["dashUrl"]
  assert urls["mp4"] == AUG_2025["mp4Url"]
  assert urls["thumbnail"] == AUG_2025["thumbnailUrl"]
  assert urls["api_status"] == "migrated"
  assert urls["sha256"] is None and urls["blossom"] is None


def test_normalise_urls_fallbacks_and_uid_check():
  urls = contract.normalise_urls(
    {"uid": UID, "posterUrl": "https://p.example/x.jpg", "mp4Url": ""}, CDN
  )
  assert urls["thumbnail"] == "https://p.example/x.jpg"
  assert urls["mp4"] == f"{CDN}/{UID}/downloads/default.mp4"
  assert urls["animated_thumbnail"] == f"{CDN}/{UID}/thumbnails/thumbnail.gif"
  assert urls["api_status"] is None
  odd = contract.normalise_urls(
    {"uid": UID, "sha256": "AB" * 32, "blossomUrl": "javascript:x"}, CDN
  )
  assert odd["sha256"] is None and odd["blossom"] is None
  for bad in ("../../etc", UID.upper(), UID[:-1], None):
    with pytest.raises(ValueError):
      contract.normalise_urls({"uid": bad}, CDN)


def test_validate_ids():
  assert contract.validate_vine_id(VINE_ID) == VINE_ID
  legacy = "openvine_1751085897568-0fd41442"
  assert contract.validate_vine_id(legacy) == legacy
  for bad in ("", "a\nb", "a\x00", " pad", "x" * 65, None, 12345):
    with pytest.raises(ValueError):
      contract.validate_vine_id(bad)
  assert contract.validate_openvine_id(OPENVINE_ID) == OPENVINE_ID
  for bad in ("1751085897568", "1751085897568-0FD41442", OPENVINE_ID + "\n", "../x", None):
    with pytest.raises(ValueError):
      contract.validate_openvine_id(bad)
  assert contract.validate_openvine_id("abc.DEF_1-2", permissive=True) == "abc.DEF_1-2"
  with pytest.raises(ValueError):
    contract.validate_openvine_id("a/b", permissive=True)


def test_sanitise_error_removes_token_and_bearer():
  exc = RuntimeError(f"request failed headers={{'Authorization': 'Bearer {TOKEN}'}} token={TOKEN}")
  text = contract.sanitise_error(exc, secrets=(TOKEN,))
  assert TOKEN not in text
  assert text.startswith("RuntimeError: ")
  assert contract.sanitise_error("Authorization: Bearer abc.def") == "Authorization: ***"
  assert "abc" not in contract.sanitise_error("sent bearer abc123 to host")
  assert contract.sanitise_error(TimeoutError()) == "TimeoutError"
  assert "\n" not in contract.sanitise_error("a\nb\r\nc")
  assert len(contract.sanitise_error("x" * 5000)) <= 300


# ---------------------------------------------------------------------------
# The client against a scripted server.


class FakeSleep:
  """Records requested delays and returns at once."""

  def __init__(self):
    self.delays = []

  async def __call__(self, delay):
    self.delays.append(delay)


class Script:
  """A scripted aiohttp handler: one step per request, the last step repeats."""

  def __init__(self, *steps):
    self.steps = list(steps)
    self.requests = []

  async def handle(self, request):
    self.requests.append(
      {
        "path": request.path,
        "query": dict(request.query),
        "headers": dict(request.headers),
        "body": await request.read(),
      }
    )
    step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
    return await step(request)


def reply(status, body="", headers=None, delay=0.0):
  async def step(_request):
    if delay:
      await asyncio.sleep(delay)
    text = body if isinstance(body, str) else json.dumps(body)
    return web.Response(status=status, text=text, headers=headers, content_type="application/json")

  return step


def chunked_reply(total_bytes):
  async def step(request):
    resp = web.StreamResponse(status=200)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
      for _ in range(total_bytes // 1000):
        await resp.write(b"x" * 1000)
    except (ConnectionError, RuntimeError):
      pass
    return resp

  return step


def run_client(script, scenario, policy=NO_JITTER, **kwargs):
  """Starts the server and a client with a fake sleep, runs `scenario(client)`."""
  sleep = FakeSleep()

  async def main():
    app = web.Application()
    app.router.add_post(contract.MIGRATE_PATH, script.handle)
    app.router.add_get(contract.LOOKUP_PATH, script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = api.MigrationClient(
      f"http://127.0.0.1:{port}/",
      TOKEN,
      CDN,
      policy=policy,
      sleep=sleep,
      rng=random.Random(1),
      **kwargs,
    )
    await client.start()
    try:
      return await scenario(client)
    finally:
      await client.close()
      await runner.cleanup()

  return asyncio.run(main()), sleep.delays


def migrate(client):
  return client.migrate(VINE_ID, OPENVINE_ID)


def test_503_503_200_succeeds_on_third_attempt():
  script = Script(reply(503), reply(503), reply(200, OCT_2025))
  result, delays = run_client(script, migrate)
  assert result.kind == "success"
  assert result.attempts == 3
  assert delays == [2.0, 4.0]
  assert result.throttled_seconds == 6.0
  assert result.http_status == 200
  assert result.api_status == "hybrid_migration_completed"
  assert result.urls["mp4"] == OCT_2025["mp4Url"]
  assert result.urls["hls"] == f"{CDN}/{UID}/manifest/video.m3u8"
  assert result.first_failure and result.last_failure and result.error is None
  assert datetime.datetime.fromisoformat(result.first_failure).tzinfo is not None
  request = script.requests[0]
  assert request["path"] == contract.MIGRATE_PATH
  assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
  assert json.loads(request["body"]) == {"videoId": OPENVINE_ID, "vineId": VINE_ID}


def test_429_honours_retry_after():
  script = Script(reply(429, "", headers={"Retry-After": "7"}), reply(200, ALREADY))
  result, delays = run_client(script, migrate)
  assert result.kind == "success" and result.attempts == 2
  assert len(delays) == 1 and delays[0] >= 7
  assert result.throttled_seconds >= 7


def test_always_503_exhausts_after_five_attempts():
  script = Script(reply(503, "<html>unavailable</html>"))
  result, delays = run_client(script, migrate)
  assert result.kind == "transient_exhausted"
  assert result.attempts == 5 and len(script.requests) == 5
  assert delays == [2.0, 4.0, 8.0, 16.0]
  assert result.http_status == 503
  assert "503" in result.error and "5 attempts" in result.error


def test_401_is_config_at_once():
  script = Script(reply(401, {"error": "Missing or invalid Authorization header"}))
  result, delays = run_client(script, migrate)
  assert result.kind == "config" and result.attempts == 1 and delays == []
  assert "CF_STREAM_MIGRATION_TOKEN" in result.error and TOKEN not in result.error


def test_source_missing_is_permanent_at_once():
  body = {"error": "OpenVine migration failed", "message": "Failed to fetch video: 404 Not Found"}
  result, delays = run_client(Script(reply(500, body)), migrate)
  assert result.kind == "permanent" and result.attempts == 1 and delays == []
  assert result.error.startswith("source missing")
  assert result.first_failure == result.last_failure


def test_malformed_json_then_success():
  script = Script(reply(200, "{not json"), reply(200, AUG_2025))
  result, delays = run_client(script, migrate)
  assert result.kind == "success" and result.attempts == 2 and delays == [2.0]
  assert result.urls["hls"] == AUG_2025["hlsUrl"]


def test_hang_past_timeout_is_retried():
  policy = contract.RetryPolicy(jitter=False, timeout=0.2)
  script = Script(reply(200, ALREADY, delay=0.6), reply(200, ALREADY))
  result, delays = run_client(script, migrate, policy=policy)
  assert result.kind == "success" and result.attempts == 2 and delays == [2.0]


def test_oversized_body_with_content_length_is_refused():
  script = Script(reply(200, {"uid": UID, "pad": "x" * 5000}))
  result, _ = run_client(script, migrate, max_body_bytes=1000)
  assert result.kind == "transient_exhausted"
  assert "too large" in result.error


def test_oversized_chunked_body_is_refused_then_success():
  script = Script(chunked_reply(100_000), reply(200, ALREADY))
  result, delays = run_client(script, migrate, max_body_bytes=10_000)
  assert result.kind == "success" and result.attempts == 2 and delays == [2.0]


def test_connection_refused_is_transient():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  sleep = FakeSleep()

  async def main():
    policy = contract.RetryPolicy(jitter=False, timeout=1.0, max_attempts=2)
    async with api.MigrationClient(f"http://127.0.0.1:{port}", TOKEN, CDN, policy, sleep) as client:
      return await migrate(client)

  result = asyncio.run(main())
  assert result.kind == "transient_exhausted" and result.attempts == 2
  assert result.http_status is None and "connection error" in result.error
  assert TOKEN not in result.error


def test_invalid_ids_are_permanent_without_a_request():
  script = Script(reply(200, ALREADY))

  async def scenario(client):
    return await client.migrate(VINE_ID, "../../admin")

  result, _ = run_client(script, scenario)
  assert result.kind == "permanent" and result.attempts == 0
  assert script.requests == []


def test_lookup():
  script = Script(
    reply(200, {"uid": UID, "status": "ready", "mp4Url": "https://x.example/v.mp4"}),
    reply(404, {"error": "not_found"}),
    reply(500, {"error": "boom"}),
  )

  async def scenario(client):
    found = await client.lookup("a&b=c d")
    missing = await client.lookup(VINE_ID)
    with pytest.raises(api.MigrationApiError) as info:
      await client.lookup(VINE_ID)
    return found, missing, info.value

  (found, missing, error), _ = run_client(script, scenario)
  assert found["uid"] == UID and found["mp4"] == "https://x.example/v.mp4"
  assert found["hls"] == f"{CDN}/{UID}/manifest/video.m3u8"
  assert missing is None
  assert error.status == 500 and "boom" in str(error)
  assert script.requests[0]["query"] == {"vineId": "a&b=c d"}
  assert "Authorization" not in script.requests[0]["headers"]


def test_client_hides_token_and_refuses_pickling():
  client = api.MigrationClient("https://api.example", TOKEN, CDN)
  assert TOKEN not in repr(client)
  with pytest.raises(TypeError):
    pickle.dumps(client)
  with pytest.raises(ValueError):
    api.MigrationClient("https://api.example", "tok\r\nX-Evil: 1", CDN)
  with pytest.raises(RuntimeError):
    asyncio.run(client.migrate(VINE_ID, OPENVINE_ID))
