"""Dead-letter rows: their shape, and no secret in their error text."""

import json

import pytest

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
