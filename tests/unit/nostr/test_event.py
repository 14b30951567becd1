"""Unit tests of Nostr primitives, the key store and dead-letter rows."""

import json
import pickle

import pytest

from tests.conftest import make_keys_db
from transforms.runtime import outcomes as dl
from transforms.nostr import event as ne
from transforms.keys.store import KeyStore, KeyStoreError


def test_sign_and_validate_round_trip_with_unicode():
  signer = ne.Signer(ne.generate_private_key())
  ev = signer.sign({"kind": 32222, "created_at": 5, "tags": [["d", "x"]], "content": "日本 🎉"})
  assert ne.validate_event(ev) is None
  # id computed over non-ASCII kept as is (ensure_ascii=False)
  assert '"日本 🎉"' in ne.serialize_for_id(ev).decode("utf-8")


@pytest.mark.parametrize("mutate,reason", [
    (lambda e: e.update(content="changed"), "id does not match"),
    (lambda e: e.update(sig="0" * 128), "signature"),
    (lambda e: e.update(created_at=1.5), "integer"),
    (lambda e: e.update(tags=[["d", 5]]), "strings"),
    (lambda e: e.update(content="a\x00b"), "control"),
    (lambda e: e.update(content="a\ud800"), "surrogate"),
])
def test_validate_rejects(mutate, reason):
  ev = ne.Signer(ne.generate_private_key()).sign(
      {"kind": 32222, "created_at": 5, "tags": [], "content": ""})
  mutate(ev)
  assert reason in ne.validate_event(ev)


def test_forged_id_with_recomputed_sig_of_other_key_fails():
  a, b = ne.Signer(ne.generate_private_key()), ne.Signer(ne.generate_private_key())
  ev = a.sign({"kind": 1, "created_at": 5, "tags": [], "content": "x"})
  ev["sig"] = b.sign_id(ev["id"])
  assert "signature" in ne.validate_event(ev)


def test_key_parsing():
  priv = ne.generate_private_key()
  pub = ne.derive_public_key(priv)
  assert ne.parse_private_key(ne.nsec_encode(priv)) == priv
  assert ne.parse_private_key(priv.upper()) == priv
  with pytest.raises(ne.KeyError_, match="npub"):
    ne.parse_private_key(ne.npub_encode(pub))
  with pytest.raises(ne.KeyError_) as err:
    ne.parse_private_key(priv[:-2])
  assert priv[:10] not in str(err.value)  # never echo key material
  assert ne.parse_public_key(ne.npub_encode(pub)) == pub


def test_signer_never_pickles_or_prints_key():
  priv = ne.generate_private_key()
  signer = ne.Signer(priv)
  assert priv not in repr(signer)
  with pytest.raises(TypeError):
    pickle.dumps(signer)


def test_key_store_by_pubkey_and_refusals(tmp_path, caplog):
  good, other, nsec_user = (ne.generate_private_key() for _ in range(3))
  mismatch = ne.generate_private_key()
  path = str(tmp_path / "keys.db")
  make_keys_db(path, [
      ("same name", ne.derive_public_key(good), good),
      ("same name (2)", ne.derive_public_key(nsec_user), ne.nsec_encode(nsec_user)),
      ("npub", ne.derive_public_key(other), ne.npub_encode(ne.derive_public_key(other))),
      ("mismatch", ne.derive_public_key(other), mismatch),
      ("short", ne.derive_public_key(mismatch), "abcd"),
  ])
  store = KeyStore.load(path)
  assert len(store) == 2
  assert store.signer_for(ne.derive_public_key(good)).pubkey == ne.derive_public_key(good)
  assert store.signer_for(ne.derive_public_key(nsec_user)) is not None
  assert store.signer_for(ne.derive_public_key(other)) is None
  assert sum(store.refused.values()) == 3
  for secret in (good, nsec_user, mismatch, ne.nsec_encode(nsec_user)):
    assert secret not in caplog.text
  with pytest.raises(TypeError):
    pickle.dumps(store)


def test_key_store_missing_file(tmp_path):
  with pytest.raises(KeyStoreError, match="not found"):
    KeyStore.load(str(tmp_path / "nope.db"))


def test_dead_letter_shape_and_sanitising():
  row = dl.make_dead_letter("run1", dl.STAGE_MIGRATE, dl.TRANSIENT_EXHAUSTED,
                            "boom Authorization: Bearer s3cret nsec1" + "q" * 58,
                            vine_id="v", event_id="e", attempts=5, payload={"a": 1})
  assert [f for f, _, _ in dl.SCHEMA_FIELDS] == list(row)
  assert "s3cret" not in row["error"] and "nsec1qqqq" not in row["error"]
  assert json.loads(row["payload"]) == {"a": 1} and row["attempts"] == 5
  with pytest.raises(ValueError):
    dl.make_dead_letter("r", "nowhere", dl.PERMANENT, "x")


def test_throttling_seconds_keep_their_fractions(monkeypatch):
  from transforms.runtime import accounting
  added = []
  monkeypatch.setattr(accounting, "inc", lambda name, n=1: added.append((name, n)))
  monkeypatch.setattr(accounting, "_fractions", {})
  for _ in range(10):
    accounting.add_seconds("cumulativeThrottlingSeconds", 0.25)
  accounting.add_seconds("cumulativeThrottlingSeconds", 3.6)
  assert sum(n for _, n in added) == 6  # 2.5 + 3.6 = 6.1
  assert {name for name, _ in added} == {"cumulativeThrottlingSeconds"}
