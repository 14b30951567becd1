"""Tests for transforms.io.row_lookup (LookupVineRows): batched, cached, never losing an event."""

import json

import pytest
from apache_beam.transforms.window import GlobalWindow

from transforms.core import records
from transforms.io.row_lookup import FileRowLookup, LookupVineRowsFn
from transforms.nostr.event import Signer, generate_private_key
from transforms.runtime import accounting

SIGNER = Signer(generate_private_key())


def _keyed(vine_id):
  event = SIGNER.sign({"kind": 32222, "created_at": 1, "content": "",
                       "tags": [["d", vine_id]]})
  return vine_id, records.to_source_event(event)


class _FakeLookup:
  """Answers from a dict and records every batch it was asked."""

  def __init__(self, rows):
    self.rows = rows
    self.batches = []

  def lookup(self, vine_ids):
    self.batches.append(list(vine_ids))
    return {v: self.rows[v] for v in vine_ids if v in self.rows}


def _run(fn, bundles):
  fn.setup()
  out = []
  for bundle in bundles:
    fn.start_bundle()
    for keyed in bundle:
      out += list(fn.process(keyed, timestamp=0, window=GlobalWindow()))
    out += list(fn.finish_bundle())
  return [windowed.value for windowed in out]


@pytest.mark.usefixtures("clean_tally")
def test_lookups_are_batched_and_cached_and_a_missing_row_is_noted():
  fake = _FakeLookup({"aaaaaaaaaaa": {"vineId": "aaaaaaaaaaa", "loops": 7}})
  fn = LookupVineRowsFn(batch_size=2, lookup_factory=lambda: fake)
  items = _run(fn, [[_keyed("aaaaaaaaaaa"), _keyed("bbbbbbbbbbb"), _keyed("aaaaaaaaaaa")],
                    [_keyed("aaaaaaaaaaa"), _keyed("bbbbbbbbbbb")]])
  assert fake.batches == [["aaaaaaaaaaa", "bbbbbbbbbbb"]]  # later ones come from the cache
  assert [(i.vine_id, i.row.loops if i.row else None) for i in items] == [
      ("aaaaaaaaaaa", 7), ("bbbbbbbbbbb", None), ("aaaaaaaaaaa", 7), ("aaaaaaaaaaa", 7),
      ("bbbbbbbbbbb", None)]
  assert [accounting.METADATA_MISSING in i.notes for i in items] == [
      False, True, False, False, True]
  live = accounting.live_counts()
  assert live["vines_in"] == 5 and live["row_lookups"] == 2
  assert live[accounting.METADATA_MISSING] == 2


def test_file_lookup_skips_junk_lines_and_keeps_the_first_row_of_an_id(tmp_path):
  path = tmp_path / "rows.ndjson"
  path.write_text("\n".join([
      json.dumps({"vineId": "aaaaaaaaaaa", "loops": 1}), "not json", json.dumps([1]),
      json.dumps({"vineId": "../etc"}), json.dumps({"vineId": "aaaaaaaaaaa", "loops": 2}),
      ""]), encoding="utf-8")
  lookup = FileRowLookup(str(path))
  assert lookup.lookup(["aaaaaaaaaaa", "../etc", "ccccccccccc"]) == {
      "aaaaaaaaaaa": {"vineId": "aaaaaaaaaaa", "loops": 1}}
