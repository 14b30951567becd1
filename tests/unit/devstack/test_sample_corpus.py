"""Tests for devstack.sample_corpus, on the rows of one generated sample (the `data` fixture)."""

import re

from devstack import sample_corpus

VINE_ID = re.compile(r"^[0-9A-Za-z]{11}$")
ROW_COLUMNS = {"vineId", "username", "description", "loops", "likes", "comment_count",
               "repost_count", "created_timestamp", "hashtags"}


def test_rows_have_exactly_the_seed_columns(data):
  rows = data["rows"]
  assert len(rows) == 300 == data["manifest"]["counts"]["rows"]
  for row in rows:
    assert set(row) == ROW_COLUMNS
    assert VINE_ID.match(row["vineId"])
    assert isinstance(row["username"], str) and row["username"]
    assert row["description"] is None or len(row["description"]) <= 140
    for col in ("loops", "likes", "comment_count", "repost_count", "created_timestamp"):
      assert row[col] is None or (isinstance(row[col], int) and row[col] >= 0)
    if row["created_timestamp"] is not None:
      assert sample_corpus.VINE_START <= row["created_timestamp"] <= sample_corpus.VINE_END
  assert len({r["vineId"] for r in rows}) == len(rows)
  # LEFT JOIN nulls and zero loops both occur.
  assert any(r["created_timestamp"] is None for r in rows)
  assert any(r["comment_count"] is None for r in rows)
  assert any(r["loops"] == 0 for r in rows)
  assert any(r["loops"] is None for r in rows)


def test_captions_are_realistic(data):
  texts = [r["description"] or "" for r in data["rows"]]
  non_ascii = sum(1 for t in texts if re.search(r"[^\x00-\x7f]", t))
  assert 0.25 * len(texts) < non_ascii < 0.75 * len(texts)
  assert any("  " * 2 in t for t in texts)
  assert any(re.search(r"[^\s#]#", t) for t in texts)  # hashtags glued to text
  assert any(ch in t for t in texts for ch in ("\u200d", "\ufe0f"))  # ZWJ or VS16


def test_hashtags_mimic_ascii_only_re2_extraction(data):
  for row in data["rows"]:
    assert row["hashtags"] == sample_corpus.bigquery_hashtags(row["description"])
    for tag in row["hashtags"]:
      assert re.fullmatch(r"[0-9a-z_]+", tag)
  assert sample_corpus.bigquery_hashtags("#FelizAñoNuevo かわいい#BTS #防弾少年団 #bts") == [
      "feliza", "bts"]
  assert sample_corpus.bigquery_hashtags(None) == []
