"""Hostile input through the whole pipeline: a clear dead letter, a named skip or a clean event.

The corpus is tests/support/hostile/make_corpus.py (events, rows and keys-database rows, one
record per case). Events a real relay takes are published to the relay first; the
rest (bad ids and signatures, text serialisers disagree on, an expired event, 200 KB)
reach the pipeline through --events-file, as a relay export would. EXPECTED below
states the outcome of every case; the test asserts each one, the accounting, and
that every event on the relay afterwards is valid and clean.

Decisions recorded here:
* created_at in the future: a replacement must have a later created_at, and relays
  refuse events dated more than ~15 minutes ahead, so an event beyond that cannot be
  replaced: dead letter `bad_input` at read_events (clamping to now would publish a
  version every relay ignores).
* expired (or any) `expiration`: never carried over. The migrated event is the
  permanent record, and compliant relays drop an expired event at once (the test
  relay refuses it: "blocked: event is expired").
* events whose text serialisers disagree on (lone surrogates, C0 controls other than
  tab/newline/return): their id cannot be checked unambiguously, so they are bad_input
  like a forged id; the same characters in a row (caption, username) are cleaned.
* unknown tags of the old event are not carried over (the seed's tag list is built
  afresh); content over 16 KiB and tag values over 1,024 bytes are trimmed with "…".
"""

import json
import os
import re
import sqlite3

import pytest

from devstack.stack import LocalStack, publish_events
from tests.support.hostile import make_corpus
from tests.support.runs import read_ndjson, run_pipeline
from transforms.clients.relay.reader import fetch_events
from transforms.core.text import json_safe
from transforms.io.relay_events import event_problem
from transforms.nostr.event import first_tag_value, validate_event
from transforms.nostr.video_event import (
  MAX_CONTENT_BYTES,
  MAX_EVENT_BYTES,
  MAX_HASHTAGS,
  MAX_TAG_BYTES,
)

pytestmark = pytest.mark.integration


def dead(stage, error_class, fragment):
  return {"outcome": "dead_letter", "stage": stage, "error_class": error_class,
          "error": fragment}


def skip(reason):
  return {"outcome": "skipped", "reason": reason}


def published(**checks):
  """checks: tags {name: [values...]} (every tag of that name), absent [names],
  content (exact), trimmed [names] (value cut to 1,024 bytes with "…"),
  content_max (bytes), author (corpus author name)."""
  return {"outcome": "published", **checks}


DUPLICATE = {"outcome": "duplicate"}  # absorbed: another event of the author wins the vine

NO_METADATA = ("loops", "likes", "comments", "reposts")
ELLIPSIS = "\u2026"

