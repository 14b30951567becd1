"""The hostile input corpus: `events()`, `rows()` and `keys()`, one record per case.

tests/integration/test_hostile_input.py builds its inputs from these functions (and
holds the expected outcome of every case); to look at the corpus as files:

    .venv/bin/python -m tests.support.hostile.make_corpus --out /tmp/hostile

writes events.ndjson, rows.ndjson and keys.ndjson there. Every record is
`{"case": <name>, ...}` with the input under "event", "row" or "raw_line" (a line
that is not JSON, used as it is), or the columns of a keys-database row. Generated
rather than stored: two cases carry 200 KB of text, and signatures must match.

The authors' keys are derived from public strings (sha256 of "vine-migration hostile
author <name>"): test keys, worthless anywhere else. Signatures use deterministic aux
randomness, so re-running this script rewrites identical files.
"""

import hashlib
import json
import os
from typing import Any, Dict, List

import coincurve

from transforms.nostr.event import compute_event_id, npub_encode, nsec_encode

KIND = 32222
CREATED_AT = 1750000000  # 2025-06-15: when OpenVine published its events
FUTURE = 4102444800  # 2100-01-01
OPENVINE = "https://api.openvine.co/media/"


def private_key(name: str) -> str:
  return hashlib.sha256(("vine-migration hostile author %s" % name).encode()).hexdigest()


def public_key(name: str) -> str:
  return coincurve.PrivateKey(bytes.fromhex(private_key(name))).public_key_xonly.format().hex()


def _sign_id(name: str, event_id: str) -> str:
  key = coincurve.PrivateKey(bytes.fromhex(private_key(name)))
  aux = hashlib.sha256(bytes.fromhex(event_id)).digest()
  return key.sign_schnorr(bytes.fromhex(event_id), aux).hex()


def sign(name: str, tags: List[List[Any]], content: str = "a vine",
         created_at: Any = CREATED_AT, kind: Any = KIND, pubkey: str = None) -> Dict[str, Any]:
  """A signed event; the id is computed the JS way (ensure_ascii) when Python's cannot."""
  event = {"pubkey": pubkey or public_key(name), "created_at": created_at, "kind": kind,
           "tags": tags, "content": content}
  try:
    event["id"] = compute_event_id(event)
  except (UnicodeEncodeError, TypeError):
    raw = json.dumps([0, event["pubkey"], created_at, kind, tags, content],
                     separators=(",", ":"), default=str)
    event["id"] = hashlib.sha256(raw.encode()).hexdigest()
  event["sig"] = _sign_id(name, event["id"])
  return event


def video_tags(vine_id: str, openvine_id: str = None, title: str = "A vine") -> List[List[str]]:
  """The tags OpenVine gave a video event; the OpenVine id derives from the vine id."""
  digest = hashlib.md5(vine_id.encode()).hexdigest()
  oid = openvine_id or "1751085%06d-%s" % (int(digest[:5], 16) % 1000000, digest[5:13])
  return [["d", vine_id], ["title", title], ["url", OPENVINE + oid], ["m", "video/mp4"],
          ["dim", "480x480"], ["duration", "6"], ["t", "vine"], ["client", "openvine"]]


