"""Sample data for the local stack: realistic Vine rows, keys and pre-migration events.

`generate(out_dir, n)` writes what the seed system's three inputs look like
(see shared/reference/vine-data.md):

* `rows.ndjson`: the BigQuery seed query's output, one JSON object per vine, with
  its LEFT JOIN nulls and its ASCII-only hashtag extraction.
* `keys.db`: the seed's SQLite `user_migrations` table (username is the PRIMARY
  KEY, private keys stored as hex or nsec).
* `events.ndjson`: signed kind 32222 events as OpenVine published them, with the
  URL variants seen in the wild and some superseded older versions.
* `openvine_ids.txt`: the video ids the migration emulator can fetch.
* `manifest.json`: counts, the planted failures with the outcome the pipeline
  must reach for each, and `expected_published`.

Every byte is a function of the seed: private keys are drawn from the seeded
generator (not os.urandom, as `generate_private_key` does) and so is the BIP-340
aux randomness of each signature, so keys.db, event ids and signatures repeat.

Run: `python -m devstack.sampledata --out DIR --n 50 [--seed 7]`.
"""

import argparse
import json
import os
import random
import re
import sqlite3
import sys
from typing import Any, Dict, List, Optional

import coincurve

from transforms.nostr.event import Signer, compute_event_id, nsec_encode

try:  # coincurve's cffi layer: lets one keypair sign many events without re-verifying
  from coincurve._libsecp256k1 import ffi as _ffi
  from coincurve._libsecp256k1 import lib as _lib
  from coincurve.context import GLOBAL_CONTEXT as _CONTEXT
except ImportError:  # pragma: no cover - other coincurve layouts use the public API
  _ffi = _lib = _CONTEXT = None

KIND = 32222
DEFAULT_MEDIA_BASE = "https://api.openvine.co"
VINE_START = 1358985600  # 2013-01-24
VINE_END = 1484611200  # 2017-01-17
LOOPS_START = 1396310400  # 2014-04-01: loop counts exist from here
EVENTS_START = 1748736000  # 2025-06-01
EVENTS_END = 1761955199  # 2025-10-31
LOOP_RECORD = 328_000_000
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Leading characters roughly follow time (b9KOOWX7HUx 2013 ... 5002wXwQOKX 2016).
_ID_LEAD = {2013: "bhMO", 2014: "MOei", 2015: "ei5I", 2016: "5IZ0", 2017: "Z0"}
KEYS_SCHEMA = ("CREATE TABLE user_migrations (username TEXT PRIMARY KEY, "
               "nostr_public_key TEXT, nostr_private_key TEXT)")
PLACEHOLDER_TITLES = ("Rescued Vine video", "Untitled")
# The seed query's REGEXP_EXTRACT_ALL(description, r'#\w+') under RE2, whose \w is ASCII.
_BQ_HASHTAG = re.compile(r"#([0-9A-Za-z_]+)")
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_FIRST = ("Jake", "Maria", "Yuki", "Dan", "Brittany", "Marcus", "Sofia", "Chris", "Amanda",
          "Kevin", "Lele", "Nash", "Rudy", "Zach", "Aya", "Omar", "Ivan", "Nong", "Lucía")
_LAST = ("Gomez", "Smith", "Tanaka", "Johnson", "Lee", "Kim", "Petrov", "Haddad", "Ortiz")
_NATIVE = ("김민지", "さくら🌸", "Саша", "سارة", "ปุ๊กกี้", "José Ñúñez", "みゆき", "Дима 🐻", "민준")
_EMOJI = ("😂", "🔥", "❤️", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "🤦🏻‍♂️", "💯", "🙌🏿", "😭", "✌️", "👀",
          "🐶", "🎶", "👩🏾‍🍳")
