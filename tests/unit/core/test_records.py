"""The pure domain records: rows cleaned and refused, ids read from tags, replacement order."""

import pytest

from tests.support.security import VINE_ID
from transforms.core import records, rows
from transforms.core.records import BadInput, extract_vine_id
from transforms.core.rows import parse_row

UID = "0123456789abcdef0123456789abcdef"


def test_parse_row_cleans_counts_and_timestamps():
  row = rows.parse_row({"vineId": "b9KOOWX7HUx", "username": "ig: x", "description":
                           "hi #FelizAñoNuevo", "loops": "12", "likes": -3,
                           "comment_count": "abc", "repost_count": None,
                           "created_timestamp": 1900000000, "hashtags": ["feliza"]})
  assert row.loops == 12 and row.likes is None and row.comment_count is None
  assert row.repost_count is None and row.created_timestamp is None
  assert row.hashtags == ("felizañonuevo",)
  assert {"likes_negative", "comment_count_not_numeric",
          "created_timestamp_out_of_range"} <= set(row.notes)


@pytest.mark.parametrize("bad", ["../etc", "abc", "b9KOOWX7HU/", "b9KOOWX7HU?", "b9KOOWX7H U",
                                 "b9KOOWX7HUé", None, 12345678901])
def test_parse_row_refuses_unsafe_vine_ids(bad):
  with pytest.raises(records.BadInput):
    rows.parse_row({"vineId": bad})


def test_row_round_trip():
  row = rows.parse_row({"vineId": "b9KOOWX7HUx", "description": "#a", "loops": 3})
  assert records.row_from_dict(row.to_dict()) == row


def test_openvine_ids_from_url_r_and_imeta():
  tags = [["r", "https://api.openvine.co/media/1751085897568-0fd41442?x=1"],
          ["imeta", "url https://apt.openvine.co/media/1751085897569-0fd41443", "m video/mp4"],
          ["url", "https://example.com/other.mp4"]]
  assert records.extract_openvine_ids(tags) == ("1751085897568-0fd41442", "1751085897569-0fd41443")


def test_vine_id_from_d_or_vine_id_tag_and_junk_refused():
  assert records.extract_vine_id([["d", "MYxVapFvz2z"]]) == "MYxVapFvz2z"
  assert records.extract_vine_id([["d", "openvine_17"], ["vine_id", "MYxVapFvz2z"]]) == "MYxVapFvz2z"
  assert records.extract_vine_id([["d", "test-video-1751355501029"]]) is None


def test_migrated_uid_needs_both_tags_agreeing():
  assert records.migrated_uid([["stream_uid", UID], ["migration", "openvine-to-stream", UID]]) == UID
  assert records.migrated_uid([["stream_uid", UID]]) is None
  assert records.migrated_uid([["stream_uid", UID], ["migration", "openvine-to-stream", "x"]]) is None


def test_newer_follows_relay_replacement_rule():
  a = {"created_at": 10, "id": "b"}
  b = {"created_at": 10, "id": "a"}
  c = {"created_at": 9, "id": "0"}
  assert records.newer(a, b) is b and records.newer(b, a) is b
  assert records.newer(c, a) is a


def test_vine_ids_are_validated_before_they_reach_a_url():
  for bad in ("../../admin", "abc", "bqJ5A2xW6K?", "bqJ5A2xW6K/", "bqJ5A2xW6Ke1"):
    with pytest.raises(BadInput):
      parse_row({"vineId": bad})
    assert extract_vine_id([["d", bad]]) is None
  assert parse_row({"vineId": VINE_ID}).vine_id == VINE_ID
