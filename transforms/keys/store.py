"""The signing key store: the seed's SQLite table, looked up by public key.

`user_migrations(username, nostr_public_key, nostr_private_key)` is kept so existing
databases work. Keys are chosen by the original event's pubkey, never by username
(display names are not unique). A row is refused, counted and never used when its
private key is malformed, is an npub, or does not derive the stored public key.

Private keys live only inside Signer objects built here, in a DoFn's setup(); they
never travel through constructors, options, side inputs or shuffles, and never
appear in logs (rows are identified by a pubkey prefix).
"""

import logging
import os
import sqlite3
import stat
from typing import Dict, Optional

# Encryption at rest (transforms/keys/crypto.py): values `enc:v1:...` need a decryptor.
from transforms.keys.crypto import decryptor_for_spec, is_encrypted
from transforms.keys.remote_files import local_path
from transforms.nostr.event import (
  KeyError_,
  Signer,
  derive_public_key,
  parse_private_key,
  parse_public_key,
)

NO_KEK_REASON = "encrypted key but no KEK configured: set --kek"
PLAINTEXT_DB_WARNING = ("keys database is plaintext (%d keys stored unencrypted); encrypt it "
                        "with `python -m pipeline.keys encrypt`")
PLAINTEXT_IN_ENCRYPTED_WARNING = ("%d plaintext keys in an encrypted database; re-run "
                                  "`python -m pipeline.keys encrypt` on it")

_LOG = logging.getLogger(__name__)


class KeyStoreError(RuntimeError):
  """The keys database cannot be used at all (missing file, wrong schema)."""


class KeyStore:
  """Pubkey -> Signer, with the refused rows counted by reason."""

  def __init__(self, signers: Dict[str, Signer], refused: Dict[str, int],
               encrypted_rows: int = 0, plaintext_rows: int = 0, kek_configured: bool = False):
    self._signers = signers
    self.refused = refused
    # Rows by storage form (usable or not), so the run can warn about plaintext once.
    self.encrypted_rows = encrypted_rows
    self.plaintext_rows = plaintext_rows
    self.kek_configured = kek_configured

  @property
  def total_rows(self) -> int:
    return self.encrypted_rows + self.plaintext_rows

  def storage_warning(self) -> Optional[str]:
    """The one warning a run should print about plaintext keys, or None."""
    if not self.plaintext_rows:
      return None
    if self.kek_configured or self.encrypted_rows:
      return PLAINTEXT_IN_ENCRYPTED_WARNING % self.plaintext_rows
    return PLAINTEXT_DB_WARNING % self.plaintext_rows

  def __len__(self):
    return len(self._signers)

  def __repr__(self):
    return "KeyStore(%d keys)" % len(self._signers)

  def __reduce__(self):
    raise TypeError("KeyStore holds private keys and must never be pickled")

  def signer_for(self, pubkey: str) -> Optional[Signer]:
    return self._signers.get(pubkey)

  @classmethod
  def load(cls, path: str, decrypt=None) -> "KeyStore":
    """Reads every usable key of a keys database.

    Args:
      path: the SQLite file.
      decrypt: optional callable `decrypt(stored_value, pubkey_hex) -> plaintext`
        (transforms.keys.crypto.make_decryptor) for encrypted values. Plaintext
        values are read as they are and counted; encrypted values without it are
        refused (NO_KEK_REASON).
    """
    if not path or not os.path.isfile(path):
      raise KeyStoreError("keys database not found: %s (set --keys-db or MIGRATION_DB)" % path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
      # A warning, not a refusal: the seed's databases were made with the default umask.
      _LOG.warning("keys database %s is accessible by group or others (mode %04o); "
                   "chmod 600 it", path, stat.S_IMODE(mode))
    uri = "file:%s?mode=ro" % os.path.abspath(path)
    try:
      conn = sqlite3.connect(uri, uri=True)
      rows = conn.execute(
          "SELECT nostr_public_key, nostr_private_key FROM user_migrations").fetchall()
      conn.close()
    except sqlite3.Error as exc:
      # SQLite's own words ("database is locked", "no such table: ...") hold no key.
      raise KeyStoreError("keys database %s unusable: %s: %s"
                          % (path, type(exc).__name__, exc)) from None
    signers: Dict[str, Signer] = {}
    refused: Dict[str, int] = {}
    encrypted_rows = plaintext_rows = 0
    for index, (stored_pub, stored_priv) in enumerate(rows):
      encrypted = is_encrypted(stored_priv)
      if encrypted:
        encrypted_rows += 1
      else:
        plaintext_rows += 1
      try:
        pubkey = parse_public_key(stored_pub)
        if not encrypted:
          value = stored_priv
        elif decrypt is None:
          raise KeyError_(NO_KEK_REASON)
        else:
          value = decrypt(stored_priv, pubkey)
        privkey = parse_private_key(value)
        if derive_public_key(privkey) != pubkey:
          raise KeyError_("private key does not derive the stored public key")
      except KeyError_ as exc:
        reason = str(exc)
        refused[reason] = refused.get(reason, 0) + 1
        _LOG.debug("keys database row %d refused: %s", index + 1, reason)
        continue
      if pubkey in signers:
        continue
      signers[pubkey] = Signer(privkey)
    _LOG.info("keys database: %d usable keys, %d rows refused (%d encrypted, %d plaintext)",
              len(signers), sum(refused.values()), encrypted_rows, plaintext_rows)
    if refused:  # one line for all refused rows (each row's number is at DEBUG)
      _LOG.warning("keys database: %d rows refused: %s", sum(refused.values()),
                   "; ".join("%d x %s" % (n, reason) for reason, n in sorted(refused.items())))
    store = cls(signers, refused, encrypted_rows, plaintext_rows, decrypt is not None)
    warning = store.storage_warning()
    if warning:
      _LOG.warning("%s", warning)
    return store


def load_key_store(keys_db: str, kek_spec: str = "") -> KeyStore:
  """The key store for a DoFn's setup(): decrypted with the KEK when one is configured.

  `keys_db` may be a gs:// path (Dataflow workers): it is read through a private copy.
  """
  decrypt = decryptor_for_spec(kek_spec) if kek_spec else None
  with local_path(keys_db) as path:
    return KeyStore.load(path, decrypt=decrypt)