_TEXT = {
    "en": ("when your mom calls you by your full name", "wait for it", "I can't even",
           "this is so me", "do it for the vine", "me every monday morning", "why are you running",
           "and that's how I met your mother", "road trip", "my dog is better than yours",
           "first day of school", "nobody:", "what are those", "on fleek", "hi"),
    "ja": ("かわいい", "猫が好き", "今日の朝ごはん", "おはよう", "やばい笑", "ねこ動画"),
    "ko": ("오늘 너무 웃겨", "사랑해", "방탄소년단 최고", "귀여워", "ㅋㅋㅋㅋ"),
    "ar": ("ضحك حتى البكاء", "صباح الخير", "هههههه", "يا سلام"),
    "ru": ("лучшее видео", "смешно до слёз", "институт", "привет всем"),
    "th": ("ตลกมาก", "สวัสดีครับ", "น่ารักจัง"),
    "es": ("¡Feliz Año Nuevo!", "qué risa", "mañana otra vez", "jajaja niño", "el señor del café"),
}
_NON_ASCII_LANGS = ("ja", "ko", "ar", "ru", "th", "es")
_TAGS_ASCII = ("#vine", "#funny", "#lol", "#BTS", "#comedy", "#DoItForTheVine", "#MagicHour",
               "#6secondsofme", "#RevineIfYouLaughed", "#dogsofvine", "#Music", "#art",
               "#howto", "#vine_2014", "#LOL")
_TAGS_OTHER = ("#防弾少年団", "#방탄소년단", "#институт", "#かわいい", "#ตลก", "#FelizAñoNuevo",
               "#Año2015", "#niño", "#café", "#Ñandú")


def bigquery_hashtags(description: Optional[str]) -> List[str]:
  """What the seed query's hashtags column holds: ASCII-only `#\\w+`, lower-cased, distinct."""
  seen: List[str] = []
  for tag in _BQ_HASHTAG.findall(description or ""):
    low = tag.lower()
    if low not in seen:
      seen.append(low)
  return seen


def _private_key(rng: random.Random) -> str:
  while True:
    value = rng.getrandbits(256)
    if 0 < value < _SECP256K1_N:  # exactly the scalars libsecp256k1 accepts
      return value.to_bytes(32, "big").hex()


class _AuthorSigner:
  """Signs many events for one author; deterministic with the seeded generator.

  coincurve's `sign_schnorr` rebuilds the keypair and verifies every signature
  (about 80 us of 110); a generator of 100,000 events can skip both, because the
  tests verify every event anyway. The aux randomness of BIP-340 comes from the
  seeded generator, so equal seeds give byte-identical files.
  """

  def __init__(self, priv_hex: str, rng: random.Random):
    self._rng = rng
    self._keypair = None
    if _lib is not None:
      keypair = _ffi.new("secp256k1_keypair *")
      if _lib.secp256k1_keypair_create(_CONTEXT.ctx, keypair, bytes.fromhex(priv_hex)):
        xonly = _ffi.new("secp256k1_xonly_pubkey *")
        out = _ffi.new("unsigned char[32]")
        _lib.secp256k1_keypair_xonly_pub(_CONTEXT.ctx, xonly, _ffi.NULL, keypair)
        _lib.secp256k1_xonly_pubkey_serialize(_CONTEXT.ctx, out, xonly)
        self._keypair = keypair
        self.pubkey = bytes(_ffi.buffer(out, 32)).hex()
    if self._keypair is None:
      self._fallback = coincurve.PrivateKey(bytes.fromhex(priv_hex))
      self.pubkey = Signer(priv_hex).pubkey

  def sign(self, unsigned: Dict[str, Any]) -> Dict[str, Any]:
    event = {"pubkey": self.pubkey, "created_at": unsigned["created_at"],
             "kind": unsigned["kind"], "tags": unsigned["tags"], "content": unsigned["content"]}
    event["id"] = compute_event_id(event)
    msg, aux = bytes.fromhex(event["id"]), self._rng.randbytes(32)
    if self._keypair is None:
      event["sig"] = self._fallback.sign_schnorr(msg, aux).hex()
      return event
    sig = _ffi.new("unsigned char[64]")
    if not _lib.secp256k1_schnorrsig_sign32(_CONTEXT.ctx, sig, msg, self._keypair, aux):
      raise RuntimeError("schnorr signing failed")
    event["sig"] = bytes(_ffi.buffer(sig, 64)).hex()
    return event


