"""Checks a run's configuration before any work: files, folders, the keys database, the lock.

`pipeline/options.py` validates what the flags say (URLs, numbers, required values);
this module looks at what they point to, on the launcher's machine, before the
pipeline is built and before any call is made:

- the keys database (`--keys-db`) is an SQLite file this process can read, not locked
  by another process, with the table `user_migrations` and at least one usable key
  (read with transforms/keys/store.py, as the signing stage will read it);
- `--rows`, `--events-file`, `--replay-from` name readable files (not folders);
- `--output-dir` is a folder (or can be made one) this process can write in, with
  MIN_FREE_BYTES free, and the run's own folder, when it exists, too;
- no other run is using the same `--output-dir`: a lock file (LOCK_FILE, holding the
  pid) is taken for the run and released at its end; the lock of a process that no
  longer exists is taken over.

A failure raises options.ConfigError naming the flag and the real reason, which
main.py prints and exits 2 with, like every other configuration error. Remote paths
(gs://, a Dataflow run) are left to the runner: only what the launcher can see is checked.
"""

import atexit
import glob
import json
import logging
import os
import shutil
import socket
import sqlite3
import tempfile
from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import dry_run
from pipeline.options import MODE_REPLAY, ConfigError, MigrationOptions
from transforms.core.text import utc_now_iso
from transforms.keys import shared_store
from transforms.keys.store import KeyStoreError

_LOG = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
# The records of a run (dead letters, results, monitor log, summary) of a large corpus
# take tens of MB; below this a run would fail late, after publishing.
MIN_FREE_BYTES = 64 * 1024 * 1024
KEYS_TABLE = "user_migrations"
_SQLITE_HEADER = b"SQLite format 3\x00"
# How long the check waits for a keys database another process holds locked.
_LOCK_WAIT_SECONDS = 1.0


def check(opts: MigrationOptions, options: PipelineOptions, run_id: str = "") -> None:
  """Every check of the module docstring; takes the output folder's lock last.

  Args:
    opts: the validated options.
    options: all options (a dry run takes no lock).
    run_id: --run-id when given (its folder may exist already), else "".

  Raises:
    ConfigError: the flag at fault and why.
  """
  if opts.mode == MODE_REPLAY:
    if not opts.replay_from.startswith("bq:"):
      check_input_files("--replay-from", opts.replay_from)
  elif opts.rows is not None:
    check_input_files("--rows", opts.rows)
  if opts.events_file:
    check_input_files("--events-file", opts.events_file)
  if opts.keys_db and not _remote(opts.keys_db):
    check_keys_db(opts.keys_db, opts.kek)
  if _remote(opts.output_dir):
    return
  if dry_run.is_dry_run(options):  # a dry run writes nothing: no folder made, no lock
    check_output_dir(opts.output_dir, run_id, write=False)
    return
  check_output_dir(opts.output_dir, run_id)
  acquire_lock(opts.output_dir, run_id)


def _remote(path: str) -> bool:
  return "://" in (path or "")


def _reason(exc: OSError) -> str:
  return exc.strerror or type(exc).__name__


def check_input_files(flag: str, pattern: str) -> None:
  """`pattern` (a path or glob) matches at least one file, and only readable files."""
  if _remote(pattern):
    return
  if os.path.isdir(pattern):
    raise ConfigError("%s: %s is a folder, not a file (give the file, or a glob such as "
                      "%s)" % (flag, pattern, os.path.join(pattern, "*.ndjson")))
  matches = sorted(glob.glob(pattern))
  if not matches:
    raise ConfigError("%s: no file matches %s" % (flag, pattern))
  for path in matches:
    if os.path.isdir(path):
      raise ConfigError("%s: %s matches the folder %s; it must match files only"
                        % (flag, pattern, path))
    try:
      with open(path, "rb") as f:
        f.read(1)
    except OSError as exc:
      raise ConfigError("%s: %s cannot be read (%s)" % (flag, path, _reason(exc))) from None


def check_keys_db(path: str, kek: str = "") -> None:
  """The keys database is usable: SQLite, readable, not locked, the table, a usable key."""
  flag = "--keys-db"
  if os.path.isdir(path):
    raise ConfigError("%s: %s is a folder, not an SQLite file" % (flag, path))
  try:
    with open(path, "rb") as f:
      header = f.read(len(_SQLITE_HEADER))
  except OSError as exc:
    raise ConfigError("%s: %s cannot be read (%s)" % (flag, path, _reason(exc))) from None
  if not header:
    raise ConfigError("%s: %s is empty (0 bytes), not a keys database" % (flag, path))
  if header != _SQLITE_HEADER:
    raise ConfigError("%s: %s is not an SQLite database" % (flag, path))
  rows = _count_rows(path)
  if rows == 0:
    raise ConfigError("%s: %s has no keys (table %s is empty)" % (flag, path, KEYS_TABLE))
  if kek and kek.split(":", 1)[0] not in ("env", "file"):
    return  # a cloud KEK: the workers read it; the launcher may have no access
  try:
    # Through the process's shared store: a local run's SignEvent then finds them loaded.
    store = shared_store.acquire(path, kek)
  except (KeyStoreError, ValueError) as exc:
    raise ConfigError("%s: %s" % (flag, exc)) from None
  if len(store) == 0:
    reasons = "; ".join("%d x %s" % (n, r) for r, n in sorted(store.refused.items()))
    raise ConfigError("%s: %s has %d rows but no usable key (%s)" % (flag, path, rows, reasons))


