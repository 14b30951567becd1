"""Signing-key encryption at rest: AES-GCM values and the KEK's sources."""

import base64
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.support.keys import kek_text_forms, key_pair
from tests.support.paths import ROOT
from transforms.keys import crypto as kc
from transforms.nostr import event as ne

# ---------------------------------------------------------------------------
# Values.


def test_round_trip_hex_and_nsec():
  kek = os.urandom(32)
  priv, pub = key_pair()
  for plain in (priv, ne.nsec_encode(priv)):
    stored = kc.encrypt_value(kek, pub, plain)
    assert stored.startswith("enc:v1:") and kc.is_encrypted(stored)
    assert priv not in stored and ne.nsec_encode(priv) not in stored
    raw = base64.urlsafe_b64decode(stored[len("enc:v1:"):] + "==")
    assert len(raw) == 12 + len(plain) + 16
    assert kc.decrypt_value(kek, pub, stored) == plain
    assert kc.decrypt_value(kek, ne.npub_encode(pub), stored) == plain  # same row, npub form
  # fresh nonce every time
  assert kc.encrypt_value(kek, pub, priv) != kc.encrypt_value(kek, pub, priv)
  assert not kc.is_encrypted(priv) and not kc.is_encrypted(None)


def test_tampered_ciphertext_fails():
  kek = os.urandom(32)
  priv, pub = key_pair()
  stored = kc.encrypt_value(kek, pub, priv)
  body = bytearray(base64.urlsafe_b64decode(stored[7:] + "=="))
  for index in (0, 20, len(body) - 1):  # nonce, ciphertext, tag
    altered = bytearray(body)
    altered[index] ^= 0x01
    forged = "enc:v1:" + base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("=")
    with pytest.raises(kc.DecryptError, match="does not decrypt") as err:
      kc.decrypt_value(kek, pub, forged)
    assert priv not in str(err.value)
  for broken, reason in ((stored[:7 + 16], "truncated"), (stored + "!", "base64url"),
                         ("enc:v9:" + stored[7:], "version")):
    with pytest.raises(kc.DecryptError, match=reason):
      kc.decrypt_value(kek, pub, broken)
  assert issubclass(kc.DecryptError, ne.KeyError_) and issubclass(kc.DecryptError, ValueError)


def test_ciphertext_swapped_between_rows_fails():
  kek = os.urandom(32)
  priv_a, pub_a = key_pair()
  priv_b, pub_b = key_pair()
  stored_a = kc.encrypt_value(kek, pub_a, priv_a)
  stored_b = kc.encrypt_value(kek, pub_b, priv_b)
  with pytest.raises(kc.DecryptError, match="moved from another row"):
    kc.decrypt_value(kek, pub_b, stored_a)
  with pytest.raises(kc.DecryptError):
    kc.decrypt_value(kek, pub_a, stored_b)


def test_wrong_kek_fails_without_echo():
  kek, other = os.urandom(32), os.urandom(32)
  priv, pub = key_pair()
  stored = kc.encrypt_value(kek, pub, priv)
  with pytest.raises(kc.DecryptError) as err:
    kc.decrypt_value(other, pub, stored)
  for secret in [priv, stored] + kek_text_forms(kek) + kek_text_forms(other):
    assert secret not in str(err.value)
  with pytest.raises(kc.KekError, match="32 bytes"):
    kc.encrypt_value(kek[:16], pub, priv)


def test_decryptor_never_pickles_or_prints_kek():
  kek = os.urandom(32)
  priv, pub = key_pair()
  decrypt = kc.make_decryptor(kek)
  assert decrypt(kc.encrypt_value(kek, pub, priv), pub) == priv
  for form in kek_text_forms(kek):
    assert form not in repr(decrypt)
  with pytest.raises(TypeError):
    pickle.dumps(decrypt)


