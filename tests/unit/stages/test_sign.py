"""Tests for transforms.stages.sign (SignEvent): the author's key signs, nothing else does."""

import pytest
from apache_beam.pvalue import TaggedOutput

from tests.support.keys import key_pair, make_keys_db
from transforms.core import records
from transforms.core.records import WorkItem
from transforms.nostr.event import Signer, validate_event
from transforms.runtime import accounting
from transforms.stages.sign import NO_SIGNING_KEY, SignEventFn

VINE = "MYxVapFvz2z"


def _item(author_priv, **changes):
  old = Signer(author_priv).sign({"kind": 32222, "created_at": 1, "content": "",
                                  "tags": [["d", VINE]]})
  unsigned = {"kind": 32222, "created_at": 2, "content": "new", "tags": [["d", VINE]]}
  fields = {"unsigned": unsigned, **changes}
  return WorkItem(vine_id=VINE, source=records.to_source_event(old), **fields)


def _signed(tmp_path, rows, items):
  path = str(tmp_path / "keys.db")
  make_keys_db(path, rows)
  fn = SignEventFn(path, "run-1")
  fn.setup()
  try:
    return [out for item in items for out in fn.process(item)]
  finally:
    fn.teardown()


def test_signs_with_the_key_of_the_original_events_author(tmp_path):
  (author, author_pub), (other, other_pub) = key_pair(), key_pair()
  rows = [("other", other_pub, other), ("author", author_pub, author)]
  (out,) = _signed(tmp_path, rows, [_item(author)])
  assert out.signed["pubkey"] == author_pub and validate_event(out.signed) is None
  assert out.signed["content"] == "new" and out.signed["created_at"] == 2
  assert out.unsigned is None  # the draft does not travel on to publishing


@pytest.mark.usefixtures("clean_tally")
def test_no_key_for_the_author_is_one_permanent_dead_letter(tmp_path):
  (author, _), (other, other_pub) = key_pair(), key_pair()
  (out,) = _signed(tmp_path, [("other", other_pub, other)], [_item(author)])
  assert isinstance(out, TaggedOutput) and out.tag == "dead_letter"
  row = out.value
  assert (row["stage"], row["error_class"], row["vine_id"]) == ("sign", "permanent", VINE)
  assert NO_SIGNING_KEY in row["error"] and other not in row["error"]
  live = accounting.live_counts()
  assert (live.get("dead_letters_sign"), live.get("dead_letter_class_permanent")) == (1, 1)


def test_a_catch_up_resend_passes_unchanged_without_a_key(tmp_path):
  (author, _), (other, other_pub) = key_pair(), key_pair()
  already = Signer(author).sign({"kind": 32222, "created_at": 2, "content": "",
                                 "tags": [["d", VINE]]})
  item = _item(author, unsigned=None, signed=already)
  assert _signed(tmp_path, [("other", other_pub, other)], [item]) == [item]
