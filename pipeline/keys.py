"""Keys database tools: encrypt private keys at rest, make a KEK, check a database.

    # A fresh key-encryption key (base64, 32 bytes) for an env var, or a 0600 file:
    export MIGRATION_KEK="$(python -m pipeline.keys generate-kek)"
    python -m pipeline.keys generate-kek --out kek.b64

    # Copy a plaintext keys database into one whose private keys are encrypted:
    python -m pipeline.keys encrypt --in plain.db --out enc.db --kek env:MIGRATION_KEK
    python -m pipeline.keys encrypt --in plain.db --out enc.db --kek file:kek.b64 --keep-bad

    # Count rows, usable keys, refusals by reason, encrypted vs plaintext rows:
    python -m pipeline.keys check --db enc.db --kek env:MIGRATION_KEK

`encrypt` copies the table `user_migrations` (schema and indexes as in the input)
with every private key stored as `enc:v1:...` (see transforms/keys/crypto.py). Each
row is validated first: the private key (hex or nsec, or an `enc:v1` value under
the same KEK) must derive the stored public key. Bad rows are reported on stderr
by row number and username and left out, unless `--keep-bad` keeps them (their
private key encrypted as stored, or NULL when the public key is unusable, so the
output never holds a plaintext key). The output is written with mode 0600 and an
existing output is never overwritten. `--kek` takes any source spec of
transforms/keys/crypto.py (env:, file:, gcp-secret:, gcp-kms:), never a key.

No command prints key material, except `generate-kek` without `--out`, whose only
stdout line is the new KEK.

Exit codes: 0 success; 1 done but some rows are bad or refused; 2 nothing done
(bad arguments, missing input, existing output, unusable KEK).

Also here, for the launcher (pipeline/main.py): `pin_secret_versions`, which turns the
`latest` (or alias) versions of --token-secret and a `gcp-secret:` --kek into numbers
before the graph is built, so every worker reads the version the launcher checked.
"""

import argparse
import base64
import logging
import os
import sqlite3
import stat
import sys
import tempfile
from typing import List, Optional, Tuple

from transforms.clients.secrets import SecretError, pin_secret_version
from transforms.keys.crypto import KEK_BYTES, SPEC_HELP, Decryptor, KekError, is_encrypted, load_kek
from transforms.keys.store import KeyStore, KeyStoreError
from transforms.nostr.event import KeyError_, derive_public_key, parse_private_key, parse_public_key

TABLE = "user_migrations"
_COLUMNS = ("username", "nostr_public_key", "nostr_private_key")


class CliError(RuntimeError):
  """A problem that stops a command before it writes anything."""


def _err(message: str) -> None:
  print(message, file=sys.stderr)


def _quote(name: str) -> str:
  return '"%s"' % name.replace('"', '""')


def _label(username) -> str:
  text = "" if username is None else str(username)
  return repr(text if len(text) <= 64 else text[:61] + "...")


def _read_table(path: str) -> Tuple[List[str], List[str], List[tuple]]:
  """Returns (column names, schema statements, rows) of the keys table."""
  if not os.path.isfile(path):
    raise CliError("input keys database not found: %s" % path)
  try:
    conn = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(path), uri=True)
    try:
      columns = [row[1] for row in conn.execute("PRAGMA table_info(%s)" % TABLE)]
      missing = [c for c in _COLUMNS if c not in columns]
      if missing:
        raise CliError("%s has no table %s with columns %s" % (path, TABLE, ", ".join(_COLUMNS)))
      schema = [row[0] for row in conn.execute(
          "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
          "ORDER BY type = 'index'", (TABLE,))]
      rows = conn.execute("SELECT %s FROM %s" % (", ".join(_quote(c) for c in columns),
                                                 TABLE)).fetchall()
    finally:
      conn.close()
  except sqlite3.Error as exc:
    raise CliError("input keys database %s unusable: %s" % (path, type(exc).__name__)) from None
  return columns, schema, rows