def _display_name(rng: random.Random, user_id: int) -> str:
  roll = rng.random()
  if roll < 0.2:
    return "vine_user_%d" % user_id
  if roll < 0.3:
    name = rng.choice(_NATIVE)
    return name if rng.random() < 0.2 else "%s %d" % (name, rng.randrange(1, 10000))
  name = rng.choice(_FIRST)
  if rng.random() < 0.6:
    name += " " + rng.choice(_LAST)
  if rng.random() < 0.85:
    name = rng.choice(("%s %d", "%s_%d", "%s%d")) % (name, rng.randrange(1, 100000))
  if rng.random() < 0.15:
    name += " " + rng.choice(_EMOJI)
  if rng.random() < 0.12:
    name += "  ig: %s_%s" % (name.split()[0].lower(), rng.randrange(10, 999))
  return name


def _caption(rng: random.Random) -> Optional[str]:
  roll = rng.random()
  if roll < 0.005:
    return None
  if roll < 0.04:
    return ""
  if roll < 0.06:
    return rng.choice(PLACEHOLDER_TITLES)
  lang = rng.choice(_NON_ASCII_LANGS) if rng.random() < 0.3 else "en"
  parts = [rng.choice(_TEXT[lang])]
  for _ in range(rng.choice((0, 1, 1, 2))):
    parts.append(rng.choice(_TEXT[lang if rng.random() < 0.8 else "en"]))
  text = " ".join(parts)
  if rng.random() < 0.25:
    text += " " + "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3)))
  if rng.random() < 0.42:
    count = min(14, 1 + int(rng.expovariate(1 / 1.6)))
    for _ in range(count):
      tag = rng.choice(_TAGS_OTHER) if rng.random() < 0.2 else rng.choice(_TAGS_ASCII)
      # Tags are glued to the text as often as not (かわいい#BTS).
      text += ("" if rng.random() < 0.3 else " ") + tag
  if rng.random() < 0.12:
    # Long runs of spaces, usually where a space already was.
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    at = rng.choice(spaces) if spaces else len(text)
    text = text[:at] + " " * rng.randint(3, 12) + text[at:]
  if rng.random() < 0.01:
    text += " \ufffd\ufffd"
  return text[:140]


def _vine_id(rng: random.Random, created: Optional[int], used: set) -> str:
  year = 2013 + (created - VINE_START) * 4 // (VINE_END - VINE_START) if created else 2015
  lead = _ID_LEAD.get(year, ID_ALPHABET)
  while True:
    vid = rng.choice(lead) + "".join(rng.choice(ID_ALPHABET) for _ in range(10))
    if vid not in used:
      used.add(vid)
      return vid


def _openvine_id(rng: random.Random, before: int, used: set) -> str:
  while True:
    ms = (before - rng.randint(60, 86400 * 3)) * 1000 + rng.randrange(1000)
    oid = "%013d-%08x" % (ms, rng.getrandbits(32))
    if oid not in used:
      used.add(oid)
      return oid


def _row(rng: random.Random, vine_id: str, username: str, created: Optional[int],
         description: Optional[str]) -> Dict[str, Any]:
  joined = created is not None  # vine_posts side of the LEFT JOIN present
  roll = rng.random()
  if roll < 0.07:
    loops = None
  elif roll < (0.45 if (created or 0) < LOOPS_START else 0.2):
    loops = 0
  else:
    loops = min(LOOP_RECORD, int(rng.lognormvariate(7.5, 2.2)))
  likes = None if loops is None or rng.random() < 0.05 else round(loops * rng.uniform(0.01, 0.04))
  if joined:
    base = likes or rng.randint(0, 20)
    comments = int(base * rng.uniform(0.02, 0.15))
    reposts = int(base * rng.uniform(0.01, 0.2))
  else:
    comments = reposts = None
  return {
      "vineId": vine_id, "username": username, "description": description, "loops": loops,
      "likes": likes, "comment_count": comments, "repost_count": reposts,
      "created_timestamp": created, "hashtags": bigquery_hashtags(description),
  }


