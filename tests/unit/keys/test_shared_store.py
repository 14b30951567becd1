"""Tests for transforms.keys.shared_store: the keys are loaded once per process and key."""

import pickle
import threading
import time

import pytest

from tests.support.keys import key_pair, make_keys_db
from transforms.keys import shared_store, store
from transforms.stages.publish import PublishEventsFn
from transforms.stages.sign import SignEventFn


@pytest.fixture(autouse=True)
def fresh_registry():
  shared_store.clear()
  yield
  shared_store.clear()


@pytest.fixture
def counted_loads(monkeypatch):
  """Counts the real loads (slowed down, so that threads really overlap)."""
  calls = []
  real = store.load_key_store

  def load(keys_db, kek_spec=""):
    calls.append((keys_db, kek_spec))
    time.sleep(0.05)
    return real(keys_db, kek_spec)

  monkeypatch.setattr(store, "load_key_store", load)
  return calls


def _keys_db(tmp_path, name="keys.db"):
  priv, pub = key_pair()
  path = str(tmp_path / name)
  make_keys_db(path, [("alice", pub, priv)])
  return path, pub, priv


def test_sign_and_publish_instances_on_many_threads_load_the_keys_once(tmp_path, counted_loads):
  path, pub, _ = _keys_db(tmp_path)
  fns = [SignEventFn(path, "run-1") for _ in range(6)]
  fns += [PublishEventsFn(["ws://127.0.0.1:1"], "run-1", keys_db=path) for _ in range(6)]
  stores, errors = [], []

  def setup(fn):
    try:
      # A pickled copy, as a runner ships it: the handle travels, never a key.
      copy = pickle.loads(pickle.dumps(fn))
      stores.append(copy._key_store.acquire())  # pylint: disable=protected-access
    except Exception as exc:  # pylint: disable=broad-except
      errors.append(exc)

  threads = [threading.Thread(target=setup, args=(fn,)) for fn in fns]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == [] and len(stores) == 12
  assert counted_loads == [(path, "")]
  assert all(s is stores[0] for s in stores) and stores[0].signer_for(pub) is not None


def test_sign_setup_uses_the_shared_store_and_the_dofn_pickles_without_keys(tmp_path,
                                                                            counted_loads):
  path, _, priv = _keys_db(tmp_path)
  first, second = SignEventFn(path, "run-1"), SignEventFn(path, "run-2")
  blob = pickle.dumps(first)
  first.setup()
  second.setup()
  assert len(counted_loads) == 1 and first._keys is second._keys  # pylint: disable=protected-access
  assert priv.encode() not in blob and path.encode() in blob
  with pytest.raises(TypeError):
    pickle.dumps(first._keys)  # pylint: disable=protected-access


def test_other_keys_load_apart_and_a_rewritten_local_file_is_reloaded(tmp_path, counted_loads):
  path, pub, _ = _keys_db(tmp_path)
  other, _, _ = _keys_db(tmp_path, "other.db")
  a = shared_store.acquire(path)
  assert shared_store.acquire(other) is not a
  assert len(counted_loads) == 2
  priv2, pub2 = key_pair()
  make_keys_db(str(tmp_path / "new.db"), [("bob", pub2, priv2)])
  (tmp_path / "new.db").replace(path)  # a new file at the same path
  again = shared_store.acquire(path)
  assert len(counted_loads) == 3 and again.signer_for(pub2) and not again.signer_for(pub)


def test_a_failed_load_is_not_remembered(tmp_path, counted_loads):
  missing = str(tmp_path / "missing.db")
  for _ in range(2):
    with pytest.raises(store.KeyStoreError):
      shared_store.acquire(missing)
  assert len(counted_loads) == 2