# Every case of the corpus and its expected outcome.
EXPECTED = {
    # -- events --------------------------------------------------------------
    "forged_id": dead("read_events", "bad_input", "id does not match"),
    "bad_signature": dead("read_events", "bad_input", "signature does not verify"),
    "missing_d_no_vine_id": skip("no_vine_id"),
    "missing_d_vine_id_tag": published(tags={"d": [["hostileE004"]],
                                             "vine_id": [["hostileE004"]]}),
    "duplicated_d": published(tags={"d": [["hostileE005"]]}),
    "d_not_a_vine_id": skip("no_vine_id"),
    "d_path_traversal": skip("no_vine_id"),
    "d_trailing_newline": skip("no_vine_id"),
    "unknown_tags": published(absent=["x-custom", "proxy", "p", "nonce"]),
    "tag_value_int": dead("read_events", "bad_input", "tag values must be non-empty lists"),
    "tag_empty": dead("read_events", "bad_input", "tag values must be non-empty lists"),
    "tag_value_null": dead("read_events", "bad_input", "tag values must be non-empty lists"),
    "created_at_string": dead("read_events", "bad_input", "'created_at' is not an integer"),
    "kind_not_32222": dead("read_events", "bad_input", "kind 34236 is not 32222"),
    "content_lone_surrogate": dead("read_events", "bad_input", "content holds a lone surrogate"),
    "content_c0_controls": dead("read_events", "bad_input", "content holds a C0 control"),
    "title_c0_control": dead("read_events", "bad_input", "tag 'title' holds a C0 control"),
    "caption_200kb_in_event": published(content_max=MAX_CONTENT_BYTES),
    "title_5kb": published(trimmed=["title"]),
    "created_at_future": dead("read_events", "bad_input", "s in the future"),
    "expiration_expired": published(absent=["expiration"]),
    "expiration_future": published(absent=["expiration"]),
    "openvine_id_percent": dead("migrate", "bad_input", "openvine id '..%2F..%2Fadmin' refused"),
    "openvine_id_dotdot": dead("migrate", "bad_input", "openvine id '..' refused"),
    "openvine_id_unicode": dead("migrate", "bad_input", "refused"),
    "openvine_id_first_bad_then_good": published(),
    "no_openvine_url": skip("no_openvine_id"),
    "pubkey_trailing_newline": dead("read_events", "bad_input", "lowercase hex"),
    "id_uppercase": dead("read_events", "bad_input", "not 64 lowercase hex"),
    "tags_not_a_list": dead("read_events", "bad_input", "'tags' missing or not a list"),
    "line_not_json": dead("read_events", "bad_input", "events file line is not JSON"),
    "line_not_utf8": dead("read_events", "bad_input", "events file line is not UTF-8"),
    "same_vine_two_addresses_canonical": published(tags={"d": [["hostileE031"]]}),
    "same_vine_two_addresses_no_d": DUPLICATE,
    # -- keys database -------------------------------------------------------
    "event_of_carol": dead("sign", "permanent", "no_signing_key"),  # key of the wrong length
    "event_of_dave": dead("sign", "permanent", "no_signing_key"),  # npub as private key
    "event_of_erin": dead("sign", "permanent", "no_signing_key"),  # key of another author
    "event_of_alice": published(author="alice"),
    "event_of_bob": published(author="bob"),  # shares alice's username
    "event_of_frank": published(author="frank"),  # nsec private key, npub public key
    # -- rows (joined to a plain event of the same vine id) ------------------
    "null_counts": published(absent=list(NO_METADATA), tags={"published_at": [["1400000000"]]}),
    "negative_counts": published(absent=list(NO_METADATA)),
    "non_numeric_counts": published(absent=list(NO_METADATA)),
    "infinite_and_nan_counts": published(absent=list(NO_METADATA)),
    "null_timestamp": published(absent=["published_at"], tags={"loops": [["10"]]}),
    "timestamp_before_2012": published(absent=["published_at"]),
    "timestamp_after_2017": published(absent=["published_at"]),
    "timestamp_not_a_number": published(absent=["published_at"]),
    "hashtags_punctuation_only": published(tags={"t": [["ok"]]}),
    "description_controls_and_surrogate": published(content="abc\ufffdd\te",
                                                    tags={"username": [["user"]]}),
    "username_3kb": published(trimmed=["username"]),
    "caption_200kb_with_5000_hashtags": published(content_max=MAX_CONTENT_BYTES),
    "duplicate_rows_a": published(tags={"loops": [["1"]]}),
    "duplicate_rows_b": published(tags={"loops": [["1"]]}),  # one row wins, deterministically
    "vine_id_slash": dead("read_rows", "bad_input", "vineId is not an 11-character Vine id"),
    "vine_id_dotdot": dead("read_rows", "bad_input", "vineId is not an 11-character Vine id"),
    "vine_id_question_mark": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_hash": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_space": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_unicode": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_trailing_newline": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_null": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "vine_id_number": dead("read_rows", "bad_input", "not an 11-character Vine id"),
    "row_not_an_object": dead("read_rows", "bad_input", "row is not an object"),
    "row_not_json": dead("read_rows", "bad_input", "row is not valid JSON"),
    "row_not_utf8": dead("read_rows", "bad_input", "row is not valid UTF-8"),
}
# Plain events whose vine's row is a case above: published, with or without metadata.
EXPECTED.update({"event_for_row_%d" % i: published() for i in range(1, 16)})

# Tags a republished event may carry (the seed's list).
ALLOWED_TAGS = {"d", "title", "url", "streaming", "r", "thumb", "preview", "vine_id",
                "stream_uid", "published_at", "loops", "likes", "comments", "reposts",
                "username", "t", "client", "migration", "imeta"}
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


# ---------------------------------------------------------------------------
# The run.


def _raw(case):
  return case["raw_line"].encode(case.get("encoding", "utf-8")) + b"\n"


