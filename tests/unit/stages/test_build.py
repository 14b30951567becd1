"""BuildVideoEventFn and plan_event: which of the 32222 and 34236 events each vine needs."""

import pytest

from tests.support.short_video import SIGNER, short_video_item
from transforms.core import records
from transforms.nostr import short_video_event as nip71_event
from transforms.runtime import outcomes as dl
from transforms.stages.build import BuildVideoEventFn, plan_event


def _run_build(fn, item):
  return list(fn.process(item))


def test_build_plans_each_address_and_skips_when_nothing_changes():
  item = short_video_item()
  for kind, want in (("32222", ("unsigned",)), ("34236", ("unsigned_video",)),
                     ("both", ("unsigned", "unsigned_video"))):
    (out,) = _run_build(BuildVideoEventFn("r", event_kind=kind, clock=lambda: 2100000000), item)
    got = tuple(f for f in ("unsigned", "unsigned_video") if getattr(out, f) is not None)
    assert got == want, kind
  # The published 34236 version is up to date: nothing to do for it.
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  again = item.replace(video=records.to_source_event(video))
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="34236", clock=lambda: 2200000000), again)
  assert out.tag == dl.SKIPPED and out.value["reason"] == "up_to_date"
  # With both, only the 32222 replacement is still to do.
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="both", clock=lambda: 2200000000), again)
  assert out.unsigned is not None and out.unsigned_video is None and out.signed_video is None
  # A relay lacks the current version: the same signed event again, never a new one.
  behind = again.replace(video=records.to_source_event(video).__class__(
      **{**records.to_source_event(video).__dict__, "missing_on": ("ws://127.0.0.1:1",)}))
  (out,) = _run_build(BuildVideoEventFn("r", event_kind="34236", clock=lambda: 2200000000),
                      behind)
  assert out.signed_video == video and out.unsigned_video is None
  with pytest.raises(ValueError):
    BuildVideoEventFn("r", event_kind="21")


def test_plan_event_forces_a_new_version():
  item = short_video_item()
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2100000000))
  rebuilt = nip71_event.build_short_video_event(
      item.replace(video=records.to_source_event(video)), now=2200000000)
  assert plan_event(records.to_source_event(video), rebuilt, force=False) == (None, None)
  assert plan_event(records.to_source_event(video), rebuilt, force=True) == (rebuilt, None)
  assert plan_event(None, rebuilt, force=False) == (rebuilt, None)


def test_values_kept_from_the_previous_version_are_counted():
  from tests.support.short_video import short_video_item, signed_event
  from transforms.core import records, rows
  from transforms.stages.build import values_kept
  old = signed_event([["d", "MYxVapFvz2z"], ["published_at", "1400000000"], ["likes", "7"]])
  row = rows.parse_row({"vineId": "MYxVapFvz2z", "likes": None, "created_timestamp": None,
                        "loops": 1, "hashtags": ["x"]})
  item = short_video_item().replace(source=records.to_source_event(old), row=row)
  assert values_kept(item, True, False) == 2
  assert values_kept(item, True, True) == 4  # the 34236 version keeps them too
  assert values_kept(item.replace(row=None), True, True) == 0  # no row: metadata_missing