def events() -> List[Dict[str, Any]]:
  out = []

  def add(case, event=None, raw_line=None):
    out.append({"case": case, "event": event} if raw_line is None
               else {"case": case, "raw_line": raw_line})

  forged = sign("alice", video_tags("hostileE001"))
  forged["content"] = "altered after signing"
  add("forged_id", forged)
  bad_sig = sign("alice", video_tags("hostileE002"))
  bad_sig["sig"] = sign("alice", video_tags("hostileE902"))["sig"]
  add("bad_signature", bad_sig)
  add("missing_d_no_vine_id", sign("alice", video_tags("hostileE003")[1:]))
  add("missing_d_vine_id_tag", sign("alice", video_tags("hostileE004")[1:]
                                    + [["vine_id", "hostileE004"]]))
  add("duplicated_d", sign("alice", [["d", "hostileE005"], ["d", "hostileE905"]]
                           + video_tags("hostileE005")[1:]))
  add("d_not_a_vine_id", sign("alice", [["d", "openvine_17"]] + video_tags("x")[1:]))
  add("d_path_traversal", sign("alice", [["d", "../../admin"]] + video_tags("y")[1:]))
  add("d_trailing_newline", sign("alice", [["d", "hostileE008\n"]] + video_tags("z")[1:]))
  add("unknown_tags", sign("alice", video_tags("hostileE009") + [
      ["x-custom", "1"], ["proxy", "https://example.com/x", "web"], ["p", public_key("bob")],
      ["nonce", "1", "20"]]))
  add("tag_value_int", sign("alice", video_tags("hostileE010") + [["loops", 5]]))
  add("tag_empty", sign("alice", video_tags("hostileE011") + [[]]))
  add("tag_value_null", sign("alice", video_tags("hostileE012") + [["title", None]]))
  add("created_at_string", sign("alice", video_tags("hostileE013"), created_at=str(CREATED_AT)))
  add("kind_not_32222", sign("alice", video_tags("hostileE014"), kind=34236))
  add("content_lone_surrogate", sign("alice", video_tags("hostileE015"), content="a\ud800b"))
  add("content_c0_controls", sign("alice", video_tags("hostileE016"),
                                  content="bell\x07 escape\x1b[31m red"))
  add("title_c0_control", sign("alice", [["d", "hostileE017"], ["title", "nul\x00here"]]
                               + video_tags("hostileE017")[2:]))
  add("caption_200kb_in_event", sign("alice", video_tags("hostileE018"),
                                     content="long caption " + "ä" * 100000))
  add("title_5kb", sign("alice", [["d", "hostileE019"], ["title", "T" * 5000]]
                        + video_tags("hostileE019")[2:]))
  add("created_at_future", sign("alice", video_tags("hostileE020"), created_at=FUTURE))
  add("expiration_expired", sign("alice", video_tags("hostileE021")
                                 + [["expiration", "1700000000"]]))
  add("expiration_future", sign("alice", video_tags("hostileE022")
                                + [["expiration", str(FUTURE)]]))
  add("openvine_id_percent", sign("alice", video_tags("hostileE023", "..%2F..%2Fadmin")))
  add("openvine_id_dotdot", sign("alice", [["d", "hostileE024"],
                                           ["url", OPENVINE + "../admin"]]))
  add("openvine_id_unicode", sign("alice", video_tags("hostileE025", "vidéo-1")))
  good_oid = "1751085897025-0fd41442"
  add("openvine_id_first_bad_then_good", sign("alice", [
      ["d", "hostileE026"], ["r", OPENVINE + "..;/x"],
      ["imeta", "url " + OPENVINE + good_oid, "m video/mp4"]]))
  add("no_openvine_url", sign("alice", [["d", "hostileE027"],
                                        ["url", "https://example.com/video.mp4"]]))
  add("pubkey_trailing_newline", sign("alice", video_tags("hostileE028"),
                                      pubkey=public_key("alice") + "\n"))
  upper = sign("alice", video_tags("hostileE029"))
  upper["id"] = upper["id"].upper()
  add("id_uppercase", upper)
  tags_object = sign("alice", video_tags("hostileE030"))
  tags_object["tags"] = {"d": "hostileE030"}
  add("tags_not_a_list", tags_object)
  add("line_not_json", raw_line='{"id": "abc", "kind": 32222, "tags": [')
  out.append({"case": "line_not_utf8", "raw_line": '{"id": "caf\xe9 \xff"}', "encoding": "latin-1"})
  add("same_vine_two_addresses_canonical", sign("alice", video_tags("hostileE031")))
  add("same_vine_two_addresses_no_d", sign("alice", video_tags("hostileE031")[1:] + [
      ["vine_id", "hostileE031"]], created_at=CREATED_AT + 5))
  # Authors whose keys are hostile (keys.ndjson), and a pair sharing one username.
  for name, vine in (("carol", "hostileK001"), ("dave", "hostileK002"), ("erin", "hostileK003"),
                     ("alice", "hostileK004"), ("bob", "hostileK005"), ("frank", "hostileK006")):
    add("event_of_" + name, sign(name, video_tags(vine)))
  # Plain events for the row cases.
  for i in range(1, 16):
    add("event_for_row_%d" % i, sign("alice", video_tags("hostileR%03d" % i)))
  return out


