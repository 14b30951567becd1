"""ComputeBlurhashFn fetches thumbnails only from the configured CDN (issue 4).

`allowed_url` against every trick, then the DoFn against small in-process servers: hosts
elsewhere are refused unrequested, redirects are never followed, bodies over 10 MB are
refused.
"""

import asyncio
import contextlib
import threading
import time
from typing import List

import pytest
from aiohttp import web

from tests.support.security import CDN, UID, declared_but_never_sent, needs_patch, work_item
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.stages import blurhash as bs


@pytest.mark.parametrize("url", [
    CDN + "/%s/thumbnails/thumbnail.jpg" % UID,
    "https://CDN.divine.video/%s/thumbnails/thumbnail.jpg" % UID,
])
def test_allowed_url_accepts_the_cdn(url):
  assert bs.allowed_url(url, CDN)


@pytest.mark.parametrize("url", [
    "https://evil.example/%s/thumbnails/thumbnail.jpg" % UID,  # another host
    "https://cdn.divine.video.evil.example/x.jpg",  # suffix trick
    "https://cdn.divine.video@evil.example/x.jpg",  # userinfo trick
    "https://evil.example/?u=https://cdn.divine.video/x.jpg",
    "http://cdn.divine.video/x.jpg",  # scheme downgrade
    "https://cdn.divine.video:8443/x.jpg",  # another port
    "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
    "http://[fe80::1]/x.jpg",
    "http://10.0.0.7/x.jpg", "http://192.168.1.1/x.jpg", "http://127.0.0.1/x.jpg",
    "http://[::1]/x.jpg", "http://0.0.0.0/x.jpg",
    "file:///etc/passwd", "gopher://cdn.divine.video/x", "ftp://cdn.divine.video/x.jpg",
    "data:image/jpeg;base64,AAAA", "//cdn.divine.video/x.jpg", "cdn.divine.video/x.jpg", "",
    "https://cdn.divine.video\\@evil.example/x.jpg",
])
def test_allowed_url_refuses_everything_else(url):
  assert not bs.allowed_url(url, CDN)


def test_allowed_url_fast_path_agrees_with_parsing_every_url():
  # URLs written exactly like the base skip parsing: the answer must be the parsed one.
  urls = [CDN + "/x.jpg", CDN + "/x.jpg?a=1#f", CDN + "/", CDN + "//x", CDN + "/x@evil/y",
          CDN + ":443/x.jpg", CDN.upper() + "/x", CDN + "x.jpg", CDN + "\\@evil.example/x",
          CDN + "/x\n"]
  base = bs.urlsplit(CDN)

  def parsed(url):
    target = bs.urlsplit(url)
    return (target.scheme in ("http", "https") and not target.username
            and target.scheme == base.scheme and target.hostname == base.hostname
            and target.port == base.port and target.path.startswith(base.path.rstrip("/") + "/"))
  assert [bs.allowed_url(u, CDN) for u in urls] == [parsed(u) for u in urls]
  assert [bs.allowed_url(u, CDN) for u in urls[:5]] == [True] * 5


def test_allowed_url_keeps_to_the_base_path():
  base = "https://media.example/cdn"
  assert bs.allowed_url(base + "/u/thumbnail.jpg", base)
  assert not bs.allowed_url("https://media.example/other/u.jpg", base)
  assert not bs.allowed_url("https://media.example/cdn-evil/u.jpg", base)


class _Server:
  """A small aiohttp server on 127.0.0.1 in its own thread; records every request."""

  def __init__(self, routes):
    self.routes = routes  # [(method, path, handler)]
    self.hits: List[str] = []
    self.url = None

  def __enter__(self):
    self._loop = asyncio.new_event_loop()

    async def start():
      @web.middleware
      async def record(request, handler):
        self.hits.append(request.path_qs)
        return await handler(request)

      app = web.Application(middlewares=[record])
      for method, path, handler in self.routes:
        app.router.add_route(method, path, handler)
      self._runner = web.AppRunner(app, shutdown_timeout=0.5)
      await self._runner.setup()
      site = web.TCPSite(self._runner, "127.0.0.1", 0)
      await site.start()
      self.url = "http://127.0.0.1:%d" % self._runner.addresses[0][1]

    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
    self._thread.start()
    asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
    return self

  def __exit__(self, *exc):
    asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(5)


def _jpeg() -> bytes:
  import io  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.new("RGB", (48, 48), (200, 30, 90)).save(buf, "JPEG")
  return buf.getvalue()