def _encrypt_row(decryptor: Decryptor, stored_pub, stored_priv) -> str:
  """Validates one row and returns its encrypted private key; raises KeyError_ if bad."""
  pubkey = parse_public_key(stored_pub)
  value = decryptor(stored_priv, pubkey) if is_encrypted(stored_priv) else stored_priv
  privkey = parse_private_key(value)
  if derive_public_key(privkey) != pubkey:
    raise KeyError_("private key does not derive the stored public key")
  return decryptor.encrypt(pubkey, privkey)


def _keep_bad_value(decryptor: Decryptor, stored_pub, stored_priv) -> Optional[str]:
  """A bad row's private key as kept: encrypted as stored, or NULL; never plaintext."""
  if stored_priv is None or is_encrypted(stored_priv):
    return stored_priv
  if not isinstance(stored_priv, str) or not stored_priv.strip():
    return None
  try:
    return decryptor.encrypt(parse_public_key(stored_pub), stored_priv)
  except KeyError_:
    return None


def _write_new_db(path: str, schema: List[str], columns: List[str], rows: List[list]) -> None:
  """Writes a new SQLite file with mode 0600; refuses to replace an existing file."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".keys-", suffix=".tmp", dir=directory)  # mode 0600
  os.close(fd)
  try:
    conn = sqlite3.connect(tmp)
    try:
      for statement in schema:
        conn.execute(statement)
      conn.executemany("INSERT INTO %s (%s) VALUES (%s)" % (
          TABLE, ", ".join(_quote(c) for c in columns), ", ".join("?" * len(columns))), rows)
      conn.commit()
    finally:
      conn.close()
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    try:
      os.link(tmp, path)  # atomic, and fails when the output exists
    except FileExistsError:
      raise CliError("output %s already exists; refusing to overwrite it" % path) from None
    except OSError:  # no hard links here: reserve the name, then move the file onto it
      try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
      except FileExistsError:
        raise CliError("output %s already exists; refusing to overwrite it" % path) from None
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def cmd_encrypt(args) -> int:
  if os.path.lexists(args.out):
    raise CliError("output %s already exists; refusing to overwrite it" % args.out)
  decryptor = Decryptor(load_kek(args.kek))
  columns, schema, rows = _read_table(args.inp)
  pub_i, priv_i, user_i = (columns.index(c) for c in
                           ("nostr_public_key", "nostr_private_key", "username"))
  out_rows, bad = [], 0
  for number, row in enumerate(rows, start=1):
    row = list(row)
    try:
      row[priv_i] = _encrypt_row(decryptor, row[pub_i], row[priv_i])
    except KeyError_ as exc:
      bad += 1
      _err("row %d (username %s): %s; %s" % (number, _label(row[user_i]), exc,
                                             "kept" if args.keep_bad else "left out"))
      if not args.keep_bad:
        continue
      row[priv_i] = _keep_bad_value(decryptor, row[pub_i], row[priv_i])
    out_rows.append(row)
  _write_new_db(args.out, schema, columns, out_rows)
  print("encrypted %d of %d rows into %s (mode 0600); %d bad rows %s" % (
      len(rows) - bad, len(rows), args.out, bad, "kept" if args.keep_bad else "left out"))
  print("check it with: python -m pipeline.keys check --db %s --kek %s; then delete the "
        "plaintext database %s securely" % (args.out, args.kek, args.inp))
  return 1 if bad else 0


def cmd_generate_kek(args) -> int:
  encoded = base64.b64encode(os.urandom(KEK_BYTES)).decode("ascii")
  if not args.out:
    print(encoded)
    return 0
  try:
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except FileExistsError:
    raise CliError("output %s already exists; refusing to overwrite it" % args.out) from None
  with os.fdopen(fd, "w") as handle:
    handle.write(encoded + "\n")
  os.chmod(args.out, stat.S_IRUSR | stat.S_IWUSR)
  print("wrote a new KEK to %s (mode 0600); use --kek file:%s" % (args.out, args.out))
  return 0


def cmd_check(args) -> int:
  decryptor = Decryptor(load_kek(args.kek)) if args.kek else None
  try:
    store = KeyStore.load(args.db, decrypt=decryptor)
  except KeyStoreError as exc:
    raise CliError(str(exc)) from None
  refused = sum(store.refused.values())
  mode = stat.S_IMODE(os.stat(args.db).st_mode)
  print("rows: %d" % store.total_rows)
  print("usable keys: %d" % len(store))
  print("refused rows: %d" % refused)
  for reason, count in sorted(store.refused.items()):
    print("  %d: %s" % (count, reason))
  print("duplicate rows (same public key): %d" % (store.total_rows - len(store) - refused))
  print("encrypted rows: %d" % store.encrypted_rows)
  print("plaintext rows: %d" % store.plaintext_rows)
  print("file mode: %04o%s" % (mode, "" if not mode & 0o077 else " (chmod 600 it)"))
  warning = store.storage_warning()
  if warning:
    print("warning: " + warning)
  return 1 if refused else 0


def pin_secret_versions(opts, secret_client=None) -> List[str]:
  """Pins the Secret Manager versions of --token-secret and --kek to numbers, in place.

  Run at launch, before the graph is built: the DoFns are constructed from the pinned
  names, so workers started after a rotation still read the version checked here.

  Args:
    opts: the MigrationOptions view (its token_secret and kek are rewritten).
    secret_client: a Secret Manager client (tests pass a fake); default: made on demand.

  Returns:
    One line per pinned flag, `--kek: versions/latest -> 7` (names only, for the log).

  Raises:
    ConfigError: a version cannot be read; the message names the flag.
  """
  from pipeline.options import ConfigError  # pylint: disable=import-outside-toplevel

  pinned = []
  for flag, attr in (("--token-secret", "token_secret"), ("--kek", "kek")):
    spec = getattr(opts, attr) or ""
    if not spec or (attr == "kek" and not spec.startswith("gcp-secret:")):
      continue
    try:
      new = pin_secret_version(spec, flag, secret_client=secret_client)
    except SecretError as exc:
      raise ConfigError(str(exc)) from None
    if new != spec:
      setattr(opts, attr, new)
      pinned.append("%s: versions/%s -> %s" % (flag, spec.rpartition("/versions/")[2],
                                                new.rpartition("/versions/")[2]))
  return pinned


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipeline.keys",
                                   description="Keys database tools (see the module docstring).")
  sub = parser.add_subparsers(dest="command", required=True)
  enc = sub.add_parser("encrypt", help="copy a keys database with its private keys encrypted")
  enc.add_argument("--in", dest="inp", required=True, help="input keys database (SQLite)")
  enc.add_argument("--out", required=True, help="new output database (must not exist)")
  enc.add_argument("--kek", required=True, help="KEK source: " + SPEC_HELP)
  enc.add_argument("--keep-bad", dest="keep_bad", action="store_true",
                   help="keep rows whose key is unusable (never in plaintext)")
  enc.set_defaults(func=cmd_encrypt)
  gen = sub.add_parser("generate-kek", help="print a fresh base64 KEK (or write a 0600 file)")
  gen.add_argument("--out", default="", help="write the KEK to this new file instead")
  gen.set_defaults(func=cmd_generate_kek)
  chk = sub.add_parser("check", help="count usable, refused, encrypted and plaintext rows")
  chk.add_argument("--db", required=True, help="keys database (SQLite)")
  chk.add_argument("--kek", default="", help="KEK source (" + SPEC_HELP + ")")
  chk.set_defaults(func=cmd_check)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  """Runs one command; returns the exit code (0 ok, 1 bad rows, 2 nothing done)."""
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s",
                      stream=sys.stderr)
  try:
    return args.func(args)
  except (CliError, KekError) as exc:
    _err("error: %s" % exc)
    return 2


if __name__ == "__main__":
  sys.exit(main())
