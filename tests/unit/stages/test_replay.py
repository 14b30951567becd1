"""Replay of dead letters: the --replay-filter, unreplayable letters, and a published item's
two events carried through its record and its dead letter back to a work item."""

import json

import pytest

from tests.support.short_video import SIGNER, VINE, short_video_item
from transforms.core import records
from transforms.nostr import short_video_event as nip71_event
from transforms.runtime import outcomes as dl
from transforms.stages import replay
from transforms.stages.publish import result_record


def test_replay_filter_parsing():
  flt = replay.parse_replay_filter("stage=migrate|publish,error_class=transient_exhausted,"
                                   "since=2026-11-01T00:00:00Z")
  assert flt["stage"] == ["migrate", "publish"]
  dead = {"stage": "publish", "error_class": "transient_exhausted",
          "last_failure": "2026-11-02T00:00:00+00:00", "run_id": "r"}
  assert replay.matches(dead, flt)
  assert not replay.matches(dict(dead, stage="sign"), flt)
  assert not replay.matches(dict(dead, last_failure="2026-10-01T00:00:00Z"), flt)
  for bad in ("stage=nowhere", "colour=red", "since=yesterday", "stage"):
    with pytest.raises(replay.ReplayFilterError, match="--replay-filter"):
      replay.parse_replay_filter(bad)


def test_unreplayable_dead_letters_are_skipped_with_a_reason():
  with pytest.raises(ValueError, match="cannot be replayed"):
    replay.item_from_dead_letter({"stage": "read_events", "payload": "{}"})


def test_result_record_and_replay_payload_carry_both_events():
  item = short_video_item()
  signed = SIGNER.sign({"kind": 32222, "created_at": 1, "tags": [["d", VINE]], "content": ""})
  video = SIGNER.sign(nip71_event.build_short_video_event(item, now=2))
  both = item.replace(signed=signed, signed_video=video,
                      video=records.to_source_event(video))
  record = result_record(both, ["ws://a"], "run")
  assert record["event_id"] == signed["id"] and record["video_event_id"] == video["id"]
  assert record["kinds"] == [32222, 34236]
  only_video = result_record(item.replace(signed_video=video), ["ws://a"], "run")
  assert only_video["event_id"] == video["id"] and only_video["kinds"] == [34236]
  dead = dl.dead_letter_for_item("run", dl.STAGE_PUBLISH, dl.TRANSIENT_EXHAUSTED, "x", both)
  stage, back = replay.item_from_dead_letter(json.loads(json.dumps(dead)))
  assert stage == dl.STAGE_PUBLISH
  assert back.signed == signed and back.signed_video == video
  assert back.video.event == video