def _streamed(total):
  async def handler(request):
    resp = web.StreamResponse(status=200, headers={"Content-Type": "image/jpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):
      chunk = b"\xff" * 65536
      for _ in range(total // len(chunk) + 1):
        await resp.write(chunk)
    return resp
  return handler


def _hash_thumbnails(cdn_base, urls, monkeypatch, require_blurhash=False):
  """Drives ComputeBlurhashFn.handle for each url; returns (outputs, counters, seconds)."""
  counted = []
  monkeypatch.setattr(accounting, "inc", lambda name, n=1: counted.append(name))
  fn = bs.ComputeBlurhashFn(cdn_base, "run", timeout=5.0, require_blurhash=require_blurhash)
  fn.setup()
  try:
    outputs, seconds = [], []
    for url in urls:
      started = time.monotonic()
      outputs.append(fn.run_sync(fn.handle(work_item(url))))
      seconds.append(time.monotonic() - started)
  finally:
    fn.teardown()
  return outputs, counted, seconds


@pytest.fixture(scope="module")
def evil():
  async def anything(request):
    return web.Response(body=_jpeg(), content_type="image/jpeg")

  with _Server([("GET", "/{tail:.*}", anything)]) as server:
    yield server


@pytest.fixture(scope="module")
def cdn(evil):
  jpeg = _jpeg()

  async def thumbnail(request):
    return web.Response(body=jpeg, content_type="image/jpeg")

  async def redirect(request):
    raise web.HTTPFound(evil.url + "/stolen.jpg")

  with _Server([("GET", "/cdn/ok.jpg", thumbnail), ("GET", "/cdn/moved.jpg", redirect),
                ("GET", "/cdn/huge.jpg", declared_but_never_sent(
                    bs.MAX_THUMBNAIL_BYTES + 1, "image/jpeg")),
                ("GET", "/cdn/stream.jpg", _streamed(bs.MAX_THUMBNAIL_BYTES + 65536))]) as server:
    yield server


def test_thumbnail_from_the_cdn_is_hashed(cdn, monkeypatch):
  (outputs,), counted, _ = _hash_thumbnails(cdn.url + "/cdn", [cdn.url + "/cdn/ok.jpg"],
                                            monkeypatch)
  assert outputs[0].blurhash and counted == []
  assert outputs[0].thumbnail_seen == cdn.url + "/cdn/ok.jpg"  # VerifyUrls need not ask again


def test_thumbnails_elsewhere_are_refused_counted_and_never_requested(cdn, evil, monkeypatch):
  urls = [evil.url + "/x.jpg", "http://169.254.169.254/latest/meta-data/x.jpg",
          "http://10.0.0.7/x.jpg", "file:///etc/passwd", "gopher://127.0.0.1:70/x",
          cdn.url + "/elsewhere/ok.jpg"]
  hits_before = len(evil.hits)
  outputs, counted, _ = _hash_thumbnails(cdn.url + "/cdn", urls, monkeypatch)
  assert len(evil.hits) == hits_before and not any("/elsewhere" in h for h in cdn.hits)
  assert counted.count(bs.THUMBNAIL_REFUSED) == len(urls)
  assert counted.count(accounting.BLURHASH_MISSING) == len(urls)
  assert all(o[0].blurhash is None and "blurhash_missing" in o[0].notes for o in outputs)
  assert all(o[0].thumbnail_seen is None for o in outputs)


def test_a_redirect_is_never_followed(cdn, evil, monkeypatch):
  hits_before = len(evil.hits)
  (outputs,), counted, _ = _hash_thumbnails(cdn.url + "/cdn", [cdn.url + "/cdn/moved.jpg"],
                                            monkeypatch, require_blurhash=True)
  assert len(evil.hits) == hits_before
  dead = outputs[0].value
  assert outputs[0].tag == dl.DEAD_LETTER and "HTTP 302" in dead["error"]
  assert accounting.DEAD_LETTER_PREFIX + dl.STAGE_BLURHASH in counted


@needs_patch
def test_a_redirect_is_counted_as_a_refused_host(cdn, monkeypatch):
  _, counted, _ = _hash_thumbnails(cdn.url + "/cdn", [cdn.url + "/cdn/moved.jpg"], monkeypatch)
  assert bs.THUMBNAIL_REFUSED in counted


def test_thumbnails_over_10_mb_are_refused(cdn, monkeypatch):
  urls = [cdn.url + "/cdn/huge.jpg", cdn.url + "/cdn/stream.jpg"]
  outputs, counted, seconds = _hash_thumbnails(cdn.url + "/cdn", urls, monkeypatch,
                                               require_blurhash=True)
  for (dead,) in outputs:
    assert "larger than %d bytes" % bs.MAX_THUMBNAIL_BYTES in dead.value["error"]
  # A declared size is refused on the header, unread (the body never comes; timeout 5 s);
  # a streamed body is dropped as soon as it passes the cap.
  assert seconds[0] < 2.0
