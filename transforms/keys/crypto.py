"""Encryption at rest of signing keys: AES-GCM under a key-encryption key (KEK).

A stored private key is either plaintext (64 hex or nsec, as the seed kept it) or

    enc:v1:<base64url(nonce(12) + ciphertext + tag(16))>

encrypted with AES-256-GCM under the KEK, with the row's public key (lowercase hex)
as associated data: a value copied to another row does not decrypt.

The KEK is named by a source spec, and only the spec travels through pipeline
options (never the key):

- `env:NAME`: environment variable holding the KEK as base64 or 64 hex characters.
- `file:PATH`: file holding the same (or 32 raw bytes); refused when group or
  others have any permission on it.
- `gcp-secret:projects/P/secrets/S/versions/V`: a Google Secret Manager version.
- `gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K:PATH`: a KEK wrapped by
  Cloud KMS (raw or base64 ciphertext in a local file or at a gs:// path),
  unwrapped with that key.

GCP client libraries are imported only when such a spec is loaded. No message
raised here holds key material; unknown specs are not echoed, since a mistyped
flag may hold the key itself. A loaded KEK's text forms (base64, base64url, hex)
are registered with `transforms.clients.secrets`, so the sanitisers scrub them.
"""

import base64
import binascii
import os
import re
import stat
from typing import Callable, Optional

from transforms.clients import secrets as secret_values
from transforms.nostr.event import KeyError_, parse_public_key

PREFIX = "enc:v1:"
KEK_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_MAX_KEK_FILE = 64 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
_KMS_KEY_NAME = re.compile(
    r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]+=*$")
SPEC_HELP = ("env:NAME, file:PATH, gcp-secret:projects/P/secrets/S/versions/V or "
             "gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K:WRAPPED_KEK_PATH")


class KekError(ValueError):
  """A KEK source that cannot be used (the message names the source kind, never the key)."""


class DecryptError(KeyError_):
  """A stored private key that does not decrypt (the message never holds key material)."""


def is_encrypted(stored: Optional[str]) -> bool:
  """True when a stored private-key value is in an encrypted form (any `enc:` version)."""
  return isinstance(stored, str) and stored.startswith("enc:")


def _aesgcm(kek: bytes):
  # Imported here so that `is_encrypted` (used by the key store) needs no crypto backend.
  from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # pylint: disable=import-outside-toplevel

  if not isinstance(kek, (bytes, bytearray)) or len(kek) != KEK_BYTES:
    raise KekError("KEK must be exactly %d bytes" % KEK_BYTES)
  return AESGCM(bytes(kek))


def _aad(pubkey_hex: str) -> bytes:
  return parse_public_key(pubkey_hex).encode("ascii")


def _b64url(data: bytes) -> str:
  return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
  return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encrypt(aead, pubkey_hex: str, plaintext_privkey: str) -> str:
  if not isinstance(plaintext_privkey, str) or not plaintext_privkey:
    raise KeyError_("private key to encrypt is empty")
  if is_encrypted(plaintext_privkey):
    raise KeyError_("private key is already encrypted")
  nonce = os.urandom(NONCE_BYTES)
  sealed = aead.encrypt(nonce, plaintext_privkey.encode("utf-8"), _aad(pubkey_hex))
  return PREFIX + _b64url(nonce + sealed)


def _decrypt(aead, pubkey_hex: str, stored: str) -> str:
  from cryptography.exceptions import InvalidTag  # pylint: disable=import-outside-toplevel

  if not is_encrypted(stored):
    raise DecryptError("stored private key is not encrypted")
  if not stored.startswith(PREFIX):
    raise DecryptError("encrypted private key has an unsupported format version")
  body = stored[len(PREFIX):]
  if not _B64.match(body):
    raise DecryptError("encrypted private key is not valid base64url")
  try:
    raw = _unb64url(body)
  except (binascii.Error, ValueError):
    raise DecryptError("encrypted private key is not valid base64url") from None
  if len(raw) < NONCE_BYTES + _TAG_BYTES + 1:
    raise DecryptError("encrypted private key is truncated")
  try:
    plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(pubkey_hex))
  except InvalidTag:
    raise DecryptError("encrypted private key does not decrypt under this KEK (wrong KEK, "
                       "altered value, or value moved from another row)") from None
  try:
    return plain.decode("utf-8")
  except UnicodeDecodeError:
    raise DecryptError("decrypted private key is not text") from None


