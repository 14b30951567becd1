"""Nostr primitives: event ids and signatures, key parsing, a Signer that never leaks its key."""

import pickle

import pytest

from transforms.nostr import event as ne


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
