"""Nostr event primitives (NIP-01, NIP-19): ids, signatures, key parsing.

Pure functions with no Beam dependency. Signing and verification use coincurve
(libsecp256k1): pynostr's Event ignores incoming ids, signs float created_at and
accepts an npub as a private key, so it is not used on the hot path.
"""

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import coincurve

from transforms.core.ids import HEX64_RE, HEX128_RE
from transforms.core.text import C0_CONTROL, LONE_SURROGATE, SUSPECT_TEXT

try:  # coincurve's cffi layer: a key pair built once signs many events
  from coincurve._libsecp256k1 import ffi as _ffi
  from coincurve._libsecp256k1 import lib as _lib
  from coincurve.context import GLOBAL_CONTEXT as _CONTEXT
except ImportError:  # pragma: no cover - other coincurve layouts use the public API
  _ffi = _lib = _CONTEXT = None

# BIP-340 auxiliary randomness: SHA-256(this salt || message), see Signer.
_AUX_SALT = os.urandom(32)



class KeyError_(ValueError):
  """A private or public key that cannot be used (the message never holds the key)."""


# ---------------------------------------------------------------------------
# bech32 (NIP-19: npub / nsec), BIP-173 checksum.
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values):
  gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
  chk = 1
  for v in values:
    b = chk >> 25
    chk = ((chk & 0x1FFFFFF) << 5) ^ v
    for i in range(5):
      chk ^= gen[i] if ((b >> i) & 1) else 0
  return chk


def _hrp_expand(hrp):
  return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data, frombits, tobits, pad=True):
  acc, bits, ret, maxv = 0, 0, [], (1 << tobits) - 1
  for value in data:
    if value < 0 or value >> frombits:
      return None
    acc = (acc << frombits) | value
    bits += frombits
    while bits >= tobits:
      bits -= tobits
      ret.append((acc >> bits) & maxv)
  if pad:
    if bits:
      ret.append((acc << (tobits - bits)) & maxv)
  elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
    return None
  return ret


def bech32_encode(hrp: str, data: bytes) -> str:
  five = _convertbits(data, 8, 5)
  values = _hrp_expand(hrp) + five
  polymod = _polymod(values + [0] * 6) ^ 1
  checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
  return hrp + "1" + "".join(_CHARSET[d] for d in five + checksum)


def bech32_decode(text: str) -> Tuple[str, bytes]:
  """Returns (hrp, payload bytes); raises KeyError_ without echoing the input."""
  text = text.strip().lower()
  pos = text.rfind("1")
  if pos < 1 or pos + 7 > len(text):
    raise KeyError_("not a bech32 string")
  hrp, rest = text[:pos], text[pos + 1:]
  try:
    data = [_CHARSET.index(c) for c in rest]
  except ValueError:
    raise KeyError_("invalid bech32 character") from None
  if _polymod(_hrp_expand(hrp) + data) != 1:
    raise KeyError_("bech32 checksum mismatch")
  decoded = _convertbits(data[:-6], 5, 8, False)
  if decoded is None:
    raise KeyError_("bech32 padding invalid")
  return hrp, bytes(decoded)


def npub_encode(pubkey_hex: str) -> str:
  return bech32_encode("npub", bytes.fromhex(pubkey_hex))


def nsec_encode(privkey_hex: str) -> str:
  return bech32_encode("nsec", bytes.fromhex(privkey_hex))


def parse_private_key(value: Optional[str]) -> str:
  """Accepts 64-hex or nsec; returns lowercase hex. Refuses npub and wrong lengths."""
  if value is None:
    raise KeyError_("private key is empty")
  text = str(value).strip()
  if not text:
    raise KeyError_("private key is empty")
  low = text.lower()
  if low.startswith("npub1"):
    raise KeyError_("an npub (public key) is stored where a private key belongs")
  if low.startswith("nsec1"):
    hrp, payload = bech32_decode(low)
    if hrp != "nsec" or len(payload) != 32:
      raise KeyError_("nsec does not decode to 32 bytes")
    return payload.hex()
  if not HEX64_RE.match(low):
    raise KeyError_(
        "private key is neither 64 hex characters nor nsec (length %d)" % len(text))
  return low


def parse_public_key(value: Optional[str]) -> str:
  """Accepts 64-hex or npub; returns lowercase hex."""
  text = (value or "").strip().lower()
  if text.startswith("npub1"):
    hrp, payload = bech32_decode(text)
    if hrp != "npub" or len(payload) != 32:
      raise KeyError_("npub does not decode to 32 bytes")
    return payload.hex()
  if text.startswith("nsec1"):
    raise KeyError_("an nsec (private key) is stored where a public key belongs")
  if not HEX64_RE.match(text):
    raise KeyError_("public key is neither 64 hex characters nor npub")
  return text


def derive_public_key(privkey_hex: str) -> str:
  try:
    pk = coincurve.PrivateKey(bytes.fromhex(privkey_hex))
  except Exception:  # pylint: disable=broad-except
    raise KeyError_("private key is out of range for secp256k1") from None
  return pk.public_key_xonly.format().hex()


def generate_private_key() -> str:
  while True:
    raw = os.urandom(32)
    try:
      coincurve.PrivateKey(raw)
      return raw.hex()
    except Exception:  # pylint: disable=broad-except
      continue


