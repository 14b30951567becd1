"""Tests of signing-key encryption at rest: AES-GCM values, KEK sources, the keys CLI."""

import base64
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pipeline import keys as keys_cli
from transforms.keys import crypto as kc
from transforms.nostr import event as ne
from tests.conftest import make_keys_db
from transforms.keys.store import NO_KEK_REASON, KeyStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pair():
  priv = ne.generate_private_key()
  return priv, ne.derive_public_key(priv)


def _kek_forms(kek: bytes):
  """Every textual form a KEK might leak in."""
  return [kek.hex(), kek.hex().upper(), base64.b64encode(kek).decode(),
          base64.urlsafe_b64encode(kek).decode().rstrip("=")]


def _stored(path):
  conn = sqlite3.connect(path)
  rows = conn.execute("SELECT username, nostr_public_key, nostr_private_key "
                      "FROM user_migrations").fetchall()
  conn.close()
  return rows


# ---------------------------------------------------------------------------
# Values.
def test_round_trip_hex_and_nsec():
  kek = os.urandom(32)
  priv, pub = _pair()
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
  priv, pub = _pair()
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
  priv_a, pub_a = _pair()
  priv_b, pub_b = _pair()
  stored_a = kc.encrypt_value(kek, pub_a, priv_a)
  stored_b = kc.encrypt_value(kek, pub_b, priv_b)
  with pytest.raises(kc.DecryptError, match="moved from another row"):
    kc.decrypt_value(kek, pub_b, stored_a)
  with pytest.raises(kc.DecryptError):
    kc.decrypt_value(kek, pub_a, stored_b)


def test_wrong_kek_fails_without_echo():
  kek, other = os.urandom(32), os.urandom(32)
  priv, pub = _pair()
  stored = kc.encrypt_value(kek, pub, priv)
  with pytest.raises(kc.DecryptError) as err:
    kc.decrypt_value(other, pub, stored)
  for secret in [priv, stored] + _kek_forms(kek) + _kek_forms(other):
    assert secret not in str(err.value)
  with pytest.raises(kc.KekError, match="32 bytes"):
    kc.encrypt_value(kek[:16], pub, priv)


def test_decryptor_never_pickles_or_prints_kek():
  kek = os.urandom(32)
  priv, pub = _pair()
  decrypt = kc.make_decryptor(kek)
  assert decrypt(kc.encrypt_value(kek, pub, priv), pub) == priv
  for form in _kek_forms(kek):
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
    for form in _kek_forms(short) + _kek_forms(long_key):
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


# ---------------------------------------------------------------------------
# The key store with encrypted databases.
def test_key_store_encrypted_db_without_kek_refuses_rows(tmp_path, caplog):
  kek = os.urandom(32)
  (priv_a, pub_a), (priv_b, pub_b) = _pair(), _pair()
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
  (priv_a, pub_a), (priv_b, pub_b), (priv_c, pub_c) = _pair(), _pair(), _pair()
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