def _event_tags(rng: random.Random, vine_id: Optional[str], title: str, oid: str,
                media_base: str, with_vine_id: bool) -> List[List[str]]:
  url = "%s/media/%s" % (media_base, oid)
  tags = [["d", vine_id]] if vine_id is not None else []
  tags.append(["title", title])
  variant = rng.random()
  if variant < 0.75:
    tags.append(["url", url])
    if variant < 0.15:
      tags.append(["imeta", "url " + url, "m video/mp4", "dim 480x480"])
  elif variant < 0.88:
    tags.append(["r", url])
  else:
    tags.append(["imeta", "url " + url, "m video/mp4", "dim 480x480", "duration 6"])
  tags += [["m", "video/mp4"], ["dim", "480x480"], ["duration", "6"],
           ["thumb", "%s/thumbnails/%s.jpg" % (media_base, oid)],
           ["t", "vine"], ["t", "nostrvine"], ["alt", "Vine video: " + title[:80]],
           ["client", "openvine"]]
  if with_vine_id and vine_id is not None:
    tags.append(["vine_id", vine_id])
  return tags


def _signed(signer: _AuthorSigner, created_at: int, tags, content: str) -> Dict[str, Any]:
  return signer.sign({"created_at": created_at, "kind": KIND, "tags": tags, "content": content})