def encrypt_value(kek: bytes, pubkey_hex: str, plaintext_privkey: str) -> str:
  """Encrypts one private key for storage in the row of `pubkey_hex`.

  Args:
    kek: the 32-byte key-encryption key.
    pubkey_hex: the row's public key (64 hex or npub; bound as associated data).
    plaintext_privkey: the stored private-key text (hex or nsec), kept as given.

  Returns:
    `enc:v1:<base64url(nonce + ciphertext + tag)>`, fresh nonce per call.
  """
  return _encrypt(_aesgcm(kek), pubkey_hex, plaintext_privkey)


def decrypt_value(kek: bytes, pubkey_hex: str, stored: str) -> str:
  """Decrypts a value made by `encrypt_value` for the same row.

  Raises:
    DecryptError: wrong KEK, altered or moved value, unknown version, bad encoding.
  """
  return _decrypt(_aesgcm(kek), pubkey_hex, stored)


class Decryptor:
  """`decrypt(stored, pubkey_hex) -> plaintext` for `KeyStore.load`; holds the KEK.

  Built in a DoFn's setup(); it refuses to be pickled and its repr shows no key.
  """

  __slots__ = ("_aead",)

  def __init__(self, kek: bytes):
    self._aead = _aesgcm(kek)

  def __call__(self, stored: str, pubkey_hex: str) -> str:
    return _decrypt(self._aead, pubkey_hex, stored)

  def encrypt(self, pubkey_hex: str, plaintext_privkey: str) -> str:
    return _encrypt(self._aead, pubkey_hex, plaintext_privkey)

  def __repr__(self):
    return "Decryptor(AES-256-GCM)"

  def __reduce__(self):
    raise TypeError("Decryptor holds a key-encryption key and must never be pickled")


def make_decryptor(kek: bytes) -> Callable[[str, str], str]:
  """Returns a callable `(stored, pubkey_hex) -> plaintext` for `KeyStore.load(decrypt=)`."""
  return Decryptor(kek)


# ---------------------------------------------------------------------------
# KEK sources.
def _looks_like_kek(text: str) -> bool:
  try:
    _decode_kek(text.encode("utf-8"), "spec", allow_raw=False)
    return True
  except KekError:
    return False


def _decode_kek(data: bytes, kind: str, allow_raw: bool) -> bytes:
  """base64 (standard or url-safe), 64 hex, or (when allowed) 32 raw bytes -> 32 bytes."""
  if allow_raw and len(data) == KEK_BYTES:
    return bytes(data)
  try:
    text = bytes(data).decode("ascii").strip()
  except UnicodeDecodeError:
    raise KekError("KEK from %s must be exactly %d bytes (raw, base64 or 64 hex)"
                   % (kind, KEK_BYTES)) from None
  if _HEX64.match(text):
    return bytes.fromhex(text)
  if not text or not _B64.match(text):
    raise KekError("KEK from %s must be %d bytes as base64 or 64 hex characters"
                   % (kind, KEK_BYTES))
  try:
    key = _unb64url(text.rstrip("=").replace("+", "-").replace("/", "_"))
  except (binascii.Error, ValueError):
    raise KekError("KEK from %s is not valid base64" % kind) from None
  if len(key) != KEK_BYTES:
    raise KekError("KEK from %s must decode to exactly %d bytes (got %d)"
                   % (kind, KEK_BYTES, len(key)))
  return key


def _read_bytes(path: str, read_file) -> bytes:
  if path.startswith("gs://") and read_file is open:
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
  else:
    handle = read_file(path, "rb")
  with handle:
    data = handle.read(_MAX_KEK_FILE + 1)
  if len(data) > _MAX_KEK_FILE:
    raise KekError("KEK file %s is too large to be a key" % path)
  return data


def _from_env(name: str) -> bytes:
  if not _ENV_NAME.match(name):
    raise KekError("env: KEK source needs an environment variable name (env:NAME)")
  value = os.environ.get(name)
  if not value:
    raise KekError("KEK environment variable %s is not set or empty" % name)
  return _decode_kek(value.encode("utf-8"), "env", allow_raw=False)


def _from_file(path: str, read_file) -> bytes:
  if not path:
    raise KekError("file: KEK source needs a path (file:PATH)")
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise KekError("KEK file not found: %s" % path) from None
  except OSError as exc:
    raise KekError("KEK file %s cannot be read (%s)" % (path, type(exc).__name__)) from None
  if mode & (stat.S_IRWXG | stat.S_IRWXO):
    raise KekError("KEK file %s is accessible by group or others (mode %04o); "
                   "chmod 600 it" % (path, stat.S_IMODE(mode)))
  try:
    data = _read_bytes(path, read_file)
  except OSError as exc:
    raise KekError("KEK file %s cannot be read (%s)" % (path, type(exc).__name__)) from None
  return _decode_kek(data, "file", allow_raw=True)