def _as_read(case):
  """What the pipeline makes of a raw line: the text, or its not-UTF-8 rendering."""
  data = _raw(case)[:-1]
  try:
    return data.decode("utf-8"), "not JSON"
  except UnicodeDecodeError:
    return data.decode("utf-8", "backslashreplace"), "not UTF-8"


def _has_d(event):
  return isinstance(event.get("tags"), list) and any(
      isinstance(t, list) and t and t[0] == "d" for t in event["tags"])


def _write_keys_db(path, stack):
  """The stack's keys plus the hostile rows, in a table whose username is not unique."""
  with sqlite3.connect(stack.path("keys.db")) as src:
    base = src.execute("SELECT username, nostr_public_key, nostr_private_key "
                       "FROM user_migrations").fetchall()
  src.close()
  with sqlite3.connect(path) as conn:
    conn.execute("CREATE TABLE user_migrations (username TEXT, nostr_public_key TEXT, "
                 "nostr_private_key TEXT)")
    conn.executemany("INSERT INTO user_migrations VALUES (?, ?, ?)", base + [
        (k["username"], k["nostr_public_key"], k["nostr_private_key"])
        for k in make_corpus.keys()])
  conn.close()
  os.chmod(path, 0o600)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
  work = tmp_path_factory.mktemp("hostile")
  with LocalStack(str(work / "stack"), n_vines=4, seed=51, plant_failures=False) as stack:
    stack.emulator.configure(accept_any_openvine_id=True)
    events, rows = make_corpus.events(), make_corpus.rows()
    # What the relay takes goes to the relay; the rest comes from an export file.
    candidates = [c["event"] for c in events if "event" in c and _has_d(c["event"])
                  and event_problem(c["event"]) is None]
    publish_events(stack.relay_urls[0], list(candidates))
    on_relay = {e["id"] for e in stack.relay_events()}
    with open(work / "events.ndjson", "wb") as f:
      for case in events:
        if "raw_line" in case:
          f.write(_raw(case))
        elif not (isinstance(case["event"].get("id"), str) and case["event"]["id"] in on_relay):
          f.write(json.dumps(case["event"]).encode() + b"\n")
    with open(work / "rows.ndjson", "wb") as f:
      f.write(open(stack.path("rows.ndjson"), "rb").read())
      for case in rows:
        f.write(_raw(case) if "raw_line" in case else json.dumps(case["row"]).encode() + b"\n")
    _write_keys_db(str(work / "keys.db"), stack)
    code, run_dir, summary = run_pipeline(stack, work / "out", [
        "--events-file", str(work / "events.ndjson"), "--rows", str(work / "rows.ndjson"),
        "--keys-db", str(work / "keys.db")])
    outputs = {name: read_ndjson(os.path.join(run_dir, name + ".ndjson"))
               for name in ("dead_letters", "skipped", "published")}
    relay = {e["id"]: e for e in fetch_events(stack.relay_urls[0], {"kinds": [32222]})}
    yield {"code": code, "summary": summary, "out": outputs, "relay": relay, "stack": stack,
           "events": events, "rows": rows, "on_relay": on_relay,
           "calls": stack.emulator.stats()["migrate_calls"]}


def _outcome_of_event(run, event):
  """(kind, record) of a corpus event: by payload at read_events, else by event id."""
  for letter in run["out"]["dead_letters"]:
    payload = json.loads(letter["payload"]) if letter["payload"] else {}
    if letter["stage"] == "read_events" and payload.get("event") == event:
      return "dead_letter", letter
  event_id = event.get("id") if isinstance(event, dict) else None
  for letter in run["out"]["dead_letters"]:
    if letter["stage"] != "read_events" and letter["event_id"] == event_id:
      return "dead_letter", letter
  for record in run["out"]["skipped"]:
    if record["event_id"] == event_id:
      return "skipped", record
  for record in run["out"]["published"]:
    if record["previous_event_id"] == event_id:
      return "published", record
  return "duplicate", None


def _outcome_of_row(run, row):
  for letter in run["out"]["dead_letters"]:
    if letter["stage"] == "read_rows" and json.loads(letter["payload"])["row"] == row:
      return "dead_letter", letter
  for record in run["out"]["published"]:
    if isinstance(row, dict) and record["vine_id"] == row.get("vineId"):
      return "published", record
  return "missing", None


