"""Tests for devstack.sampledata: files parse, events verify, planted failures are present.

The `data` fixture (one generated sample) is in conftest.py.
"""

import json
import re

import pytest

from devstack import sample_corpus, sampledata
from tests.unit.devstack.conftest import ndjson
from transforms.nostr.event import (
  derive_public_key,
  first_tag_value,
  parse_private_key,
  tag_values,
  validate_event,
)

OPENVINE_ID = re.compile(r"^\d{13}-[0-9a-f]{8}$")


def _video_openvine_id(event):
  for tag in event["tags"]:
    if tag[0] in ("url", "r") and len(tag) > 1:
      return tag[1].rsplit("/media/", 1)[1]
    if tag[0] == "imeta":
      for entry in tag[1:]:
        if entry.startswith("url "):
          return entry[4:].rsplit("/media/", 1)[1]
  return None


def test_every_event_validates_except_the_forged_one(data):
  forged = data["manifest"]["planted"]["forged_signature"]["event_id"]
  problems = {e["id"]: validate_event(e) for e in data["events"]}
  assert problems.pop(forged) == "signature does not verify"
  assert all(p is None for p in problems.values()), problems
  assert len(data["events"]) == data["manifest"]["counts"]["events"]


def test_event_shape(data):
  oids = set(data["oids"])
  for event in data["events"]:
    assert event["kind"] == 32222
    assert sample_corpus.EVENTS_START - 86400 * 31 <= event["created_at"] <= sample_corpus.EVENTS_END
    assert first_tag_value(event["tags"], "title")
    assert first_tag_value(event["tags"], "client") == "openvine"
    assert {"vine", "nostrvine"} <= set(tag_values(event["tags"], "t"))
    oid = _video_openvine_id(event)
    assert OPENVINE_ID.match(oid)
    missing = data["manifest"]["planted"]["missing_openvine_video"]["openvine_id"]
    assert (oid in oids) == (oid != missing)
  kinds = {"url": 0, "r_only": 0, "imeta_only": 0}
  for event in data["events"]:
    names = {t[0] for t in event["tags"]}
    kinds["url" if "url" in names else "r_only" if "r" in names else "imeta_only"] += 1
  assert all(kinds.values()), kinds
  assert any(first_tag_value(e["tags"], "vine_id") for e in data["events"])


def test_superseded_versions_are_older(data):
  by_id = {e["id"]: e for e in data["events"]}
  superseded = data["manifest"]["superseded"]
  assert len(superseded) == data["manifest"]["counts"]["superseded_events"]
  for entry in superseded:
    old, new = by_id[entry["event_id"]], by_id[entry["latest_event_id"]]
    assert old["pubkey"] == new["pubkey"]
    assert first_tag_value(old["tags"], "d") == first_tag_value(new["tags"], "d") == entry["vine_id"]
    assert old["created_at"] < new["created_at"]


def test_keys_db_schema_and_keys(data):
  assert data["schema"] == sampledata.KEYS_SCHEMA
  keys = data["keys"]
  assert len(keys) == data["manifest"]["counts"]["keys_stored"]
  assert len({k[1] for k in keys}) == len(keys)
  formats = {"nsec": 0, "hex": 0}
  for _, pubkey, private in keys:
    formats["nsec" if private.startswith("nsec1") else "hex"] += 1
    assert derive_public_key(parse_private_key(private)) == pubkey
  assert formats["nsec"] and formats["hex"]
  # Every keyed event author has exactly one key row.
  stored = {k[1] for k in keys}
  no_key = data["manifest"]["planted"]["no_signing_key"]["pubkey"]
  assert no_key not in stored
  assert {e["pubkey"] for e in data["events"]} - stored == {no_key}


def test_authors_and_shared_display_names(data):
  manifest = data["manifest"]
  assert manifest["counts"]["authors"] == 100
  planted = manifest["planted"]["no_signing_key"]
  # The key-less author shares a display name with a keyed one: lookups by name are a trap.
  assert planted["display_name"] in {k[0] for k in data["keys"]}
  assert any(re.fullmatch(r".+ \(\d+\)", k[0]) for k in data["keys"])


def test_planted_failures_are_present(data):
  planted = data["manifest"]["planted"]
  rows = {r["vineId"] for r in data["rows"]}
  events = {e["id"]: e for e in data["events"]}
  d_tags = {first_tag_value(e["tags"], "d") for e in data["events"]}
  assert set(planted) == {"missing_openvine_video", "no_signing_key", "forged_signature",
                          "row_without_event", "event_without_row", "event_without_d"}

  miss = planted["missing_openvine_video"]
  assert miss["vine_id"] in rows and miss["event_id"] in events
  assert miss["openvine_id"] not in data["oids"]
  assert miss["expected"] == {"outcome": "dead_letter", "stage": "migrate",
                              "error_class": "permanent"}

  nokey = planted["no_signing_key"]
  assert nokey["vine_ids"] and all(v in rows for v in nokey["vine_ids"])
  assert all(events[i]["pubkey"] == nokey["pubkey"] for i in nokey["event_ids"])
  assert nokey["expected"]["stage"] == "sign"

  forged = planted["forged_signature"]
  event = events[forged["event_id"]]
  assert forged["vine_id"] not in rows
  assert forged["expected"] == {"outcome": "dead_letter", "stage": "read_events",
                                "error_class": "bad_input"}
  assert any(e["sig"] == event["sig"] for i, e in events.items() if i != event["id"])

  assert planted["row_without_event"]["vine_id"] in rows
  assert planted["row_without_event"]["vine_id"] not in d_tags

  orphan = planted["event_without_row"]
  assert orphan["vine_id"] not in rows and orphan["event_id"] in events
  assert orphan["expected"]["outcome"] == "published"

  no_d = events[planted["event_without_d"]["event_id"]]
  assert first_tag_value(no_d["tags"], "d") is None
  assert first_tag_value(no_d["tags"], "vine_id") is None


def test_expected_published_count(data):
  planted = data["manifest"]["planted"]
  rows = {r["vineId"] for r in data["rows"]}
  latest = {}
  for e in data["events"]:
    d = first_tag_value(e["tags"], "d")
    if d is not None and validate_event(e) is None:
      latest[d] = e
  expected = (len(rows & set(latest)) - 1 - len(planted["no_signing_key"]["vine_ids"]) + 1)
  assert data["manifest"]["expected_published"] == expected


def test_deterministic_and_options(tmp_path):
  a = sampledata.generate(str(tmp_path / "a"), 12, seed=3, cdn_base="http://127.0.0.1:9/")
  b = sampledata.generate(str(tmp_path / "b"), 12, seed=3, cdn_base="http://127.0.0.1:9/")
  assert a == b
  for name in ("rows.ndjson", "events.ndjson", "openvine_ids.txt"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  events = ndjson(str(tmp_path / "a" / "events.ndjson"))
  assert all("http://127.0.0.1:9/media/" in json.dumps(e) for e in events)
  clean = sampledata.generate(str(tmp_path / "c"), 12, seed=3, plant_failures=False)
  assert clean["planted"] == {} and clean["expected_published"] == 12
  assert all(validate_event(e) is None for e in ndjson(str(tmp_path / "c" / "events.ndjson")))
  with pytest.raises(ValueError):
    sampledata.generate(str(tmp_path / "d"), 3)


def test_cli(tmp_path, capsys):
  assert sampledata.main(["--out", str(tmp_path), "--n", "20", "--seed", "5"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["counts"]["rows"] == 20
  assert (tmp_path / "manifest.json").exists()
