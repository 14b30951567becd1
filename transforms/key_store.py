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

from transforms.nostr_event import KeyError_, Signer, derive_public_key, parse_private_key, \
  parse_public_key

_LOG = logging.getLogger(__name__)


class KeyStoreError(RuntimeError):
  """The keys database cannot be used at all (missing file, wrong schema)."""


class KeyStore:
  """Pubkey -> Signer, with the refused rows counted by reason."""

  def __init__(self, signers: Dict[str, Signer], refused: Dict[str, int]):
    self._signers = signers
    self.refused = refused

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
      decrypt: optional callable turning a stored private-key value into plaintext
        (for encrypted databases); None reads plaintext values.
    """
    if not path or not os.path.isfile(path):
      raise KeyStoreError("keys database not found: %s (set --keys-db or MIGRATION_DB)" % path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
      _LOG.warning("keys database %s is readable by group or others (mode %o); "
                   "chmod 600 it", path, stat.S_IMODE(mode))
    uri = "file:%s?mode=ro" % os.path.abspath(path)
    try:
      conn = sqlite3.connect(uri, uri=True)
      rows = conn.execute(
          "SELECT nostr_public_key, nostr_private_key FROM user_migrations").fetchall()
      conn.close()
    except sqlite3.Error as exc:
      raise KeyStoreError("keys database %s unusable: %s" % (path, type(exc).__name__)) from None
    signers: Dict[str, Signer] = {}
    refused: Dict[str, int] = {}
    for index, (stored_pub, stored_priv) in enumerate(rows):
      try:
        pubkey = parse_public_key(stored_pub)
        value = decrypt(stored_priv) if decrypt else stored_priv
        privkey = parse_private_key(value)
        if derive_public_key(privkey) != pubkey:
          raise KeyError_("private key does not derive the stored public key")
      except KeyError_ as exc:
        reason = str(exc)
        refused[reason] = refused.get(reason, 0) + 1
        _LOG.warning("keys database row %d refused: %s", index + 1, reason)
        continue
      if pubkey in signers:
        continue
      signers[pubkey] = Signer(privkey)
    _LOG.info("keys database: %d usable keys, %d rows refused", len(signers),
              sum(refused.values()))
    return cls(signers, refused)