def _cases(run):
  for case in run["events"]:
    event = case.get("event")
    if event is None:
      text, reason = _as_read(case)
      event = {"unparseable_line": text, "reason": reason}
    yield case["case"], _outcome_of_event(run, json_safe(event))
  for case in run["rows"]:
    row = case["row"] if "row" in case else _as_read(case)[0]
    yield case["case"], _outcome_of_row(run, json_safe(row))


def _check_published(name, want, record, run):
  event = run["relay"].get(record["event_id"])
  assert event is not None, "%s: the published event is not on the relay" % name
  tags = {}
  for tag in event["tags"]:
    tags.setdefault(tag[0], []).append(tag[1:])
  for tag_name, values in want.get("tags", {}).items():
    assert tags.get(tag_name) == values, (name, tag_name, tags.get(tag_name))
  for tag_name in want.get("absent", ()):
    assert tag_name not in tags, (name, tag_name)
  if "content" in want:
    assert event["content"] == want["content"], name
  for tag_name in want.get("trimmed", ()):
    value = tags[tag_name][0][0]
    assert value.endswith(ELLIPSIS) and len(value.encode()) <= MAX_TAG_BYTES, name
  if "content_max" in want:
    size = len(event["content"].encode())
    assert size <= want["content_max"] and event["content"].endswith(ELLIPSIS), (name, size)
  if "author" in want:
    assert event["pubkey"] == make_corpus.public_key(want["author"]), name


def test_every_hostile_case_has_its_stated_outcome(hostile_run):
  run = hostile_run
  seen = set()
  for name, (kind, record) in _cases(run):
    assert name in EXPECTED, "case %s has no stated outcome" % name
    seen.add(name)
    want = EXPECTED[name]
    assert kind == want["outcome"], (name, kind, record)
    if kind == "dead_letter":
      assert (record["stage"], record["error_class"]) == (want["stage"], want["error_class"]), (
          name, record)
      assert want["error"] in record["error"], (name, record["error"])
      assert record["payload"] and record["run_id"]
    elif kind == "skipped":
      assert record["reason"] == want["reason"], (name, record)
    elif kind == "published":
      _check_published(name, want, record, run)
  assert seen == set(EXPECTED)


def test_the_accounting_adds_up(hostile_run):
  run = hostile_run
  summary = run["summary"]
  assert run["code"] == 0 and summary["balanced"], summary
  # A unit of work per event case (but the absorbed duplicate) and per unusable row;
  # usable rows join an event's unit. Plus the stack's own four vines.
  units = sum(1 for c in run["events"] if EXPECTED[c["case"]]["outcome"] != "duplicate")
  units += sum(1 for c in run["rows"] if EXPECTED[c["case"]]["outcome"] == "dead_letter")
  assert summary["vines_in"] == 4 + units
  counters = summary["counters"]
  assert counters["duplicate_events"] == 1 and counters["duplicate_rows"] == 1


def test_nothing_hostile_reaches_the_api_or_a_relay(hostile_run):
  run = hostile_run
  # Only real Vine ids were ever sent to the migration API.
  assert run["calls"] and all(re.fullmatch(r"[0-9A-Za-z]{11}", v) for v in run["calls"])
  refused = {"hostileE023", "hostileE024", "hostileE025"}  # odd OpenVine ids
  assert not refused & set(run["calls"]), "a refused OpenVine id reached the API"
  republished = {r["event_id"] for r in run["out"]["published"]}
  for event in run["relay"].values():
    assert validate_event(event) is None
    if event["id"] not in republished:
      continue
    names = {t[0] for t in event["tags"]}
    assert names <= ALLOWED_TAGS, names - ALLOWED_TAGS
    assert sum(1 for t in event["tags"] if t[0] == "d") == 1
    assert sum(1 for t in event["tags"] if t[0] == "t") <= MAX_HASHTAGS
    for tag in event["tags"]:
      for value in tag:
        assert len(value.encode()) <= MAX_TAG_BYTES and not _BAD_TEXT.search(value)
    assert not _BAD_TEXT.search(event["content"])
    assert len(json.dumps(event, ensure_ascii=False).encode()) <= MAX_EVENT_BYTES
  # The relay holds one version per address: nothing was published twice.
  addresses = [(e["pubkey"], first_tag_value(e["tags"], "d")) for e in run["relay"].values()]
  assert len(addresses) == len(set(addresses))
