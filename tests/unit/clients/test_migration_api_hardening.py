"""MigrationClient against a hostile or leaky API, and its errors sanitised (issue 4).

Against a scripted in-process server: bodies over the cap refused unread, only validated
ids sent and URL-encoded, redirects not followed; then aiohttp's exceptions, the client's
own error path and an API that echoes the token, scanned for every form of the token.
These use the security tests' session-random token; tests/unit/clients/test_migration_api.py
covers the client's retry behaviour.
"""

import asyncio
import json
import logging
import time
import urllib.parse

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tests.support.secret_scan import find_leaks, token_forms
from tests.support.security import CDN, OPENVINE_ID, TOKEN, UID, VINE_ID, declared_but_never_sent
from transforms.clients import migration_api as m
from transforms.clients import migration_contract as mc
from transforms.clients import secrets as sv
from transforms.runtime import outcomes as dl


class _ApiScript:
  """Scripted migration API handlers recording each request."""

  def __init__(self, answer):
    self.answer = answer
    self.requests = []

  async def handle(self, request):
    self.requests.append({"path": request.path, "raw_path": request.raw_path,
                          "query": list(request.query.items()),
                          "headers": dict(request.headers), "body": await request.read()})
    return await self.answer(request)


def _with_api(answer, scenario, policy=mc.RetryPolicy(max_attempts=1, timeout=5.0), **kwargs):
  """Runs scenario(client) against an in-process API; returns (result, requests)."""
  script = _ApiScript(answer)

  async def main():
    app = web.Application()
    app.router.add_post(mc.MIGRATE_PATH, script.handle)
    app.router.add_get(mc.LOOKUP_PATH, script.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = "http://127.0.0.1:%d" % runner.addresses[0][1]
    try:
      async with m.MigrationClient(url, TOKEN, CDN, policy=policy, **kwargs) as client:
        return await scenario(client)
    finally:
      await runner.cleanup()

  return asyncio.run(main()), script.requests


async def _async_ok(request):
  return web.json_response({"status": "already_migrated", "uid": UID})


def test_a_50_mb_json_body_is_refused_unread():
  started = time.monotonic()
  result, requests = _with_api(
      declared_but_never_sent(m.DEFAULT_MAX_BODY_BYTES + 1, "application/json"),
      lambda client: client.migrate(VINE_ID, OPENVINE_ID))
  assert time.monotonic() - started < 3.0  # the 5 s timeout never ran out
  assert result.kind == "transient_exhausted" and "too large" in result.error
  assert len(requests) == 1


def test_migrate_sends_only_validated_ids_never_a_source_url():
  result, requests = _with_api(_async_ok, lambda client: client.migrate(VINE_ID, OPENVINE_ID))
  assert result.kind == "success"
  assert json.loads(requests[0]["body"]) == {"videoId": OPENVINE_ID, "vineId": VINE_ID}

  async def hostile(client):
    return [await client.migrate(VINE_ID, bad) for bad in (
        "..", "../admin", "a/b", "x?y", "x#y", ".hidden", "a..b", "https://evil.example/v.mp4",
        "x" * 65)] + [await client.migrate(bad, OPENVINE_ID) for bad in ("a\nb", "", " pad")]

  results, requests = _with_api(_async_ok, hostile, permissive_ids=True)
  assert [r.kind for r in results] == ["permanent"] * len(results)
  assert requests == []


def test_lookup_url_encodes_the_vine_id_and_refuses_bad_ones():
  tricky = "a&vineId=b#c/../d%2F e"

  async def scenario(client):
    found = await client.lookup(tricky)
    with pytest.raises(ValueError):
      await client.lookup("bad\nid")
    return found

  found, requests = _with_api(_async_ok, scenario)
  assert found["uid"] == UID and len(requests) == 1
  assert requests[0]["path"] == mc.LOOKUP_PATH
  assert requests[0]["query"] == [("vineId", tricky)]
  # On the wire the id is one encoded query value: its "&", "=", "#" and "%" are escaped.
  raw_path, _, raw_query = requests[0]["raw_path"].partition("?")
  assert raw_path == mc.LOOKUP_PATH and "#" not in raw_query and "&" not in raw_query
  assert urllib.parse.parse_qsl(raw_query, strict_parsing=True) == [("vineId", tricky)]
  assert "Authorization" not in requests[0]["headers"]


def test_a_redirecting_api_is_not_followed_and_stops_the_run():
  async def moved(request):
    raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/steal")

  result, requests = _with_api(moved, lambda client: client.migrate(VINE_ID, OPENVINE_ID))
  assert result.kind == "config" and "redirected" in result.error and len(requests) == 1


# ---------------------------------------------------------------------------
# Sanitising HTTP client exceptions.


def _auth_headers():
  return CIMultiDictProxy(CIMultiDict({"Host": "api.example", "Authorization": "Bearer " + TOKEN}))


def _client_exceptions():
  info = aiohttp.RequestInfo(URL("https://api.example/v1/openvine/migrate"), "POST",
                             _auth_headers(), URL("https://api.example/v1/openvine/migrate"))
  return [
      aiohttp.ClientConnectionError("Cannot connect; request headers: %r" % (_auth_headers(),)),
      aiohttp.ClientResponseError(info, (), status=502, message="Bad Gateway %r" % (info,),
                                  headers=_auth_headers()),
      aiohttp.ClientPayloadError("sent {'Authorization': 'Bearer %s'}" % TOKEN),
      aiohttp.ClientError("b'POST / HTTP/1.1\\r\\nAuthorization: Bearer %s\\r\\n'" % TOKEN),
      aiohttp.ClientError('{"authorization":"Bearer %s"}' % TOKEN),
      aiohttp.ClientError("proxy said: token %s is invalid" % TOKEN),  # no header name at all
      aiohttp.ClientError("GET /x?t=%s" % urllib.parse.quote(TOKEN)),
  ]


@pytest.mark.parametrize("index", range(len(_client_exceptions())))
def test_http_client_exceptions_are_sanitised_for_logs_and_dead_letters(index):
  sv.register(TOKEN)  # what MigrationClient and resolve_token do with the token they hold
  exc = _client_exceptions()[index]
  texts = [mc.error_line(exc), mc.error_line(repr(exc)), sv.scrub(str(exc)),
           sv.scrub(repr(exc)), dl.make_dead_letter("r", dl.STAGE_MIGRATE, dl.PERMANENT,
                                                       mc.error_line(exc))["error"]]
  assert find_leaks({t: t.encode() for t in texts}, {"token": token_forms(TOKEN)}) == []


def test_request_info_headers_are_sanitised():
  text = repr(aiohttp.RequestInfo(URL("https://api.example/"), "POST", _auth_headers(),
                                  URL("https://api.example/")))
  assert TOKEN in text  # the raw repr does carry it: that is what must never be logged
  assert TOKEN not in mc.error_line(text) and TOKEN not in sv.scrub(text)


def test_the_client_path_sanitises_what_it_logs_and_returns(caplog):
  caplog.set_level(logging.DEBUG)

  async def scenario(client):
    session = client._session  # pylint: disable=protected-access

    def post(url, **kwargs):
      raise aiohttp.ClientConnectionError(
          "Cannot connect to %s, headers %r, token %s" % (url, kwargs.get("headers"), TOKEN))

    session.post = post
    session.get = post  # the lookup made before a resend fails the same way, and is logged
    return await client.migrate(VINE_ID, OPENVINE_ID)

  policy = mc.RetryPolicy(max_attempts=2, base_delay=0.0, jitter=False, timeout=5.0)
  result, _ = _with_api(_async_ok, scenario, policy=policy)
  assert result.kind == "transient_exhausted" and "connection error" in result.error
  assert result.lookups == 1 and "lookup before a resend failed" in caplog.text
  letter = dl.make_dead_letter("r", dl.STAGE_MIGRATE, dl.TRANSIENT_EXHAUSTED, result.error)
  haystacks = {"error": result.error.encode(), "dead letter": json.dumps(letter).encode(),
               "logs": caplog.text.encode()}
  assert find_leaks(haystacks, {"token": token_forms(TOKEN)}) == []


def test_an_api_that_echoes_the_token_is_sanitised():
  async def echo(request):
    return web.json_response({"error": "bad request", "message": "you sent %s (%s)" % (
        request.headers["Authorization"], TOKEN)}, status=400)

  result, _ = _with_api(echo, lambda client: client.migrate(VINE_ID, OPENVINE_ID))
  assert result.kind == "permanent" and "HTTP 400" in result.error
  assert TOKEN not in result.error
