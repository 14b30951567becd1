"""The key store: keys by public key, refused rows, encrypted databases, loose file modes."""

import logging
import os
import pickle

import pytest

from tests.support.keys import key_pair, make_keys_db, tiny_keys_db
from transforms.keys import crypto as kc
from transforms.keys.store import NO_KEK_REASON, KeyStore, KeyStoreError
from transforms.nostr import event as ne


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


def test_key_store_encrypted_db_without_kek_refuses_rows(tmp_path, caplog):
  kek = os.urandom(32)
  (priv_a, pub_a), (priv_b, pub_b) = key_pair(), key_pair()
  path = str(tmp_path / "enc.db")
  make_keys_db(path, [("a", pub_a, kc.encrypt_value(kek, pub_a, priv_a)),
             ("b", pub_b, kc.encrypt_value(kek, pub_b, priv_b))])
  store = KeyStore.load(path)
  assert len(store) == 0
  assert store.refused == {NO_KEK_REASON: 2}
  assert "set --kek" in NO_KEK_REASON and NO_KEK_REASON in caplog.text
  assert (store.encrypted_rows, store.plaintext_rows, store.total_rows) == (2, 0, 2)
  store = KeyStore.load(path, decrypt=kc.make_decryptor(kek))
  assert len(store) == 2 and store.refused == {} and store.storage_warning() is None
  store = KeyStore.load(path, decrypt=kc.make_decryptor(os.urandom(32)))
  assert len(store) == 0 and "does not decrypt" in next(iter(store.refused))


def test_key_store_swapped_rows_and_plaintext_rows(tmp_path, caplog):
  kek = os.urandom(32)
  (priv_a, pub_a), (priv_b, pub_b), (priv_c, pub_c) = key_pair(), key_pair(), key_pair()
  path = str(tmp_path / "mixed.db")
  make_keys_db(path, [("a", pub_a, kc.encrypt_value(kek, pub_b, priv_b)),  # moved from row b
             ("c", pub_c, priv_c)])                                # plaintext left behind
  store = KeyStore.load(path, decrypt=kc.make_decryptor(kek))
  assert store.signer_for(pub_a) is None and store.signer_for(pub_c) is not None
  assert "moved from another row" in next(iter(store.refused))
  assert (store.encrypted_rows, store.plaintext_rows) == (1, 1)
  assert "plaintext keys in an encrypted database" in store.storage_warning()
  plain = str(tmp_path / "plain.db")
  make_keys_db(plain, [("c", pub_c, priv_c)])
  caplog.clear()
  store = KeyStore.load(plain)
  assert store.storage_warning().startswith("keys database is plaintext")
  assert caplog.text.count("keys database is plaintext") == 1
  for secret in (priv_a, priv_b, priv_c):
    assert secret not in caplog.text


@pytest.mark.parametrize("mode,warned", [(0o600, False), (0o400, False), (0o640, True),
                                         (0o604, True), (0o620, True), (0o644, True)])
def test_key_store_warns_about_a_keys_db_open_to_group_or_others(tmp_path, caplog, mode, warned):
  path = str(tmp_path / "keys.db")
  priv = tiny_keys_db(path, mode)
  caplog.set_level(logging.WARNING, logger="transforms.keys.store")
  assert len(KeyStore.load(path)) == 1
  assert ("accessible by group or others" in caplog.text) == warned
  assert priv not in caplog.text
