"""A secret scanner: every private key, the KEK and the API token in every form they could leak in.

It looks for raw, hex, nsec, base64 and base64url forms (base64 at every byte
alignment, so a secret inside a longer encoded blob is found too);
tests/unit/support/test_secret_scan.py is its canary.
"""

import base64
import bz2
import os
import urllib.parse
import zlib
from typing import Dict, List

from transforms.nostr.event import nsec_encode


def _b64_forms(raw: bytes) -> List[str]:
  """base64 and base64url of `raw` as they appear inside any longer encoding.

  For each of the three byte alignments, only the characters that depend on
  `raw` alone are kept (the first group mixes in preceding bytes, the last one
  following bytes or padding).
  """
  forms = []
  for shift in range(3):
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
      text = encode(b"\0" * shift + raw).decode("ascii")
      start = 4 if shift else 0
      stop = (shift + len(raw)) // 3 * 4
      forms.append(text[start:stop])
  return forms


def key_forms(privkey_hex: str) -> List[str]:
  """A private key as hex (both cases), nsec (both cases), base64 and base64url."""
  nsec = nsec_encode(privkey_hex)
  return [privkey_hex, privkey_hex.upper(), nsec, nsec.upper()] + _b64_forms(
      bytes.fromhex(privkey_hex))


def kek_forms(kek: bytes) -> List[str]:
  """A KEK as hex (both cases), base64 and base64url (the env var holds base64)."""
  return [kek.hex(), kek.hex().upper()] + _b64_forms(kek)


def token_forms(token: str) -> List[str]:
  """A token raw, URL-encoded, upper-cased, hex of its bytes, base64 and base64url."""
  raw = token.encode("utf-8")
  return sorted({token, token.upper(), urllib.parse.quote(token, safe=""), raw.hex(),
                 raw.hex().upper()} | set(_b64_forms(raw)))


def find_leaks(haystacks: Dict[str, bytes], secrets: Dict[str, List[str]]) -> List[str]:
  """Every (secret, form number, place) where a form of a secret occurs; [] when clean.

  The report names the form by its number, so a failing test never prints a secret.
  """
  leaks = []
  for name, forms in secrets.items():
    for number, form in enumerate(forms):
      needle = form.encode("ascii")
      for where, data in haystacks.items():
        if needle in data:
          leaks.append("%s (form %d) in %s" % (name, number, where))
  return leaks


def read_tree(root: str) -> Dict[str, bytes]:
  """Every file under root, by relative path."""
  found = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = f.read()
  return found


def unwrap(data: bytes) -> bytes:
  """Beam pickles as base64 of bz2 or zlib data; returns the innermost bytes found."""
  try:
    data = base64.b64decode(data, validate=True)
  except (ValueError, TypeError):
    return data
  for decompress in (bz2.decompress, zlib.decompress):
    try:
      return decompress(data)
    except (OSError, ValueError, zlib.error):
      continue
  return data
