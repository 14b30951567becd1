"""VerifyUrls: candidates (stable, content-addressed first, CDN host only) and the DoFn with a
fake checker (only working URLs kept, dead letter at `verify` when no video works)."""

import asyncio

from apache_beam.pvalue import TaggedOutput

from tests.support.short_video import SHA, UID, short_video_item, signed_event
from transforms.clients.cdn import UrlCheck
from transforms.core import records
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.stages import verify

CDN = "https://cdn"
HASHED = "%s/%s.mp4" % (CDN, SHA)
BY_UID = "%s/%s/downloads/default.mp4" % (CDN, UID)
THUMB = "%s/%s/thumbnails/thumbnail.jpg" % (CDN, UID)
HLS = "%s/%s/manifest/video.m3u8" % (CDN, UID)


class FakeChecker:
  """Answers ok for the URLs in `working`; records what was asked."""

  def __init__(self, working):
    self.working = set(working)
    self.asked = []

  async def start(self):
    pass

  async def close(self):
    pass

  async def check(self, url, kind):
    self.asked.append((url, kind))
    return UrlCheck(url, url in self.working, 200 if url in self.working else 410,
                    reason="" if url in self.working else "HTTP 410")


def run(item, working, enabled=True):
  checker = FakeChecker(working)
  fn = verify.VerifyUrlsFn(CDN, "run-1", enabled=enabled, checker_factory=lambda: checker)

  async def go():
    await fn.async_setup()
    try:
      return await fn.handle(item)
    finally:
      await fn.async_teardown()
  return asyncio.run(go()), checker


def migrated_before(mp4, thumb=THUMB, uid=UID):
  """An item whose 32222 event already carries our tags for `uid` with these URLs."""
  old = signed_event([["d", "MYxVapFvz2z"], ["r", mp4, "download"], ["thumb", thumb],
                      ["stream_uid", uid], ["migration", records.MIGRATION_NAME, uid]])
  item = short_video_item(sha256=None)
  return item.replace(source=records.to_source_event(old),
                      migration=dict(item.migration, mp4=BY_UID, sha256=None, blossom=None))


def test_previous_url_for_the_same_uid_comes_first_and_content_addressed_first_of_all():
  item = migrated_before(HASHED)
  options = verify.candidates(item, CDN)
  assert options["mp4"] == [HASHED, BY_UID]  # hash known from the previous MP4's name
  assert options["thumbnail"][0] == THUMB
  other = migrated_before("%s/%s/downloads/default.mp4" % (CDN, "f" * 32), uid="f" * 32)
  assert verify.candidates(other, CDN)["mp4"] == [BY_UID]  # another uid: not reused


def test_force_remigrate_answer_keeps_the_previous_hashed_mp4():
  (out,), checker = run(migrated_before(HASHED), {HASHED, BY_UID, THUMB})
  assert out.migration["mp4"] == HASHED
  assert out.migration["sha256"] == SHA
  assert (BY_UID, "mp4") not in checker.asked  # the first working candidate wins


def test_only_working_urls_are_kept():
  item = short_video_item()
  working = {item.migration["mp4"], HASHED}
  (out,), _ = run(item.replace(migration=dict(item.migration)), working)
  m = out.migration
  assert m["mp4"] == HASHED  # content-addressed first when it works
  assert m["hls"] is None and m["dash"] is None  # 410
  assert m["thumbnail"] is None  # dead (e.g. a placeholder)
  assert m["blossom"] is None  # off the CDN: never a candidate


def test_urls_off_the_cdn_are_never_checked_nor_kept():
  item = short_video_item()
  foreign = dict(item.migration, mp4="http://169.254.169.254/latest/x.mp4",
                 thumbnail="https://other.example/t.jpg")
  accounting.reset_live()
  (out,), checker = run(item.replace(migration=foreign), {HASHED, "https://other.example/t.jpg"})
  assert out.migration["mp4"] == HASHED and out.migration["thumbnail"] is None
  assert all(url.startswith(CDN + "/") for url, _ in checker.asked)
  assert accounting.live_counts()[verify.URLS_OFF_CDN] >= 2


