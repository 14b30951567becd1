"""carry_over: a new version never loses a value because today's row lacks it (issue 15, item 5)."""

from tests.support.short_video import short_video_item, signed_event
from transforms.core import records, rows
from transforms.nostr import carry_over as co
from transforms.nostr.short_video_event import build_short_video_event
from transforms.nostr.video_event import build_video_event

OLD = {"tags": [["published_at", "1400000000"], ["likes", "12"], ["loops", "900"],
                ["username", "ann"], ["t", "cats"], ["t", "vine"], ["comments", "-3"]]}


def row(**fields):
  return rows.parse_row({"vineId": "MYxVapFvz2z", **fields})


def test_null_or_out_of_range_row_values_keep_the_previous_ones():
  values, kept = co.merged_metadata(
      row(created_timestamp=None, likes=None, loops=-5, username=None), [OLD])
  assert values["published_at"] == "1400000000" and values["likes"] == "12"
  assert values["loops"] == "900"  # a negative count is no value
  assert values["username"] == "ann"
  assert set(kept) == {"published_at", "likes", "loops", "username"}
  out_of_range = co.merged_metadata(row(created_timestamp=99), [OLD])[0]
  assert out_of_range["published_at"] == "1400000000"


def test_a_present_valid_row_value_replaces_the_old_one():
  values, kept = co.merged_metadata(row(likes=0, created_timestamp=1390000000), [OLD])
  assert values["likes"] == "0" and values["published_at"] == "1390000000"
  assert "likes" not in kept and "published_at" not in kept


def test_an_invalid_old_value_is_not_kept_and_nothing_is_invented():
  values, kept = co.merged_metadata(row(), [OLD])
  assert values["comments"] is None and values["reposts"] is None
  assert "comments" not in kept


def test_without_a_row_old_values_are_used_but_not_counted_as_kept():
  values, kept = co.merged_metadata(None, [OLD])
  assert values["likes"] == "12" and kept == ()


def test_hashtags_and_the_first_previous_event_wins():
  newer = {"tags": [["likes", "40"], ["t", "dogs"]]}
  assert co.merged_hashtags(row(), [newer, OLD]) == ["dogs"]
  assert co.merged_metadata(row(), [newer, OLD])[0]["likes"] == "40"
  assert co.kept_names(row(), [OLD])[-1] == "t"
  assert co.merged_hashtags(row(hashtags=["new"]), [OLD]) == ["new"]


def tag(event, name):
  return next((t[1] for t in event["tags"] if t[0] == name), None)


def test_builders_keep_published_at_and_likes_when_the_row_has_null():
  """The issue's case: old published_at 1400000000, row with NULL timestamp and likes."""
  old = signed_event([["d", "MYxVapFvz2z"], ["published_at", "1400000000"], ["likes", "7"],
                      ["t", "cats"]], created_at=1700000000)
  item = short_video_item().replace(
      source=records.to_source_event(old),
      row=row(created_timestamp=None, likes=None, loops=3, description="hi"))
  for event in (build_video_event(item, 1800000000), build_short_video_event(item, 1800000000)):
    assert tag(event, "published_at") == "1400000000"
    assert tag(event, "likes") == "7"
    assert tag(event, "loops") == "3"
    assert tag(event, "t") == "cats"
