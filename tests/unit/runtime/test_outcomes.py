"""Dead-letter rows and skips: their shape, no secret in their error text, and counted where made."""

import json

import pytest

from transforms.runtime import accounting
from transforms.runtime import outcomes as dl


def test_dead_letter_shape_and_sanitising():
  row = dl.make_dead_letter("run1", dl.STAGE_MIGRATE, dl.TRANSIENT_EXHAUSTED,
                            "boom Authorization: Bearer s3cret nsec1" + "q" * 58,
                            vine_id="v", event_id="e", attempts=5, payload={"a": 1})
  assert [f for f, _, _ in dl.SCHEMA_FIELDS] == list(row)
  assert "s3cret" not in row["error"] and "nsec1qqqq" not in row["error"]
  assert json.loads(row["payload"]) == {"a": 1} and row["attempts"] == 5
  with pytest.raises(ValueError):
    dl.make_dead_letter("r", "nowhere", dl.PERMANENT, "x")


@pytest.mark.usefixtures("clean_tally")
def test_making_a_dead_letter_counts_its_stage_and_class_once():
  dl.make_dead_letter("r", dl.STAGE_MIGRATE, dl.PERMANENT, "x")
  dl.make_dead_letter("r", dl.STAGE_SIGN, dl.PERMANENT, "x")
  dl.make_dead_letter("r", dl.STAGE_READ_ROWS, dl.BAD_INPUT, "x")
  live = accounting.live_counts()
  assert live["dead_letter_class_permanent"] == 2 and live["dead_letter_class_bad_input"] == 1
  assert (live["dead_letters_migrate"], live["dead_letters_sign"],
          live["dead_letters_read_rows"]) == (1, 1, 1)
  assert not accounting.DEAD_LETTER_CLASS_PREFIX.startswith(accounting.DEAD_LETTER_PREFIX)
  summary = accounting.summarise({"vines_in": 3, **live})
  assert summary["balanced"] and summary["accounted"] == 3
  assert summary["dead_lettered"] == {"migrate": 1, "read_rows": 1, "sign": 1}
  assert summary["dead_letter_classes"] == {"bad_input": 1, "permanent": 2}


@pytest.mark.usefixtures("clean_tally")
def test_making_a_skip_counts_its_reason_once():
  dl.make_skip(dl.STAGE_JOIN, "no_event", "v", None)
  dl.make_skip(dl.STAGE_BUILD, "up_to_date", "v", "e")
  dl.make_skip(dl.STAGE_BUILD, "up_to_date", "w", "f")
  live = accounting.live_counts()
  assert (live["skipped_no_event"], live["skipped_up_to_date"]) == (1, 2)
  assert accounting.summarise({"vines_in": 3, **live})["balanced"]


@pytest.mark.usefixtures("clean_tally")
def test_failed_monitor_line_of_a_dead_letter():
  row = dl.make_dead_letter("r", dl.STAGE_PUBLISH, dl.TRANSIENT_EXHAUSTED,
                            "refused: ws://a: blocked,\nrate-limited " + "x" * 900, vine_id="v1")
  line = dl.monitor_failed(row)
  assert line.startswith("FAILED,v1,publish,transient_exhausted,refused: ws://a: blocked, rate")
  assert "\n" not in line and line.split(",", 4)[4] == " ".join(row["error"].split())[:500]
  assert dl.monitor_failed({"stage": "read_rows", "error_class": "bad_input", "error": None,
                            "vine_id": None}) == "FAILED,,read_rows,bad_input,"


def test_a_huge_payload_is_cut_to_the_cap_and_says_so():
  line = "\u00e9\"\\x" * (8 * 1024 * 1024)  # 40 MB of JSON text once escaped, multi-byte
  row = dl.make_dead_letter("r", dl.STAGE_READ_ROWS, dl.BAD_INPUT, "row is not valid JSON",
                            payload={"row": line})
  assert len(row["payload"].encode("utf-8")) <= dl.MAX_PAYLOAD_BYTES
  stored = json.loads(row["payload"])
  assert stored[dl.PAYLOAD_CUT] is True
  assert stored["payload_bytes"] > 30 * 1024 * 1024
  assert stored["head"] and json.dumps({"row": line}, ensure_ascii=False).startswith(stored["head"])


def test_a_payload_under_the_cap_is_stored_whole():
  payload = {"row": "x" * (dl.MAX_PAYLOAD_BYTES - 100)}
  assert dl.cap_payload(json.dumps(payload)) == json.dumps(payload)
  assert dl.PAYLOAD_CUT not in json.loads(dl.cap_payload(json.dumps(payload)))
