"""transforms.clients.migration_contract: the pure classification of answers, Retry-After and
backoff, URL normalising, id validation and error sanitising."""

import asyncio
import dataclasses
import datetime
import json
import random

import aiohttp
import pytest

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
from transforms.clients import migration_contract as contract


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


def test_backoff_jitter_only_adds_to_the_seed_schedule():
  policy = contract.RetryPolicy()
  rng = random.Random(42)
  for attempt, floor in zip(range(1, 6), (2, 4, 8, 16, 32), strict=True):
    delays = [contract.backoff_delay(attempt, policy, rng) for _ in range(200)]
    assert all(floor <= d <= floor * (1 + policy.jitter_spread) for d in delays)
    assert max(delays) - min(delays) > floor * policy.jitter_spread / 2  # Actually jittered.


def test_backoff_429_without_retry_after_waits_longer_than_a_5xx():
  for policy in (contract.RetryPolicy(), contract.RetryPolicy(jitter=False)):
    for attempt in range(1, 8):
      longest_5xx = contract.backoff_delay(attempt, dataclasses.replace(policy, jitter_spread=0.0))
      longest_5xx *= 1 + (policy.jitter_spread if policy.jitter else 0.0)
      shortest_429 = min(contract.backoff_delay(attempt, policy, random.Random(i), throttled=True)
                         for i in range(50))
      assert shortest_429 > longest_5xx, attempt
  assert contract.backoff_delay(1, contract.RetryPolicy(jitter=False), throttled=True) == 4.0


def test_backoff_retry_after_is_honoured_up_to_its_cap():
  policy = contract.RetryPolicy(jitter=False)
  assert contract.backoff_delay(1, policy, retry_after=7) == 7.0
  assert contract.backoff_delay(1, policy, retry_after=7, throttled=True) == 7.0
  assert contract.backoff_delay(1, policy, retry_after=600) == 60.0
  assert contract.backoff_delay(5, policy, retry_after=2) == 32.0  # never below the schedule
  jittered = contract.RetryPolicy()
  assert all(contract.backoff_delay(1, jittered, random.Random(i), 7) >= 7 for i in range(50))
  short = contract.RetryPolicy(retry_after_cap=5.0, jitter=False)
  assert contract.backoff_delay(1, short, retry_after=3600) == 5.0


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


def test_error_line_removes_token_and_bearer():
  exc = RuntimeError(f"request failed headers={{'Authorization': 'Bearer {TOKEN}'}} token={TOKEN}")
  text = contract.error_line(exc, secrets=(TOKEN,))
  assert TOKEN not in text
  assert text.startswith("RuntimeError: ")
  assert contract.error_line("Authorization: Bearer abc.def") == "Authorization: ***"
  assert "abc" not in contract.error_line("sent bearer abc123 to host")
  assert contract.error_line(TimeoutError()) == "TimeoutError"
  assert "\n" not in contract.error_line("a\nb\r\nc")
  assert len(contract.error_line("x" * 5000)) <= 300