class Signer:
  """A cached key pair: building the secp256k1 key once per author makes signing cheap.

  coincurve's `PrivateKey.sign_schnorr` rebuilds the key pair (about 36 us) and reads
  os.urandom on every call: two more calls that release the GIL, and in the busy
  pipeline process each cost the bundle thread 0.4-1 ms of waiting to get it back
  (docs/performance.md). Here the key pair and x-only public key are built once and the
  BIP-340 auxiliary randomness is SHA-256(per-process secret salt || message): BIP-340
  nonces stay secret with any aux value (fresh randomness only hardens against side
  channels). Every signature is still verified before it is returned. repr() never
  shows the key.
  """

  __slots__ = ("_key", "pubkey", "_keypair", "_xonly")

  def __init__(self, privkey_hex: str):
    self._key = coincurve.PrivateKey(bytes.fromhex(privkey_hex))
    self.pubkey = self._key.public_key_xonly.format().hex()
    self._keypair = self._xonly = None
    if _lib is not None:
      keypair = _ffi.new("secp256k1_keypair *")
      xonly = _ffi.new("secp256k1_xonly_pubkey *")
      if (_lib.secp256k1_keypair_create(_CONTEXT.ctx, keypair, self._key.secret)
          and _lib.secp256k1_keypair_xonly_pub(_CONTEXT.ctx, xonly, _ffi.NULL, keypair)):
        self._keypair, self._xonly = keypair, xonly

  def __repr__(self):
    return "Signer(pubkey=%s)" % self.pubkey

  def __reduce__(self):
    raise TypeError("Signer holds a private key and must never be pickled")

  def sign_id(self, event_id_hex: str) -> str:
    msg = bytes.fromhex(event_id_hex)
    if self._keypair is None:
      return self._key.sign_schnorr(msg).hex()
    sig = _ffi.new("unsigned char[64]")
    aux = hashlib.sha256(_AUX_SALT + msg).digest()
    if not (_lib.secp256k1_schnorrsig_sign32(_CONTEXT.ctx, sig, msg, self._keypair, aux)
            and _lib.secp256k1_schnorrsig_verify(_CONTEXT.ctx, sig, msg, 32, self._xonly)):
      raise ValueError("schnorr signing failed")
    return bytes(_ffi.buffer(sig, 64)).hex()

  def sign(self, unsigned: Dict[str, Any]) -> Dict[str, Any]:
    """Returns a new signed event dict (pubkey set to this signer's)."""
    event = {
        "pubkey": self.pubkey,
        "created_at": int(unsigned["created_at"]),
        "kind": int(unsigned["kind"]),
        "tags": [[str(v) for v in tag] for tag in unsigned["tags"]],
        "content": str(unsigned.get("content", "")),
    }
    event["id"] = compute_event_id(event)
    event["sig"] = self.sign_id(event["id"])
    return event


# ---------------------------------------------------------------------------
def serialize_for_id(event: Dict[str, Any]) -> bytes:
  return json.dumps(
      [0, event["pubkey"], event["created_at"], event["kind"], event["tags"],
       event["content"]],
      separators=(",", ":"),
      ensure_ascii=False).encode("utf-8")


def compute_event_id(event: Dict[str, Any]) -> str:
  return hashlib.sha256(serialize_for_id(event)).hexdigest()


def sign_event(unsigned: Dict[str, Any], privkey_hex: str) -> Dict[str, Any]:
  return Signer(privkey_hex).sign(unsigned)


def verify_signature(event_id_hex: str, sig_hex: str, pubkey_hex: str) -> bool:
  try:
    key = coincurve.PublicKeyXOnly(bytes.fromhex(pubkey_hex))
    return key.verify(bytes.fromhex(sig_hex), bytes.fromhex(event_id_hex))
  except Exception:  # pylint: disable=broad-except
    return False


def _check_text(value: str, where: str) -> Optional[str]:
  if LONE_SURROGATE.search(value):
    return "%s holds a lone surrogate" % where
  if C0_CONTROL.search(value):
    return "%s holds a C0 control character" % where
  return None


def validate_event(event: Any) -> Optional[str]:
  """Returns None for a well-formed event whose id and signature check, else why not.

  Checks shape and types (NIP-01), text that serialisers disagree on, the id
  recomputed by us, and the BIP-340 signature.
  """
  if not isinstance(event, dict):
    return "event is not a JSON object"
  for field, typ in (("id", str), ("pubkey", str), ("sig", str), ("content", str),
                     ("tags", list)):
    if not isinstance(event.get(field), typ):
      return "field %r missing or not a %s" % (field, typ.__name__)
  for field in ("created_at", "kind"):
    value = event.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
      return "field %r is not an integer" % field
  if not HEX64_RE.match(event["id"]) or not HEX64_RE.match(event["pubkey"]):
    return "id or pubkey is not 64 lowercase hex"
  if not HEX128_RE.match(event["sig"]):
    return "sig is not 128 lowercase hex"
  for tag in event["tags"]:
    if not isinstance(tag, list) or not tag or not all(isinstance(v, str) for v in tag):
      return "tag values must be non-empty lists of strings"
  # One pass over all the text instead of two regular expressions per value (158 ->
  # 133 us per event measured); the per-value pass only runs to name the culprit.
  if SUSPECT_TEXT.search(event["content"]) or SUSPECT_TEXT.search(
      "\n".join(["\n".join(tag) for tag in event["tags"]])):
    problem = _check_text(event["content"], "content")
    if problem:
      return problem
    for tag in event["tags"]:
      for value in tag:
        problem = _check_text(value, "tag %r" % tag[0][:32])
        if problem:
          return problem
  if compute_event_id(event) != event["id"]:
    return "id does not match the event's content (forged or altered id)"
  if not verify_signature(event["id"], event["sig"], event["pubkey"]):
    return "signature does not verify"
  return None


def first_tag_value(tags: List[List[str]], name: str) -> Optional[str]:
  for tag in tags:
    if len(tag) >= 2 and tag[0] == name:
      return tag[1]
  return None


def tag_values(tags: List[List[str]], name: str) -> List[str]:
  return [tag[1] for tag in tags if len(tag) >= 2 and tag[0] == name]
