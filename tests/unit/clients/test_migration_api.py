"""transforms.clients.migration_api: the client against a scripted in-process aiohttp server on
127.0.0.1 (retries, Retry-After, timeouts, body caps, lookups)."""

import asyncio
import datetime
import json
import pickle
import random
import socket

import pytest
from aiohttp import web

from tests.support.api_answers import (
  ALREADY,
  AUG_2025,
  CDN,
  OCT_2025,
  OPENVINE_ID,
  TOKEN,
  UID,
  VINE_ID,
)
from transforms.clients import migration_api as api
from transforms.clients import migration_contract as contract

NO_JITTER = contract.RetryPolicy(jitter=False, timeout=2.0)


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


def test_hang_past_timeout_is_looked_up_then_retried():
  policy = contract.RetryPolicy(jitter=False, timeout=0.2)
  script = Script(reply(200, ALREADY, delay=0.6), reply(404, {"error": "not_found"}),
                  reply(200, ALREADY))
  result, delays = run_client(script, migrate, policy=policy)
  assert result.kind == "success" and result.attempts == 2 and delays == [2.0]
  assert [r["path"] for r in script.requests] == [
    contract.MIGRATE_PATH, contract.LOOKUP_PATH, contract.MIGRATE_PATH]
  assert result.lookups == 1 and script.requests[1]["query"] == {"vineId": VINE_ID}


def test_a_vine_found_after_a_timeout_is_not_sent_again():
  policy = contract.RetryPolicy(jitter=False, timeout=0.2)
  lookup = {"uid": UID, "status": "uploading", "vineId": VINE_ID, "readyToStream": False,
            "mp4Url": f"{CDN}/{UID}/downloads/default.mp4"}
  script = Script(reply(200, OCT_2025, delay=0.6), reply(200, lookup))
  result, _ = run_client(script, migrate, policy=policy)
  assert (result.kind, result.api_status, result.attempts) == (
    "success", api.FOUND_AFTER_TIMEOUT, 1)
  assert result.urls["uid"] == UID and result.urls["mp4"] == lookup["mp4Url"]
  assert [r["path"] for r in script.requests] == [contract.MIGRATE_PATH, contract.LOOKUP_PATH]


def test_no_lookup_after_an_answered_failure():
  script = Script(reply(503, {"error": "busy"}), reply(500, {"error": "boom"}), reply(200, ALREADY))
  result, _ = run_client(script, migrate)
  assert result.kind == "success" and result.lookups == 0
  assert {r["path"] for r in script.requests} == {contract.MIGRATE_PATH}


def test_a_failed_lookup_after_a_gateway_error_still_resends():
  script = Script(reply(502, "bad gateway"), reply(500, "lookup down"), reply(200, ALREADY))
  result, delays = run_client(script, migrate)
  assert result.kind == "success" and result.attempts == 2 and result.lookups == 1
  assert delays == [2.0]


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
