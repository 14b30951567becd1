"""Signing keys for tests: key pairs, the textual forms of a KEK, small keys databases."""

import base64
import contextlib
import os
import sqlite3

from devstack import sampledata
from transforms.nostr import event as ne
from transforms.nostr.event import Signer


def key_pair():
  """A fresh (private key hex, public key hex)."""
  priv = ne.generate_private_key()
  return priv, ne.derive_public_key(priv)


def kek_text_forms(kek: bytes):
  """Every textual form a KEK might leak in."""
  return [kek.hex(), kek.hex().upper(), base64.b64encode(kek).decode(),
          base64.urlsafe_b64encode(kek).decode().rstrip("=")]


def make_keys_db(path, rows):
  """A keys database in the seed's schema, mode 0600."""
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE user_migrations (username TEXT PRIMARY KEY, nostr_public_key TEXT,"
               " nostr_private_key TEXT)")
  conn.executemany("INSERT INTO user_migrations VALUES (?,?,?)", rows)
  conn.commit()
  conn.close()
  os.chmod(path, 0o600)


def tiny_keys_db(path, mode):
  """A keys database (sample data's schema) with one key, in `mode`; returns the key."""
  priv = "11" * 32
  with contextlib.closing(sqlite3.connect(path)) as conn:
    conn.execute(sampledata.KEYS_SCHEMA)
    conn.execute("INSERT INTO user_migrations VALUES (?, ?, ?)",
                 ("alice", Signer(priv).pubkey, priv))
    conn.commit()
  os.chmod(path, mode)
  return priv