def test_module_import_needs_no_gcp_libraries():
  # (an installed nspkg .pth preloads the empty `google.cloud` namespace itself)
  code = ("import sys, transforms.keys.crypto, transforms.keys.store; "
          "bad = [m for m in sys.modules if m.startswith(('google.cloud.', 'apache_beam'))]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------
# KEK sources.


def test_kek_from_env_base64_hex_and_urlsafe(monkeypatch):
  kek = os.urandom(32)
  for text in (base64.b64encode(kek).decode(), kek.hex(), kek.hex().upper(),
               base64.urlsafe_b64encode(kek).decode().rstrip("=") + "\n"):
    monkeypatch.setenv("MIGRATION_KEK", text)
    assert kc.load_kek("env:MIGRATION_KEK") == kek
  monkeypatch.delenv("MIGRATION_KEK")
  with pytest.raises(kc.KekError, match="MIGRATION_KEK is not set"):
    kc.load_kek("env:MIGRATION_KEK")


def test_wrong_length_kek_error_names_kind_not_value(monkeypatch, tmp_path):
  short = os.urandom(16)
  monkeypatch.setenv("MIGRATION_KEK", base64.b64encode(short).decode())
  with pytest.raises(kc.KekError) as err:
    kc.load_kek("env:MIGRATION_KEK")
  assert "env" in str(err.value) and "32 bytes" in str(err.value)
  long_key = os.urandom(48)
  path = tmp_path / "kek"
  path.write_text(long_key.hex())
  path.chmod(0o600)
  with pytest.raises(kc.KekError) as err2:
    kc.load_kek("file:%s" % path)
  assert "file" in str(err2.value)
  for message in (str(err.value), str(err2.value)):
    for form in kek_text_forms(short) + kek_text_forms(long_key):
      assert form not in message and form[:12] not in message


def test_spec_holding_the_key_itself_is_refused_without_echo():
  kek = os.urandom(32)
  for spec in (base64.b64encode(kek).decode(), kek.hex(), "env:" + "ab" * 32,
               "file:" + kek.hex()):
    with pytest.raises(kc.KekError) as err:
      kc.load_kek(spec)
    assert spec.split(":")[-1] not in str(err.value)
  with pytest.raises(kc.KekError, match="one of"):
    kc.load_kek("")
  with pytest.raises(kc.KekError, match="unknown KEK source") as err:
    kc.load_kek("vault:" + kek.hex())
  assert kek.hex() not in str(err.value)


def test_kek_from_file_and_refusal_of_0644(tmp_path):
  kek = os.urandom(32)
  path = tmp_path / "kek.b64"
  path.write_text(base64.b64encode(kek).decode() + "\n")
  path.chmod(0o600)
  assert kc.load_kek("file:%s" % path) == kek
  raw = tmp_path / "kek.bin"
  raw.write_bytes(kek)
  raw.chmod(0o400)
  assert kc.load_kek("file:%s" % raw) == kek
  path.chmod(0o644)
  with pytest.raises(kc.KekError, match="group or others.*0644.*chmod 600"):
    kc.load_kek("file:%s" % path)
  with pytest.raises(kc.KekError, match="not found"):
    kc.load_kek("file:%s" % (tmp_path / "missing"))


class _FakeSecretManager:
  def __init__(self, data):
    self.data, self.names = data, []

  def access_secret_version(self, name):
    self.names.append(name)
    return SimpleNamespace(payload=SimpleNamespace(data=self.data))


class _FakeKms:
  def __init__(self, plaintext):
    self.plaintext, self.requests = plaintext, []

  def decrypt(self, request):
    self.requests.append(request)
    return SimpleNamespace(plaintext=self.plaintext)


def test_kek_from_fake_secret_manager():
  kek = os.urandom(32)
  name = "projects/p1/secrets/migration-kek/versions/latest"
  for data in (base64.b64encode(kek), kek, kek.hex().encode()):
    client = _FakeSecretManager(data)
    assert kc.load_kek("gcp-secret:" + name, secret_client=client) == kek
    assert client.names == [name]
  with pytest.raises(kc.KekError, match="projects/P/secrets/S/versions/V"):
    kc.load_kek("gcp-secret:migration-kek", secret_client=_FakeSecretManager(kek))
  with pytest.raises(kc.KekError, match="gcp-secret.*32 bytes"):
    kc.load_kek("gcp-secret:" + name, secret_client=_FakeSecretManager(b"c2hvcnQ="))

  class Denied:
    def access_secret_version(self, name):
      raise PermissionError("403 Permission denied on %s" % name)
  with pytest.raises(kc.KekError, match="gcp-secret: request failed.*PermissionError"):
    kc.load_kek("gcp-secret:" + name, secret_client=Denied())


def test_kek_from_fake_kms_local_and_gs_paths(tmp_path):
  kek = os.urandom(32)
  wrapped = b"\x0a\x24" + os.urandom(80)  # binary, as `gcloud kms encrypt` writes it
  key_name = "projects/p1/locations/global/keyRings/vine/cryptoKeys/kek"
  path = tmp_path / "kek.wrapped"
  path.write_bytes(wrapped)
  client = _FakeKms(kek)
  assert kc.load_kek("gcp-kms:%s:%s" % (key_name, path), kms_client=client) == kek
  assert client.requests == [{"name": key_name, "ciphertext": wrapped}]

  opened = []

  def fake_open(where, mode):
    opened.append((where, mode))
    path_b64 = tmp_path / "kek.wrapped.b64"
    path_b64.write_text(base64.b64encode(wrapped).decode() + "\n")
    return open(path_b64, mode)

  client = _FakeKms(base64.b64encode(kek))
  spec = "gcp-kms:%s:gs://bucket/keys/kek.wrapped" % key_name
  assert kc.load_kek(spec, kms_client=client, read_file=fake_open) == kek
  assert opened == [("gs://bucket/keys/kek.wrapped", "rb")]
  assert client.requests == [{"name": key_name, "ciphertext": wrapped}]
  with pytest.raises(kc.KekError, match="cryptoKeys/K:WRAPPED_KEK_PATH"):
    kc.load_kek("gcp-kms:%s" % key_name, kms_client=client)
  with pytest.raises(kc.KekError, match="gcp-kms.*32 bytes"):
    kc.load_kek("gcp-kms:%s:%s" % (key_name, path), kms_client=_FakeKms(os.urandom(16)))