def test_no_working_video_is_a_transient_dead_letter_at_verify():
  accounting.reset_live()
  item = short_video_item()
  outputs, checker = run(item, {THUMB})
  (tagged,) = outputs
  assert isinstance(tagged, TaggedOutput) and tagged.tag == dl.DEAD_LETTER
  dead = tagged.value
  assert (dead["stage"], dead["error_class"]) == (dl.STAGE_VERIFY, dl.TRANSIENT_EXHAUSTED)
  assert '"migration"' in dead["payload"]  # what a replay needs
  counts = accounting.live_counts()
  assert counts[accounting.URLS_CHECKED] == len(checker.asked)
  assert counts[accounting.URLS_DEAD] == len(checker.asked) - 1


def test_hls_is_kept_when_it_works():
  item = short_video_item()
  (out,), _ = run(item, {item.migration["hls"], item.migration["mp4"]})
  assert out.migration["hls"] == item.migration["hls"]


def test_disabled_checks_nothing_and_keeps_the_preferred_candidates():
  item = migrated_before(HASHED)
  (out,), checker = run(item, set(), enabled=False)
  assert checker.asked == [] and out.migration["mp4"] == HASHED


def test_verify_is_a_replay_entry_stage():
  from transforms.stages import replay
  assert replay.ENTRY_STAGE[dl.STAGE_VERIFY] == dl.STAGE_VERIFY
  assert dl.STAGE_VERIFY in replay.ENTRY_STAGES
  assert dl.STAGES.index(dl.STAGE_BLURHASH) < dl.STAGES.index(dl.STAGE_VERIFY) < dl.STAGES.index(
      dl.STAGE_BUILD)


def test_the_thumbnail_blurhash_just_decoded_is_not_asked_for_again():
  item = short_video_item()
  seen = item.replace(migration=dict(item.migration), thumbnail_seen=THUMB)
  (out,), checker = run(seen, {item.migration["mp4"]})  # the checker would call THUMB dead
  assert out.migration["thumbnail"] == THUMB and out.thumbnail_seen is None
  assert (THUMB, "thumbnail") not in checker.asked
  (out,), checker = run(item, {item.migration["mp4"]})  # not seen: asked, and dead
  assert out.migration["thumbnail"] is None and (THUMB, "thumbnail") in checker.asked


def test_gone_slots_are_presumed_after_a_run_of_410s_and_probed_now_and_then():
  gone = verify.GoneSlots(after=3, every=10)
  assert [gone.saw("hls", 410, False) for _ in range(3)] == [None, None, "gone"]
  skipped = [gone.skip("hls") for _ in range(30)]
  assert skipped.count(False) == 3  # one vine in ten is still checked
  assert not gone.skip("dash") and not gone.skip("mp4")  # only the slot that was gone
  assert gone.saw("hls", 200, True) == "back" and not gone.skip("hls")
  for status in (404, 503, None):  # only 410 Gone counts
    for _ in range(5):
      gone.saw("dash", status, False)
  assert not gone.skip("dash")
  for _ in range(5):
    gone.saw("mp4", 410, False)
  assert not gone.skip("mp4")  # never for the video, thumbnail or preview slots


def test_verify_stops_asking_for_manifests_the_cdn_keeps_answering_410_for():
  accounting.reset_live()
  item = short_video_item()
  checker = FakeChecker({item.migration["mp4"], HASHED})
  fn = verify.VerifyUrlsFn(CDN, "run-1", checker_factory=lambda: checker)

  async def go():
    await fn.async_setup()
    try:
      return [await fn.handle(item.replace(migration=dict(item.migration)))
              for _ in range(200)]
    finally:
      await fn.async_teardown()
  outs = asyncio.run(go())
  hls_asked = sum(1 for _, kind in checker.asked if kind == "hls")
  after = verify.GoneSlots().after
  assert after <= hls_asked <= after + 200 // verify.GoneSlots().every + 1
  assert all(out.migration["hls"] is None and out.migration["mp4"] for (out,) in outs)
  assert accounting.live_counts()[verify.URLS_PRESUMED_GONE] == 2 * 200 - sum(
      1 for _, kind in checker.asked if kind in ("hls", "dash"))
