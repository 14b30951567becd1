"""`python -m pipeline.keys`: encrypt, check and generate-kek; no key ever printed, files 0600."""

import base64
import os
import sqlite3
import stat
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import keys as keys_cli
from pipeline.options import ConfigError, MigrationOptions
from tests.support.keys import kek_text_forms, key_pair, make_keys_db, tiny_keys_db
from tests.support.paths import ROOT
from tests.support.security import KEK, KEK_ENV, FakeSecretManager
from transforms.keys import crypto as kc
from transforms.keys.store import NO_KEK_REASON, KeyStore
from transforms.nostr import event as ne


def _stored(path):
  conn = sqlite3.connect(path)
  rows = conn.execute("SELECT username, nostr_public_key, nostr_private_key "
                      "FROM user_migrations").fetchall()
  conn.close()
  return rows


def test_cli_encrypt_end_to_end(tmp_path, monkeypatch, capsys):
  kek = os.urandom(32)
  monkeypatch.setenv("MIGRATION_KEK", base64.b64encode(kek).decode())
  good = [key_pair() for _ in range(3)]
  nsec_priv, nsec_pub = key_pair()
  (mis_priv, _), (_, mis_pub) = key_pair(), key_pair()
  npub_pub = key_pair()[1]
  rows = [("u%d" % i, pub, priv) for i, (priv, pub) in enumerate(good)]
  rows += [("nsec user", nsec_pub, ne.nsec_encode(nsec_priv)),
           ("mismatch", mis_pub, mis_priv),                      # row 5
           ("npub here", npub_pub, ne.npub_encode(npub_pub)),    # row 6
           ("short", good[0][1] + "x", good[0][0][:40])]         # row 7
  plain, enc = str(tmp_path / "plain.db"), str(tmp_path / "enc.db")
  make_keys_db(plain, rows)
  secrets = [p for p, _ in good] + [nsec_priv, mis_priv, good[0][0][:40]]
  secrets += [ne.nsec_encode(p) for p in secrets[:5]] + kek_text_forms(kek)

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
  priv, pub = key_pair()
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


def test_keys_tool_writes_0600_files_whatever_the_umask(tmp_path, monkeypatch):
  plain = str(tmp_path / "plain.db")
  tiny_keys_db(plain, 0o600)
  monkeypatch.setenv(KEK_ENV, base64.b64encode(KEK).decode())
  old = os.umask(0)
  try:
    assert keys_cli.main(["encrypt", "--in", plain, "--out", str(tmp_path / "enc.db"),
                          "--kek", "env:" + KEK_ENV]) == 0
    assert keys_cli.main(["generate-kek", "--out", str(tmp_path / "kek.b64")]) == 0
  finally:
    os.umask(old)
  for name in ("enc.db", "kek.b64"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".keys-")]  # no temp left


def test_launch_pins_latest_secret_versions_for_the_workers_and_keeps_other_specs():
  opts = PipelineOptions([
      "--token-secret=projects/p1/secrets/tok/versions/latest",
      "--kek=gcp-secret:projects/p1/secrets/kek/versions/latest"]).view_as(MigrationOptions)
  client = FakeSecretManager(data=b"x" * 32, current=12)
  lines = keys_cli.pin_secret_versions(opts, secret_client=client)
  assert opts.token_secret == "projects/p1/secrets/tok/versions/12"
  assert opts.kek == "gcp-secret:projects/p1/secrets/kek/versions/12"
  assert len(lines) == 2 and all("latest -> 12" in line for line in lines)
  # What the graph is built from (and the workers get) is the pinned name.
  assert opts.view_as(MigrationOptions).token_secret.endswith("/versions/12")
  assert keys_cli.pin_secret_versions(opts, secret_client=client) == [] and len(client.names) == 2

  for kek in ("env:SOME_VAR", "file:/nowhere"):  # not Secret Manager: untouched, no call
    other = PipelineOptions(["--kek=" + kek]).view_as(MigrationOptions)
    other.token_secret = ""
    assert keys_cli.pin_secret_versions(other, secret_client=FakeSecretManager(
        error=AssertionError("no call"))) == [] and other.kek == kek
  refused = PipelineOptions(["--token-secret=projects/p/secrets/t/versions/latest"]).view_as(
      MigrationOptions)
  with pytest.raises(ConfigError, match="--token-secret"):
    keys_cli.pin_secret_versions(refused, secret_client=FakeSecretManager(error=RuntimeError("denied")))
