"""One key store per worker process, shared by SignEvent and PublishEvents (NIP-42 AUTH).

Loading a keys database fetches the KEK, copies the database from GCS and decrypts
every key: a 50,000-key database takes about 18 s and 90 MB. Dataflow runs one DoFn
instance per harness thread and stage, so loading in each DoFn's setup() loaded the
same keys once per thread and per stage. `SharedKeyStore.acquire()` loads them once
per process and key (keys database + KEK spec; the spec carries the secret version
pinned at launch, pipeline/keys.py `pin_secret_versions`).

Why not `apache_beam.utils.shared.Shared` itself: a Shared handle is keyed by a uuid
made in its constructor, so SignEventFn and PublishEventsFn, built apart in the graph,
would hold two handles and load twice; and Shared keeps only one object alive per
process (the last acquired), so two handles in fused stages displace each other. This
module keeps Shared's contract (a per-process registry behind a lock, a picklable handle
that holds only names, an object held weakly plus one keep-alive reference) but keys
the registry by what identifies the keys, so every DoFn naming the same keys shares
them. A local database is also keyed by its file identity (inode, size, mtime), so a
long-lived process (local runs, tests) never serves a stale copy of a rewritten file.

Thread safety: one lock guards the registry and one lock per key guards its load, so
threads asking for the same keys wait for the first load instead of loading again,
while a different keys database loads in parallel. A failed load is not remembered:
the next setup() tries again (and raises again, as before).
"""

import os
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

from transforms.keys import store as key_store

_registry_lock = threading.Lock()
_slots: Dict[Tuple[Any, ...], "_Slot"] = {}
# One strong reference to the last store handed out: between bundles no DoFn may hold
# it (a runner may tear instances down), and reloading would cost the whole load again.
_keepalive: Optional[key_store.KeyStore] = None


class _Slot:
  """The load lock and the weakly held store of one key."""

  __slots__ = ("lock", "ref")

  def __init__(self):
    self.lock = threading.Lock()
    self.ref = None


def _identity(keys_db: str, kek_spec: str) -> Tuple[Any, ...]:
  """What names one set of keys in this process: path, KEK spec and local file identity."""
  if "://" in keys_db:
    return (keys_db, kek_spec)
  try:
    info = os.stat(keys_db)
  except OSError:  # the load below raises the usual KeyStoreError
    return (keys_db, kek_spec)
  return (keys_db, kek_spec, info.st_ino, info.st_size, info.st_mtime_ns)


def acquire(keys_db: str, kek_spec: str = "") -> key_store.KeyStore:
  """The process's key store for `keys_db` decrypted under `kek_spec`, loaded at most once.

  Raises:
    KeyStoreError, KekError: as `transforms.keys.store.load_key_store` (nothing cached).
  """
  global _keepalive
  kek_spec = kek_spec or ""
  key = _identity(keys_db, kek_spec)
  with _registry_lock:
    slot = _slots.setdefault(key, _Slot())
  with slot.lock:
    keys = slot.ref() if slot.ref is not None else None
    if keys is None:
      keys = key_store.load_key_store(keys_db, kek_spec)
      slot.ref = weakref.ref(keys)
  with _registry_lock:
    _keepalive = keys
  return keys


def clear() -> None:
  """Forgets every store of this process (tests; a worker never needs it)."""
  global _keepalive
  with _registry_lock:
    _slots.clear()
    _keepalive = None


class SharedKeyStore:
  """A DoFn's handle on the process's key store: picklable, it holds names, never keys.

  Build it in the DoFn's __init__ and call `acquire()` in setup().
  """

  def __init__(self, keys_db: str, kek_spec: str = ""):
    self.keys_db = keys_db  # a path, never key material
    self.kek_spec = kek_spec or ""  # a reference (env:NAME, gcp-secret:...), never the key

  def acquire(self) -> key_store.KeyStore:
    return acquire(self.keys_db, self.kek_spec)

  def __repr__(self):
    return "SharedKeyStore(%r)" % self.keys_db