def _client_failure(kind: str, exc: Exception) -> KekError:
  # Client errors name resources and permissions, not payloads; keep the first line only.
  detail = (str(exc).splitlines() or [""])[0][:200]
  return KekError("%s: request failed (%s: %s)" % (kind, type(exc).__name__, detail))


def _from_secret_manager(name: str, client) -> bytes:
  if not _SECRET_NAME.match(name):
    raise KekError("gcp-secret KEK source must be projects/P/secrets/S/versions/V")
  if client is None:
    from google.cloud import secretmanager  # pylint: disable=import-outside-toplevel

    client = secretmanager.SecretManagerServiceClient()
  try:
    response = client.access_secret_version(name=name)
  except Exception as exc:  # pylint: disable=broad-except
    raise _client_failure("gcp-secret", exc) from None
  return _decode_kek(bytes(response.payload.data), "gcp-secret", allow_raw=True)


def _wrapped_ciphertext(data: bytes) -> bytes:
  """Raw KMS ciphertext as `gcloud kms encrypt` writes it, or its base64 text."""
  try:
    text = data.decode("ascii").strip()
  except UnicodeDecodeError:
    return data
  if text and _B64.match(text):
    try:
      return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
      return data
  return data


def _from_kms(rest: str, client, read_file) -> bytes:
  name, sep, path = rest.partition(":")
  if not sep or not _KMS_KEY_NAME.match(name) or not path:
    raise KekError("gcp-kms KEK source must be "
                   "projects/P/locations/L/keyRings/R/cryptoKeys/K:WRAPPED_KEK_PATH")
  try:
    wrapped = _wrapped_ciphertext(_read_bytes(path, read_file))
  except OSError as exc:
    raise KekError("gcp-kms: wrapped KEK %s cannot be read (%s)"
                   % (path, type(exc).__name__)) from None
  if not wrapped:
    raise KekError("gcp-kms: wrapped KEK %s is empty" % path)
  if client is None:
    from google.cloud import kms  # pylint: disable=import-outside-toplevel

    client = kms.KeyManagementServiceClient()
  try:
    response = client.decrypt(request={"name": name, "ciphertext": wrapped})
  except Exception as exc:  # pylint: disable=broad-except
    raise _client_failure("gcp-kms", exc) from None
  return _decode_kek(bytes(response.plaintext), "gcp-kms", allow_raw=True)


def _register_kek(kek: bytes) -> bytes:
  """Registers the KEK's text forms for redaction; returns the KEK."""
  for form in (base64.b64encode(kek).decode("ascii"), _b64url(kek), kek.hex(), kek.hex().upper()):
    secret_values.register(form)
    secret_values.register(form.rstrip("="))
  return kek


def load_kek(spec: str, secret_client=None, kms_client=None, read_file=open) -> bytes:
  """Loads the 32-byte KEK named by a source spec.

  Args:
    spec: `env:NAME`, `file:PATH`, `gcp-secret:<version name>` or
      `gcp-kms:<crypto key name>:<wrapped KEK path>` (see the module docstring).
    secret_client: a Secret Manager client (tests pass a fake); default: a new
      `SecretManagerServiceClient`.
    kms_client: a Cloud KMS client (tests pass a fake); default: a new
      `KeyManagementServiceClient`.
    read_file: `open`-like callable for local files (gs:// paths use Beam's
      FileSystems while this is the builtin `open`).

  Returns:
    The KEK bytes.

  Raises:
    KekError: unknown spec kind, unreachable source, or a value that is not 32 bytes.
  """
  spec = (spec or "").strip()
  kind, sep, rest = spec.partition(":")
  if not sep:
    if spec and _looks_like_kek(spec):
      raise KekError("the KEK option holds a key, not a source; put the key in an env var "
                     "or file and pass env:NAME or file:PATH")
    raise KekError("KEK source must be one of " + SPEC_HELP)
  if kind in ("env", "file") and _looks_like_kek(rest):
    raise KekError("the %s: KEK source holds a key, not a %s; pass %s" % (
        kind, "variable name" if kind == "env" else "path",
        "env:NAME" if kind == "env" else "file:PATH"))
  if kind == "env":
    return _register_kek(_from_env(rest))
  if kind == "file":
    return _register_kek(_from_file(rest, read_file))
  if kind == "gcp-secret":
    return _register_kek(_from_secret_manager(rest, secret_client))
  if kind == "gcp-kms":
    return _register_kek(_from_kms(rest, kms_client, read_file))
  raise KekError("unknown KEK source kind; expected " + SPEC_HELP)


def decryptor_for_spec(spec: Optional[str], **clients) -> Optional[Decryptor]:
  """`make_decryptor(load_kek(spec))`, or None when no KEK is configured (plaintext keys)."""
  if not spec:
    return None
  return Decryptor(load_kek(spec, **clients))