def generate(out_dir: str, n: int, seed: int = 7, cdn_base: Optional[str] = None,
             plant_failures: bool = True) -> Dict[str, Any]:
  """Writes n sample vines and their keys, events and OpenVine ids into out_dir.

  Args:
    out_dir: directory to write into (created if missing; files are replaced).
    n: number of rows (vines) in rows.ndjson.
    seed: seed of the random generator; equal seeds give byte-identical files.
    cdn_base: base of the media URLs in events (`<base>/media/<openvine id>`, thumbs at
      `<base>/thumbnails/<openvine id>.jpg`); default https://api.openvine.co.
    plant_failures: add the planted failures listed in the manifest.

  Returns:
    The manifest (also written to manifest.json).
  """
  if n < (4 if plant_failures else 1):
    raise ValueError("n must be at least %d" % (4 if plant_failures else 1))
  rng = random.Random(seed)
  media_base = (cdn_base or DEFAULT_MEDIA_BASE).rstrip("/")
  os.makedirs(out_dir, exist_ok=True)

  # Authors: display names are not unique; keys.db usernames must be.
  n_authors = max(2, round(n / 3))
  authors = []
  pubkeys = set()
  for _ in range(n_authors):
    user_id = rng.randrange(10 ** 17, 10 ** 19)
    if authors and rng.random() < 0.05:
      name = rng.choice(authors)["name"]
    else:
      name = _display_name(rng, user_id)
    priv = _private_key(rng)
    signer = _AuthorSigner(priv, rng)
    if signer.pubkey in pubkeys:
      raise RuntimeError("duplicate public key")  # 2^-256; keeps the invariant explicit
    pubkeys.add(signer.pubkey)
    authors.append({"name": name, "priv": priv, "signer": signer, "vines": []})
  no_key_author = authors[-1] if plant_failures else None
  if no_key_author is not None:
    # Shares a display name with a keyed author: a lookup by name would pick the wrong key.
    no_key_author["name"] = authors[0]["name"]

  # Vines: every author gets one, the rest go to a skewed few (no-key author excluded).
  weights = [1.0 / (rank + 1) ** 0.8 for rank in range(n_authors)]
  if no_key_author is not None:
    weights[-1] = 0.0
  owners = list(range(n_authors))[:n] + rng.choices(range(n_authors), weights, k=max(0, n - n_authors))
  used_vids, used_oids = set(), set()
  rows, vines = [], []
  for owner in owners:
    created = rng.randint(VINE_START, VINE_END) if rng.random() > 0.08 else None
    description = _caption(rng)
    vid = _vine_id(rng, created, used_vids)
    author = authors[owner]
    row = _row(rng, vid, author["name"], created, description)
    rows.append(row)
    event_at = rng.randint(EVENTS_START, EVENTS_END)
    vine = {"vine_id": vid, "author": author, "description": description or "",
            "event_at": event_at, "oid": _openvine_id(rng, event_at, used_oids)}
    author["vines"].append(vine)
    vines.append(vine)

  planted: Dict[str, Any] = {}
  events: List[Dict[str, Any]] = []
  superseded = []

  def title_for(vine):
    text = vine["description"].strip()
    if text:
      return text
    return rng.choice(PLACEHOLDER_TITLES + ("Vine by %s" % vine["author"]["name"],))

  def make_event(vine, vine_id, created_at, title=None, with_vine_id=None):
    if with_vine_id is None:
      with_vine_id = rng.random() < 0.3
    tags = _event_tags(rng, vine_id, title or title_for(vine), vine["oid"], media_base,
                       with_vine_id)
    return _signed(vine["author"]["signer"], created_at, tags, vine["description"])

  keyed = [v for v in vines if v["author"] is not no_key_author]
  no_event_vine = missing_oid_vine = None
  if plant_failures:
    no_event_vine, missing_oid_vine = keyed[-1], keyed[-2]
  for vine in vines:
    if vine is no_event_vine:
      continue
    event = make_event(vine, vine["vine_id"], vine["event_at"])
    vine["event"] = event
    events.append(event)
    if vine is not missing_oid_vine and vine["author"] is not no_key_author \
        and rng.random() < 0.02:
      older_at = vine["event_at"] - rng.choice((1, 60, 86400, 86400 * 30))
      old = make_event(vine, vine["vine_id"], older_at, title="Rescued Vine video")
      events.append(old)
      superseded.append({"vine_id": vine["vine_id"], "event_id": old["id"],
                         "latest_event_id": event["id"]})

  expected_published = sum(1 for v in vines if "event" in v)
  if plant_failures:
    planted["row_without_event"] = {
        "vine_id": no_event_vine["vine_id"],
        "expected": {"outcome": "skipped", "reason": "no_event"}}
    planted["missing_openvine_video"] = {
        "vine_id": missing_oid_vine["vine_id"], "openvine_id": missing_oid_vine["oid"],
        "event_id": missing_oid_vine["event"]["id"],
        "expected": {"outcome": "dead_letter", "stage": "migrate", "error_class": "permanent"}}
    planted["no_signing_key"] = {
        "pubkey": no_key_author["signer"].pubkey, "display_name": no_key_author["name"],
        "vine_ids": [v["vine_id"] for v in no_key_author["vines"]],
        "event_ids": [v["event"]["id"] for v in no_key_author["vines"]],
        "expected": {"outcome": "dead_letter", "stage": "sign", "error_class": "permanent",
                     "error": "no_signing_key"}}
    expected_published -= 1 + len(no_key_author["vines"])

    # Extra events with no row: each a fresh vine id owned by a keyed author.
    host = keyed[0]["author"]

    def extra_vine(description):
      event_at = rng.randint(EVENTS_START, EVENTS_END)
      return {"vine_id": _vine_id(rng, None, used_vids), "author": host,
              "description": description, "event_at": event_at,
              "oid": _openvine_id(rng, event_at, used_oids)}

    orphan = extra_vine("no row for this one #orphan")
    orphan_event = make_event(orphan, orphan["vine_id"], orphan["event_at"])
    events.append(orphan_event)
    planted["event_without_row"] = {
        "vine_id": orphan["vine_id"], "event_id": orphan_event["id"],
        "expected": {"outcome": "published", "counter": "metadata_missing"}}
    expected_published += 1

    forged = extra_vine("forged signature")
    forged_event = make_event(forged, forged["vine_id"], forged["event_at"])
    forged_event["sig"] = orphan_event["sig"]  # a real signature, of another event
    events.append(forged_event)
    planted["forged_signature"] = {
        "vine_id": forged["vine_id"], "event_id": forged_event["id"],
        "expected": {"outcome": "dead_letter", "stage": "read_events", "error_class": "bad_input"}}

    no_d = extra_vine("an event without a d tag")
    no_d_event = make_event(no_d, None, no_d["event_at"], with_vine_id=False)
    events.append(no_d_event)
    planted["event_without_d"] = {
        "event_id": no_d_event["id"], "openvine_id": no_d["oid"],
        "expected": {"outcome": "skipped", "reason": "no_vine_id"}}
    assert compute_event_id(forged_event) == forged_event["id"]

  rng.shuffle(events)
  missing = {missing_oid_vine["oid"]} if missing_oid_vine else set()
  stored_oids = sorted(used_oids - missing)
  # A few videos in storage that no event points at, as in the real bucket.
  for _ in range(max(1, n // 100)):
    stored_oids.append(_openvine_id(rng, rng.randint(EVENTS_START, EVENTS_END), used_oids))

  _write_ndjson(os.path.join(out_dir, "rows.ndjson"), rows)
  _write_ndjson(os.path.join(out_dir, "events.ndjson"), events)
  with open(os.path.join(out_dir, "openvine_ids.txt"), "w", encoding="utf-8") as f:
    f.write("".join(oid + "\n" for oid in stored_oids))
  stored_keys = _write_keys(os.path.join(out_dir, "keys.db"), rng,
                            [a for a in authors if a is not no_key_author])

  manifest = {
      "seed": seed, "n": n, "media_base": media_base, "kind": KIND,
      "files": {"rows": "rows.ndjson", "events": "events.ndjson", "keys": "keys.db",
                "openvine_ids": "openvine_ids.txt"},
      "counts": {
          "rows": len(rows), "events": len(events), "authors": n_authors,
          "keys_stored": stored_keys, "openvine_ids": len(stored_oids),
          "superseded_events": len(superseded),
          "rows_with_null_created": sum(1 for r in rows if r["created_timestamp"] is None),
      },
      "expected_published": expected_published,
      "planted": planted,
      "superseded": superseded,
  }
  with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, ensure_ascii=False, indent=1)
  return manifest


def _write_ndjson(path: str, records) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
      f.write("\n")


def _write_keys(path: str, rng: random.Random, authors) -> int:
  """Writes the seed's user_migrations table; returns the number of rows."""
  if os.path.exists(path):
    os.remove(path)
  taken = set()
  records = []
  for author in authors:
    username, k = author["name"], 2
    while username in taken:  # username is the PRIMARY KEY: disambiguate shared names
      username = "%s (%d)" % (author["name"], k)
      k += 1
    taken.add(username)
    priv = nsec_encode(author["priv"]) if rng.random() < 0.25 else author["priv"]
    records.append((username, author["signer"].pubkey, priv))
  with sqlite3.connect(path) as conn:
    conn.execute(KEYS_SCHEMA)
    conn.executemany("INSERT INTO user_migrations VALUES (?, ?, ?)", records)
  conn.close()
  return len(records)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--n", type=int, default=50, help="number of vines (rows)")
  parser.add_argument("--seed", type=int, default=7, help="random seed")
  parser.add_argument("--cdn-base", default=None, help="media URL base in events")
  parser.add_argument("--no-failures", action="store_true", help="do not plant failures")
  args = parser.parse_args(argv)
  manifest = generate(args.out, args.n, seed=args.seed, cdn_base=args.cdn_base,
                      plant_failures=not args.no_failures)
  print(json.dumps({"counts": manifest["counts"],
                    "expected_published": manifest["expected_published"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
