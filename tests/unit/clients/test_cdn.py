"""transforms.clients.cdn: what counts as a working URL, against an in-process CDN on 127.0.0.1.

The server answers like the real CDN (MP4, JPEG, a 200 SVG placeholder, 410 for manifests),
and can refuse HEAD or fail a few times first.
"""

import asyncio
import collections

import pytest
from aiohttp import web

from transforms.clients import cdn

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"/>'


class FakeSleep:
  def __init__(self):
    self.delays = []

  async def __call__(self, delay):
    self.delays.append(delay)


def make_app(refuse_head=False, fail_first=0):
  seen = collections.Counter()
  methods = []

  async def handler(request):
    name = request.match_info["name"]
    methods.append((request.method, request.headers.get("Range")))
    if refuse_head and request.method == "HEAD":
      return web.Response(status=405)
    seen[name] += 1
    if name == "flaky.mp4" and seen[name] <= fail_first:
      return web.Response(status=503)
    if name == "moved.mp4":
      raise web.HTTPFound("https://elsewhere.example/x.mp4")
    if name.endswith(".mp4"):
      body = b"\x00" * 4096
      if request.headers.get("Range") == "bytes=0-0":
        return web.Response(status=206, body=body[:1], content_type="video/mp4")
      return web.Response(body=body, content_type="video/mp4")
    if name == "thumbnail.jpg":
      return web.Response(body=b"\xff\xd8\xff", content_type="image/jpeg")
    if name == "missing.jpg":
      return web.Response(body=SVG, content_type="image/svg+xml")
    if name == "video.m3u8":
      return web.json_response({"error": "gone", "reason": "stream_removed"}, status=410)
    return web.json_response({"error": "not_found"}, status=404)

  app = web.Application()
  app.router.add_route("*", "/{name}", handler)
  return app, methods


async def run_checks(app, checks, **kwargs):
  runner = web.AppRunner(app)
  await runner.setup()
  site = web.TCPSite(runner, "127.0.0.1", 0)
  await site.start()
  port = site._server.sockets[0].getsockname()[1]  # pylint: disable=protected-access
  checker = cdn.CdnChecker(timeout=5.0, **kwargs)
  await checker.start()
  try:
    return await asyncio.gather(*(checker.check("http://127.0.0.1:%d/%s" % (port, name), kind)
                                  for name, kind in checks))
  finally:
    await checker.close()
    await runner.cleanup()


@pytest.mark.parametrize("name,kind,ok", [
    ("a.mp4", "mp4", True),
    ("thumbnail.jpg", "thumbnail", True),
    ("missing.jpg", "thumbnail", False),  # the CDN's placeholder is not a thumbnail
    ("video.m3u8", "hls", False),  # 410 Gone
    ("nothing", "mp4", False),  # 404
    ("thumbnail.jpg", "mp4", False),  # 200 but an image is not a video
    ("moved.mp4", "mp4", False),  # redirects are not followed
])
def test_working_means_200_with_a_fitting_type(name, kind, ok):
  app, _ = make_app()
  (result,) = asyncio.run(run_checks(app, [(name, kind)], sleep=FakeSleep()))
  assert result.ok is ok
  assert bool(result.reason) is not ok


def test_head_first_then_a_ranged_get_where_head_is_refused():
  app, methods = make_app()
  (result,) = asyncio.run(run_checks(app, [("a.mp4", "mp4")]))
  assert result.ok and methods == [("HEAD", None)]
  app, methods = make_app(refuse_head=True)
  results = asyncio.run(run_checks(app, [("a.mp4", "mp4"), ("missing.jpg", "thumbnail")]))
  assert [r.ok for r in results] == [True, False]
  assert ("GET", "bytes=0-0") in methods
  assert results[0].status in (200, 206)


def test_transient_failures_are_retried_a_few_times():
  sleep = FakeSleep()
  app, _ = make_app(fail_first=2)
  (result,) = asyncio.run(run_checks(app, [("flaky.mp4", "mp4")], attempts=3, sleep=sleep))
  assert result.ok and result.attempts == 3 and len(sleep.delays) == 2
  app, _ = make_app(fail_first=5)
  (result,) = asyncio.run(run_checks(app, [("flaky.mp4", "mp4")], attempts=2, sleep=FakeSleep()))
  assert not result.ok and result.transient and result.attempts == 2


def test_a_permanent_answer_is_not_retried():
  sleep = FakeSleep()
  app, methods = make_app()
  (result,) = asyncio.run(run_checks(app, [("video.m3u8", "hls")], attempts=3, sleep=sleep))
  assert (result.ok, result.transient, result.status, len(methods)) == (False, False, 410, 1)
  assert sleep.delays == []


def test_unreachable_host_is_transient_not_raised():
  async def go():
    checker = cdn.CdnChecker(timeout=2.0, attempts=2, sleep=FakeSleep())
    await checker.start()
    try:
      return await checker.check("http://127.0.0.1:9/x.mp4", "mp4")
    finally:
      await checker.close()
  result = asyncio.run(go())
  assert not result.ok and result.transient


def test_judge_ignores_content_type_parameters_and_case():
  assert cdn.judge("u", "hls", 200, "Application/vnd.apple.mpegURL; charset=utf-8").ok
  assert not cdn.judge("u", "thumbnail", 200, "image/svg+xml").ok
  assert not cdn.judge("u", "mp4", 200, None).ok
  assert cdn.judge("u", "mp4", 503, "text/html").transient
  with pytest.raises(ValueError):
    asyncio.run(cdn.CdnChecker().check("http://x/", "font"))