def rows() -> List[Dict[str, Any]]:
  def row(vine_id, **fields):
    base = {"vineId": vine_id, "username": "Hostile Row", "description": "a caption",
            "loops": 10, "likes": 1, "comment_count": 0, "repost_count": 0,
            "created_timestamp": 1400000000, "hashtags": []}
    base.update(fields)
    return base

  hashtags = " ".join("#tag%d" % i for i in range(5000))
  return [
      {"case": "null_counts", "row": row("hostileR001", loops=None, likes=None,
                                         comment_count=None, repost_count=None)},
      {"case": "negative_counts", "row": row("hostileR002", loops=-5, likes=-1,
                                             comment_count=-2, repost_count=-9)},
      {"case": "non_numeric_counts", "row": row("hostileR003", loops="12abc", likes=1.5,
                                                comment_count=True, repost_count=[3])},
      {"case": "infinite_and_nan_counts", "row": row("hostileR004", loops=float("inf"),
                                                     likes=float("nan"), comment_count="1e5",
                                                     repost_count="NaN")},
      {"case": "null_timestamp", "row": row("hostileR005", created_timestamp=None)},
      {"case": "timestamp_before_2012", "row": row("hostileR006", created_timestamp=1000000000)},
      {"case": "timestamp_after_2017", "row": row("hostileR007", created_timestamp=1700000000)},
      {"case": "timestamp_not_a_number", "row": row("hostileR008",
                                                    created_timestamp="2014-05-01T00:00:00Z")},
      {"case": "hashtags_punctuation_only", "row": row(
          "hostileR009", description="look #!!! #... #?? #_ #", hashtags=["!!!", "", "#", "  ",
                                                                          "ok", "#"])},
      {"case": "description_controls_and_surrogate", "row": row(
          "hostileR010", description="a\x00b\x1fc\ud800d\te", username="us\x07er")},
      {"case": "username_3kb", "row": row("hostileR011", username="U" * 3000)},
      {"case": "caption_200kb_with_5000_hashtags", "row": row("hostileR012",
                                                              description=hashtags * 6)},
      {"case": "duplicate_rows_a", "row": row("hostileR013", loops=1)},
      {"case": "duplicate_rows_b", "row": row("hostileR013", loops=2)},
      {"case": "vine_id_slash", "row": row("abc/def/ghi")},
      {"case": "vine_id_dotdot", "row": row("../../../ab")},
      {"case": "vine_id_question_mark", "row": row("abcdefghij?")},
      {"case": "vine_id_hash", "row": row("abcdefghij#")},
      {"case": "vine_id_space", "row": row("abcde fghij")},
      {"case": "vine_id_unicode", "row": row("abcdéfghijk")},
      {"case": "vine_id_trailing_newline", "row": row("hostileR014\n")},
      {"case": "vine_id_null", "row": row(None)},
      {"case": "vine_id_number", "row": row(12345678901)},
      {"case": "row_not_an_object", "row": [1, 2, 3]},
      {"case": "row_not_json", "raw_line": '{"vineId": "hostileR015", "loops": '},
      {"case": "row_not_utf8", "raw_line": '{"vineId": "caf\xe9\xff"}', "encoding": "latin-1"},
  ]


def keys() -> List[Dict[str, Any]]:
  """Rows of a keys database whose schema lost its PRIMARY KEY (duplicate usernames)."""
  return [
      {"case": "good_hex_key", "username": "alice", "nostr_public_key": public_key("alice"),
       "nostr_private_key": private_key("alice")},
      {"case": "duplicate_username", "username": "alice", "nostr_public_key": public_key("bob"),
       "nostr_private_key": private_key("bob")},
      {"case": "wrong_length_key", "username": "carol", "nostr_public_key": public_key("carol"),
       "nostr_private_key": private_key("carol")[:40]},
      {"case": "npub_as_private_key", "username": "dave", "nostr_public_key": public_key("dave"),
       "nostr_private_key": npub_encode(public_key("dave"))},
      {"case": "mismatched_key", "username": "erin", "nostr_public_key": public_key("erin"),
       "nostr_private_key": private_key("alice")},
      {"case": "nsec_key", "username": "frank", "nostr_public_key": npub_encode(public_key("frank")),
       "nostr_private_key": nsec_encode(private_key("frank"))},
  ]


def _write(path: str, records: List[Dict[str, Any]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      # ensure_ascii: lone surrogates and controls stay readable escapes in the file.
      f.write(json.dumps(record, sort_keys=True) + "\n")


def main(argv=None) -> None:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory to write the NDJSON files to")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  _write(os.path.join(args.out, "events.ndjson"), events())
  _write(os.path.join(args.out, "rows.ndjson"), rows())
  _write(os.path.join(args.out, "keys.ndjson"), keys())


if __name__ == "__main__":
  main()
