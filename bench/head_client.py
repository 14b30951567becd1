"""Micro-benchmark: CPU per URL check, aiohttp against the lean client VerifyUrls uses.

    python -m bench.head_client [--requests 6000] [--concurrency 64]

Both check the same mix of URLs (MP4, a 410 manifest, a GIF) on the bench CDN
(`bench/cdn.py`, a separate process) with the same concurrency, one after the other in
one run; prints the client process's CPU microseconds per check and their ratio.
"""

import argparse
import asyncio
import time

import aiohttp

from bench.cdn import CdnProcess
from transforms.clients.cdn import CdnChecker

_PATHS = (("mp4", "/%032x.mp4"), ("hls", "/%032x/manifest/video.m3u8"),
          ("animated_thumbnail", "/%032x/thumbnails/thumbnail.gif"))


class AiohttpChecker:
  """The check VerifyUrls made before (one HEAD on an aiohttp session)."""

  async def start(self):
    self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

  async def close(self):
    await self._session.close()

  async def check(self, url, kind):
    async with self._session.head(url, allow_redirects=False) as resp:
      return resp.status in (200, 206)


async def measure(checker, base: str, requests: int, concurrency: int) -> float:
  await checker.start()
  limit = asyncio.Semaphore(concurrency)

  async def one(i):
    kind, path = _PATHS[i % len(_PATHS)]
    async with limit:
      return await checker.check(base + path % i, kind)
  start = time.process_time()
  await asyncio.gather(*(one(i) for i in range(requests)))
  used = time.process_time() - start
  await checker.close()
  return used / requests * 1e6


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=6000)
  parser.add_argument("--concurrency", type=int, default=64)
  args = parser.parse_args(argv)
  with CdnProcess() as cdn:
    base = cdn.url.rstrip("/")
    before = asyncio.run(measure(AiohttpChecker(), base, args.requests, args.concurrency))
    after = asyncio.run(measure(CdnChecker(max_connections=args.concurrency), base,
                                args.requests, args.concurrency))
  print("CPU per check: aiohttp %.0f us, lean client (CdnChecker) %.0f us, ratio %.2f"
        % (before, after, before / after))


if __name__ == "__main__":
  main()
