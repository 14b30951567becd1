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

What each vine, row and event looks like is `devstack.sample_corpus`; this module
puts them together, plants the failures and writes the files.

Every byte is a function of the seed: private keys are drawn from the seeded
generator (not os.urandom, as `generate_private_key` does) and so is the BIP-340
aux randomness of each signature, so keys.db, event ids and signatures repeat.

Run: `python -m devstack.sampledata --out DIR --n 50 [--seed 7]`.
"""

import argparse
import json
import os
import random
import sqlite3
import sys
from typing import Any, Dict, List, Optional

import coincurve

from devstack import sample_corpus as corpus
from transforms.nostr.event import Signer, compute_event_id, nsec_encode

try:  # coincurve's cffi layer: lets one keypair sign many events without re-verifying
  from coincurve._libsecp256k1 import ffi as _ffi
  from coincurve._libsecp256k1 import lib as _lib
  from coincurve.context import GLOBAL_CONTEXT as _CONTEXT
except ImportError:  # pragma: no cover - other coincurve layouts use the public API
  _ffi = _lib = _CONTEXT = None

KIND = 32222
DEFAULT_MEDIA_BASE = "https://api.openvine.co"
KEYS_SCHEMA = ("CREATE TABLE user_migrations (username TEXT PRIMARY KEY, "
               "nostr_public_key TEXT, nostr_private_key TEXT)")
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


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
  sample = _Sample(random.Random(seed), (cdn_base or DEFAULT_MEDIA_BASE).rstrip("/"))
  os.makedirs(out_dir, exist_ok=True)
  sample.add_authors(max(2, round(n / 3)), plant_failures)
  sample.add_vines(n)
  # Planted: the last keyed vine gets no event, the one before it a video the source lacks.
  keyed = [v for v in sample.vines if v["author"] is not sample.no_key_author]
  no_event_vine, missing_oid_vine = (keyed[-1], keyed[-2]) if plant_failures else (None, None)
  sample.add_events(no_event_vine, missing_oid_vine)
  expected_published = sum(1 for v in sample.vines if "event" in v)
  if plant_failures:
    expected_published += sample.plant(no_event_vine, missing_oid_vine, keyed[0]["author"])
  sample.rng.shuffle(sample.events)
  stored_oids = sample.stored_openvine_ids(n, missing_oid_vine)
  stored_keys = _write_files(out_dir, sample, stored_oids)
  manifest = _manifest(sample, seed, n, stored_keys, len(stored_oids), expected_published)
  with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, ensure_ascii=False, indent=1)
  return manifest


class _Sample:
  """The sample being built: authors, vines, rows, events and the planted failures.

  Every step draws from the one seeded generator (signatures too), so generate()
  runs them in a fixed order: reordering two steps, or the draws inside one, changes
  every byte written after that point.
  """

  def __init__(self, rng: random.Random, media_base: str):
    self.rng = rng
    self.media_base = media_base
    self.authors: List[Dict[str, Any]] = []
    self.no_key_author: Optional[Dict[str, Any]] = None
    self.rows: List[Dict[str, Any]] = []
    self.vines: List[Dict[str, Any]] = []
    self.events: List[Dict[str, Any]] = []
    self.superseded: List[Dict[str, Any]] = []
    self.planted: Dict[str, Any] = {}
    self.used_vids: set = set()
    self.used_oids: set = set()

  def add_authors(self, count: int, plant_failures: bool) -> None:
    """Authors and their keys; display names are not unique, keys.db usernames must be."""
    rng = self.rng
    pubkeys = set()
    for _ in range(count):
      user_id = rng.randrange(10 ** 17, 10 ** 19)
      if self.authors and rng.random() < 0.05:
        name = rng.choice(self.authors)["name"]
      else:
        name = corpus.display_name(rng, user_id)
      priv = _private_key(rng)
      signer = _AuthorSigner(priv, rng)
      if signer.pubkey in pubkeys:
        raise RuntimeError("duplicate public key")  # 2^-256; keeps the invariant explicit
      pubkeys.add(signer.pubkey)
      self.authors.append({"name": name, "priv": priv, "signer": signer, "vines": []})
    if plant_failures:
      self.no_key_author = self.authors[-1]
      # Shares a display name with a keyed author: a lookup by name would pick the wrong key.
      self.no_key_author["name"] = self.authors[0]["name"]

  def add_vines(self, n: int) -> None:
    """n vines and their rows: one per author, the rest to a skewed few (never the key-less)."""
    rng, n_authors = self.rng, len(self.authors)
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(n_authors)]
    if self.no_key_author is not None:
      weights[-1] = 0.0
    owners = list(range(n_authors))[:n] + rng.choices(range(n_authors), weights,
                                                        k=max(0, n - n_authors))
    for owner in owners:
      created = rng.randint(corpus.VINE_START, corpus.VINE_END) if rng.random() > 0.08 else None
      description = corpus.caption(rng)
      vid = corpus.new_vine_id(rng, created, self.used_vids)
      author = self.authors[owner]
      self.rows.append(corpus.seed_row(rng, vid, author["name"], created, description))
      vine = self._vine(vid, author, description or "")
      author["vines"].append(vine)
      self.vines.append(vine)

  def _vine(self, vine_id: str, author: Dict[str, Any], description: str) -> Dict[str, Any]:
    event_at = self.rng.randint(corpus.EVENTS_START, corpus.EVENTS_END)
    oid = corpus.new_openvine_id(self.rng, event_at, self.used_oids)
    return {"vine_id": vine_id, "author": author, "description": description,
            "event_at": event_at, "oid": oid}

  def event(self, vine: Dict[str, Any], vine_id: Optional[str], created_at: int,
            title: Optional[str] = None, with_vine_id: Optional[bool] = None) -> Dict[str, Any]:
    """A signed event of the vine (vine_id None: without a d tag)."""
    if with_vine_id is None:
      with_vine_id = self.rng.random() < 0.3
    tags = corpus.event_tags(self.rng, vine_id, title or self._title(vine), vine["oid"],
                             self.media_base, with_vine_id)
    return _signed(vine["author"]["signer"], created_at, tags, vine["description"])

  def _title(self, vine: Dict[str, Any]) -> str:
    text = vine["description"].strip()
    if text:
      return text
    return self.rng.choice(corpus.PLACEHOLDER_TITLES + ("Vine by %s" % vine["author"]["name"],))

  def add_events(self, no_event_vine, missing_oid_vine) -> None:
    """An event per vine (but no_event_vine), a few also with an older, superseded version."""
    for vine in self.vines:
      if vine is no_event_vine:
        continue
      event = self.event(vine, vine["vine_id"], vine["event_at"])
      vine["event"] = event
      self.events.append(event)
      if vine is not missing_oid_vine and vine["author"] is not self.no_key_author \
          and self.rng.random() < 0.02:
        older_at = vine["event_at"] - self.rng.choice((1, 60, 86400, 86400 * 30))
        old = self.event(vine, vine["vine_id"], older_at, title="Rescued Vine video")
        self.events.append(old)
        self.superseded.append({"vine_id": vine["vine_id"], "event_id": old["id"],
                                "latest_event_id": event["id"]})

  def plant(self, no_event_vine, missing_oid_vine, host) -> int:
    """Records the planted failures, adds the extra events; returns the change to publish.

    host: the keyed author who owns the extra events (which have no row).
    """
    nokey = self.no_key_author
    self.planted["row_without_event"] = {
        "vine_id": no_event_vine["vine_id"],
        "expected": {"outcome": "skipped", "reason": "no_event"}}
    self.planted["missing_openvine_video"] = {
        "vine_id": missing_oid_vine["vine_id"], "openvine_id": missing_oid_vine["oid"],
        "event_id": missing_oid_vine["event"]["id"],
        "expected": {"outcome": "dead_letter", "stage": "migrate", "error_class": "permanent"}}
    self.planted["no_signing_key"] = {
        "pubkey": nokey["signer"].pubkey, "display_name": nokey["name"],
        "vine_ids": [v["vine_id"] for v in nokey["vines"]],
        "event_ids": [v["event"]["id"] for v in nokey["vines"]],
        "expected": {"outcome": "dead_letter", "stage": "sign", "error_class": "permanent",
                     "error": "no_signing_key"}}
    self._plant_extra_events(host)
    # The missing video and the key-less author's vines are not published; the orphan is.
    return -(1 + len(nokey["vines"])) + 1

  def _plant_extra_events(self, host: Dict[str, Any]) -> None:
    """Events with no row, each a fresh vine id: an orphan, a forged one, one without d."""
    orphan = self._extra_vine(host, "no row for this one #orphan")
    orphan_event = self.event(orphan, orphan["vine_id"], orphan["event_at"])
    self.events.append(orphan_event)
    self.planted["event_without_row"] = {
        "vine_id": orphan["vine_id"], "event_id": orphan_event["id"],
        "expected": {"outcome": "published", "counter": "metadata_missing"}}

    forged = self._extra_vine(host, "forged signature")
    forged_event = self.event(forged, forged["vine_id"], forged["event_at"])
    forged_event["sig"] = orphan_event["sig"]  # a real signature, of another event
    self.events.append(forged_event)
    self.planted["forged_signature"] = {
        "vine_id": forged["vine_id"], "event_id": forged_event["id"],
        "expected": {"outcome": "dead_letter", "stage": "read_events", "error_class": "bad_input"}}

    no_d = self._extra_vine(host, "an event without a d tag")
    no_d_event = self.event(no_d, None, no_d["event_at"], with_vine_id=False)
    self.events.append(no_d_event)
    self.planted["event_without_d"] = {
        "event_id": no_d_event["id"], "openvine_id": no_d["oid"],
        "expected": {"outcome": "skipped", "reason": "no_vine_id"}}
    assert compute_event_id(forged_event) == forged_event["id"]

  def _extra_vine(self, host: Dict[str, Any], description: str) -> Dict[str, Any]:
    event_at = self.rng.randint(corpus.EVENTS_START, corpus.EVENTS_END)
    return {"vine_id": corpus.new_vine_id(self.rng, None, self.used_vids), "author": host,
            "description": description, "event_at": event_at,
            "oid": corpus.new_openvine_id(self.rng, event_at, self.used_oids)}

  def stored_openvine_ids(self, n: int, missing_oid_vine) -> List[str]:
    """The videos the OpenVine source holds, sorted, then a few extra ones.

    Every video an event points at is stored but the planted missing one; a few that
    no event points at follow, as in the real bucket.
    """
    missing = {missing_oid_vine["oid"]} if missing_oid_vine else set()
    stored = sorted(self.used_oids - missing)
    for _ in range(max(1, n // 100)):
      event_at = self.rng.randint(corpus.EVENTS_START, corpus.EVENTS_END)
      stored.append(corpus.new_openvine_id(self.rng, event_at, self.used_oids))
    return stored


def _write_files(out_dir: str, sample: _Sample, stored_oids: List[str]) -> int:
  """Writes rows, events, OpenVine ids and keys.db; returns the number of stored keys."""
  _write_ndjson(os.path.join(out_dir, "rows.ndjson"), sample.rows)
  _write_ndjson(os.path.join(out_dir, "events.ndjson"), sample.events)
  with open(os.path.join(out_dir, "openvine_ids.txt"), "w", encoding="utf-8") as f:
    f.write("".join(oid + "\n" for oid in stored_oids))
  return _write_keys(os.path.join(out_dir, "keys.db"), sample.rng,
                     [a for a in sample.authors if a is not sample.no_key_author])


def _manifest(sample: _Sample, seed: int, n: int, stored_keys: int, stored_oids: int,
              expected_published: int) -> Dict[str, Any]:
  rows = sample.rows
  return {
      "seed": seed, "n": n, "media_base": sample.media_base, "kind": KIND,
      "files": {"rows": "rows.ndjson", "events": "events.ndjson", "keys": "keys.db",
                "openvine_ids": "openvine_ids.txt"},
      "counts": {
          "rows": len(rows), "events": len(sample.events), "authors": len(sample.authors),
          "keys_stored": stored_keys, "openvine_ids": stored_oids,
          "superseded_events": len(sample.superseded),
          "rows_with_null_created": sum(1 for r in rows if r["created_timestamp"] is None),
      },
      "expected_published": expected_published,
      "planted": sample.planted,
      "superseded": sample.superseded,
  }


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
