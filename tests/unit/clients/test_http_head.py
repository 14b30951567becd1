"""transforms.clients.http_head: the lean status-and-headers client, against raw asyncio servers.

Each server is a few lines of asyncio on 127.0.0.1 that answers exactly the bytes a test
needs (keep-alive, a closed kept connection, an interim answer, a body not worth reading,
an endless head, silence), so the client's handling of each is checked over real sockets.
"""

import asyncio

import pytest

from transforms.clients import http_head
from transforms.clients.http_head import HeadClient, HttpError, InvalidUrl

OK = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 4096\r\n\r\n"


async def serve(answer, requests):
  """A server calling `answer(request_head, connection_no)` -> (bytes, close_after)."""
  counter = [0]

  async def on_client(reader, writer):
    counter[0] += 1
    number = counter[0]
    try:
      while True:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append((number, head))
        data, close = answer(head, number)
        if data is None:  # say nothing
          await asyncio.sleep(3600)
        writer.write(data)
        await writer.drain()
        if close:
          break
    except (asyncio.IncompleteReadError, ConnectionError):
      pass
    finally:
      writer.close()

  server = await asyncio.start_server(on_client, "127.0.0.1", 0)
  return server, "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]


def run(answer, calls, timeout=5.0):
  """Runs `calls(client, base)` against a server; returns (its result, requests seen)."""
  requests = []

  async def go():
    server, base = await serve(answer, requests)
    client = HeadClient(timeout)
    try:
      return await calls(client, base)
    finally:
      await client.close()
      server.close()
  return asyncio.run(go()), requests


def test_head_answers_are_read_and_the_connection_kept():
  async def calls(client, base):
    return [await client.request("HEAD", base + "/%d.mp4" % i) for i in range(5)]
  answers, requests = run(lambda head, n: (OK, False), calls)
  assert [(a.status, a.headers["content-type"]) for a in answers] == [(200, "video/mp4")] * 5
  assert {n for n, _ in requests} == {1}  # one connection for all five
  first = requests[0][1]
  assert first.startswith(b"HEAD /0.mp4 HTTP/1.1\r\n") and b"\r\nHost: 127.0.0.1:" in first


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error():
  # The server closes after every answer without saying so (as idle timeouts do).
  async def calls(client, base):
    out = []
    for _ in range(3):
      out.append(await client.request("HEAD", base + "/x.mp4"))
      await asyncio.sleep(0.05)  # let the close arrive (either order must work)
    return out
  answers, requests = run(lambda head, n: (OK, True), calls)
  assert [a.status for a in answers] == [200, 200, 200]
  assert len({n for n, _ in requests}) == 3


def test_a_kept_connection_closed_unanswered_is_retried_once_on_a_fresh_one():
  # The first connection answers once, then drops the next request it is sent.
  seen = []

  def answer(head, n):
    seen.append(n)
    return (b"", True) if seen.count(1) == 2 and n == 1 else (OK, False)

  async def calls(client, base):
    return [await client.request("HEAD", base + "/x.mp4") for _ in range(3)]
  answers, requests = run(answer, calls)
  assert [a.status for a in answers] == [200, 200, 200]
  assert [n for n, _ in requests] == [1, 1, 2, 2]


def test_connection_close_and_http_1_0_are_not_reused():
  close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/jpeg\r\n\r\n"

  async def calls(client, base):
    return [await client.request("HEAD", base + "/t.jpg") for _ in range(2)]
  answers, requests = run(lambda head, n: (close, True), calls)
  assert [a.status for a in answers] == [200, 200] and len({n for n, _ in requests}) == 2
  old = b"HTTP/1.0 404 Not Found\r\n\r\n"
  answers, requests = run(lambda head, n: (old, True), calls)
  assert [a.status for a in answers] == [404, 404] and len({n for n, _ in requests}) == 2


def test_interim_answers_are_skipped_however_many():
  interim = b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + OK  # deep enough to break a recursion

  async def calls(client, base):
    return await client.request("HEAD", base + "/x.mp4")
  answer, _ = run(lambda head, n: (interim, False), calls)
  assert answer.status == 200


def test_a_small_body_is_drained_and_a_large_one_closes_the_connection():
  ranged = b"HTTP/1.1 206 Partial Content\r\nContent-Type: video/mp4\r\nContent-Length: 1\r\n\r\nx"
  whole = (b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 10000000\r\n\r\n"
           + b"\0" * 65536)

  async def calls(client, base):
    return [await client.request("GET", base + "/a.mp4", {"Range": "bytes=0-0"})
            for _ in range(3)]
  answers, requests = run(lambda head, n: (ranged, False), calls)
  assert [a.status for a in answers] == [206] * 3 and {n for n, _ in requests} == {1}
  assert b"\r\nRange: bytes=0-0\r\n" in requests[0][1]
  answers, requests = run(lambda head, n: (whole, False), calls)
  assert [a.status for a in answers] == [200] * 3 and len({n for n, _ in requests}) == 3


def test_malformed_and_endless_heads_are_errors_not_hangs():
  async def one(client, base):
    return await client.request("HEAD", base + "/x")
  with pytest.raises(HttpError):
    run(lambda head, n: (b"SSH-2.0-OpenSSH\r\n\r\n", False), one)
  endless = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (http_head.MAX_HEAD_BYTES + 10)
  with pytest.raises(HttpError):
    run(lambda head, n: (endless, False), one)
  with pytest.raises(HttpError):  # closed before any answer, on a fresh connection
    run(lambda head, n: (b"", True), one)


def test_silence_ends_at_the_time_limit():
  async def one(client, base):
    return await client.request("HEAD", base + "/x")
  with pytest.raises(asyncio.TimeoutError):
    run(lambda head, n: (None, False), one, timeout=0.3)


@pytest.mark.parametrize("url", [
    "ftp://cdn/x", "https:///x", "https://cdn/a b", "https://cdn/x\r\nX-Evil: 1",
    "https://cdn/\u00e9", "https://cdn:99999/x"])
def test_unsafe_urls_are_refused_before_any_request(url):
  with pytest.raises(InvalidUrl):
    http_head.request_target(url)


def test_request_target_names_the_host_and_keeps_the_query():
  key, host, path = http_head.request_target("https://CDN.example/a/b.mp4?x=1#frag")
  assert key == ("https", "cdn.example", 443) and host == b"cdn.example"
  assert path == b"/a/b.mp4?x=1"
  key, host, path = http_head.request_target("http://[::1]:8080")
  assert key == ("http", "::1", 8080) and host == b"[::1]:8080" and path == b"/"


def test_parse_head_lowercases_names():
  status, version, headers = http_head.parse_head(
      b"HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nX-A:  b ")
  assert (status, version, headers) == (410, "HTTP/1.1", {"content-type": "application/json",
                                                          "x-a": "b"})