def _count_rows(path: str) -> int:
  """Rows of the keys table; a locked or broken database says so in words."""
  flag = "--keys-db"
  try:
    conn = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(path), uri=True,
                           timeout=_LOCK_WAIT_SECONDS)
    try:
      return conn.execute("SELECT COUNT(*) FROM %s" % KEYS_TABLE).fetchone()[0]
    finally:
      conn.close()
  except sqlite3.Error as exc:
    text = str(exc)
    if "locked" in text or "busy" in text:
      raise ConfigError("%s: %s is locked by another process (%s); stop that process or "
                        "copy the database" % (flag, path, text)) from None
    if "no such table" in text:
      raise ConfigError("%s: %s has no table %s" % (flag, path, KEYS_TABLE)) from None
    raise ConfigError("%s: %s is unusable (%s)" % (flag, path, text)) from None


def check_output_dir(output_dir: str, run_id: str, write: bool = True) -> None:
  """`output_dir` is (or can become) a writable folder with room for the records.

  Args:
    output_dir: --output-dir.
    run_id: --run-id when given, else "".
    write: make the folder and probe it with a file; False (a dry run) only asks
      the system (os.access) about the folder or, when absent, its nearest parent.
  """
  flag = "--output-dir"
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ConfigError("%s: %s is a file, not a folder" % (flag, output_dir))
  folder = output_dir
  if write:
    try:
      os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
      raise ConfigError("%s: %s cannot be created (%s)"
                        % (flag, output_dir, _reason(exc))) from None
  else:
    while not os.path.exists(folder) and os.path.dirname(os.path.abspath(folder)) != folder:
      folder = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(folder):
      raise ConfigError("%s: %s cannot be created: %s is a file" % (flag, output_dir, folder))
  _check_writable(flag, folder, write)
  run_dir = os.path.join(output_dir, run_id) if run_id else ""
  if run_dir and os.path.exists(run_dir):
    if not os.path.isdir(run_dir):
      raise ConfigError("%s: the run folder %s is a file" % (flag, run_dir))
    _check_writable(flag, run_dir, write)
  free = shutil.disk_usage(folder).free
  if free < MIN_FREE_BYTES:
    raise ConfigError("%s: only %d MiB free on the disk of %s; a run's records need at least "
                      "%d MiB" % (flag, free // 2**20, output_dir, MIN_FREE_BYTES // 2**20))


def _check_writable(flag: str, folder: str, probe: bool = True) -> None:
  if not probe:
    if not os.access(folder, os.W_OK | os.X_OK):
      raise ConfigError("%s: %s is not writable" % (flag, folder))
    return
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as exc:
    raise ConfigError("%s: %s is not writable (%s)" % (flag, folder, _reason(exc))) from None


# ---------------------------------------------------------------------------
# The output folder's lock.

_held = set()  # lock files this process holds


def lock_path(output_dir: str) -> str:
  return os.path.join(output_dir, LOCK_FILE)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process
  try:  # a killed run its parent has not reaped yet is a zombie: dead
    with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _holder(path: str) -> Optional[dict]:
  """What the lock file says, or None when it is gone, garbled or its process is dead."""
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
    pid = int(info["pid"])
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError):
    return None  # a half-written or foreign file: no live holder to respect
  if info.get("host") not in (None, socket.gethostname()):
    return info  # another machine's run (a shared disk): its pid means nothing here
  if pid == os.getpid() or not _alive(pid):
    return None  # our own earlier run in this process, or a dead one: stale
  return info


def acquire_lock(output_dir: str, run_id: str) -> None:
  """Takes the output folder's lock for this run, or refuses naming the run that holds it."""
  path = lock_path(output_dir)
  info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
          "started_at": utc_now_iso()}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _holder(path)
      if holder is not None:
        raise ConfigError(
            "--output-dir: another run is using %s (run %s, pid %s on %s, started %s); wait "
            "for it to end or use another --output-dir (its lock: %s)"
            % (output_dir, holder.get("run_id"), holder.get("pid"), holder.get("host"),
               holder.get("started_at"), path)) from None
      _LOG.warning("taking over the stale lock %s (its run is no longer running)", path)
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
      continue
    except OSError as exc:
      raise ConfigError("--output-dir: cannot create the lock %s (%s)"
                        % (path, _reason(exc))) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(info, f)
    _held.add(path)
    return
  raise ConfigError("--output-dir: could not take the lock %s (other runs keep taking it)"
                    % path)


def release_lock() -> None:
  """Removes the lock files this process holds (the run ended, however it ended)."""
  for path in list(_held):
    _held.discard(path)
    try:
      with open(path, encoding="utf-8") as f:
        mine = int(json.load(f).get("pid", -1)) == os.getpid()
    except (OSError, ValueError, TypeError, AttributeError):
      mine = False
    if mine:
      try:
        os.remove(path)
      except OSError:
        pass


atexit.register(release_lock)