# ---------------------------------------------------------------------------
# The CLI.
def test_cli_encrypt_end_to_end(tmp_path, monkeypatch, capsys):
  kek = os.urandom(32)
  monkeypatch.setenv("MIGRATION_KEK", base64.b64encode(kek).decode())
  good = [_pair() for _ in range(3)]
  nsec_priv, nsec_pub = _pair()
  (mis_priv, _), (_, mis_pub) = _pair(), _pair()
  npub_pub = _pair()[1]
  rows = [("u%d" % i, pub, priv) for i, (priv, pub) in enumerate(good)]
  rows += [("nsec user", nsec_pub, ne.nsec_encode(nsec_priv)),
           ("mismatch", mis_pub, mis_priv),                      # row 5
           ("npub here", npub_pub, ne.npub_encode(npub_pub)),    # row 6
           ("short", good[0][1] + "x", good[0][0][:40])]         # row 7
  plain, enc = str(tmp_path / "plain.db"), str(tmp_path / "enc.db")
  make_keys_db(plain, rows)
  secrets = [p for p, _ in good] + [nsec_priv, mis_priv, good[0][0][:40]]
  secrets += [ne.nsec_encode(p) for p in secrets[:5]] + _kek_forms(kek)

  code = keys_cli.main(["encrypt", "--in", plain, "--out", enc, "--kek", "env:MIGRATION_KEK"])
  out, err = capsys.readouterr()
  assert code == 1  # written, with bad rows
  assert "encrypted 4 of 7 rows" in out
  assert "row 5 (username 'mismatch'): private key does not derive" in err
  assert "row 6 (username 'npub here'): an npub" in err
  assert "row 7 (username 'short')" in err and "left out" in err
  assert stat.S_IMODE(os.stat(enc).st_mode) == 0o600
  with open(enc, "rb") as handle:
    data = handle.read()
  for secret in secrets:
    assert secret.encode() not in data and secret.upper().encode() not in data
    assert secret not in out and secret not in err

  stored = _stored(enc)
  assert [r[0] for r in stored] == ["u0", "u1", "u2", "nsec user"]
  assert all(kc.is_encrypted(r[2]) for r in stored)
  decrypted = KeyStore.load(enc, decrypt=kc.make_decryptor(kek))
  original = KeyStore.load(plain)
  assert len(decrypted) == len(original) == 4
  event = {"kind": 1, "created_at": 5, "tags": [], "content": "x"}
  for pub in [p for _, p in good] + [nsec_pub]:
    signed = decrypted.signer_for(pub).sign(event)
    assert signed["pubkey"] == pub == original.signer_for(pub).pubkey
    assert ne.validate_event(signed) is None
  assert decrypted.plaintext_rows == 0 and decrypted.encrypted_rows == 4

  # never overwrites, even with the same arguments
  code = keys_cli.main(["encrypt", "--in", plain, "--out", enc, "--kek", "env:MIGRATION_KEK"])
  assert code == 2 and "already exists" in capsys.readouterr().err
  assert _stored(enc) == stored

  # --keep-bad keeps the rows, with no plaintext key in them
  kept = str(tmp_path / "kept.db")
  assert keys_cli.main(["encrypt", "--in", plain, "--out", kept, "--kek", "env:MIGRATION_KEK",
                        "--keep-bad"]) == 1
  capsys.readouterr()
  kept_rows = _stored(kept)
  assert len(kept_rows) == 7
  with open(kept, "rb") as handle:
    data = handle.read()
  for secret in secrets:
    assert secret.encode() not in data
  assert kept_rows[6][2] is None  # public key unusable: nothing to bind the value to

  # check: counts, no keys printed
  assert keys_cli.main(["check", "--db", kept, "--kek", "env:MIGRATION_KEK"]) == 1
  out, err = capsys.readouterr()
  assert "rows: 7" in out and "usable keys: 4" in out and "refused rows: 3" in out
  assert "encrypted rows: 6" in out and "file mode: 0600" in out
  assert "1: an npub" in out and "1: private key does not derive" in out
  assert keys_cli.main(["check", "--db", enc]) == 1
  out, err = capsys.readouterr()
  assert "4: %s" % NO_KEK_REASON in out
  assert keys_cli.main(["check", "--db", plain]) == 1
  out, err = capsys.readouterr()
  assert "plaintext rows: 7" in out and "warning: keys database is plaintext" in out
  for secret in secrets:
    assert secret not in out and secret not in err


def test_cli_encrypt_errors_write_nothing(tmp_path, monkeypatch, capsys):
  priv, pub = _pair()
  plain, enc = str(tmp_path / "plain.db"), str(tmp_path / "enc.db")
  make_keys_db(plain, [("a", pub, priv)])
  monkeypatch.delenv("MIGRATION_KEK", raising=False)
  assert keys_cli.main(["encrypt", "--in", plain, "--out", enc, "--kek", "env:MIGRATION_KEK"]) == 2
  assert "MIGRATION_KEK is not set" in capsys.readouterr().err
  kek_file = tmp_path / "kek"
  kek_file.write_text(os.urandom(32).hex())
  kek_file.chmod(0o644)
  assert keys_cli.main(["encrypt", "--in", plain, "--out", enc, "--kek",
                        "file:%s" % kek_file]) == 2
  assert "chmod 600" in capsys.readouterr().err
  kek_file.chmod(0o600)
  assert keys_cli.main(["encrypt", "--in", str(tmp_path / "none.db"), "--out", enc, "--kek",
                        "file:%s" % kek_file]) == 2
  assert "not found" in capsys.readouterr().err
  assert not os.path.exists(enc)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keys-")] == []
  assert keys_cli.main(["encrypt", "--in", plain, "--out", enc, "--kek",
                        "file:%s" % kek_file]) == 0
  assert "encrypted 1 of 1 rows" in capsys.readouterr().out


def test_cli_generate_kek(tmp_path):
  result = subprocess.run([sys.executable, "-m", "pipeline.keys", "generate-kek"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  lines = result.stdout.splitlines()
  assert len(lines) == 1 and len(base64.b64decode(lines[0], validate=True)) == 32
  env = dict(os.environ, MIGRATION_KEK=lines[0])
  assert subprocess.run([sys.executable, "-c", "from transforms.keys.crypto import load_kek; "
                         "assert len(load_kek('env:MIGRATION_KEK')) == 32"], cwd=ROOT,
                        env=env, check=True).returncode == 0
  out = tmp_path / "kek.b64"
  assert keys_cli.main(["generate-kek", "--out", str(out)]) == 0
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
  assert len(kc.load_kek("file:%s" % out)) == 32
  assert keys_cli.main(["generate-kek", "--out", str(out)]) == 2
