"""BuildVideoEvent and SignEvent stages.

BuildVideoEventFn turns a migrated WorkItem into its unsigned replacement event and
skips items whose event would not change (`up_to_date`), so re-runs do not churn
relays. SignEventFn signs with the key of the original event's pubkey, loaded from
the keys database in setup(); the key never leaves the worker.
"""

import logging
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms import accounting
from transforms import dead_letters as dl
from transforms.event_builder import build_video_event, is_up_to_date
from transforms.key_crypto import decryptor_for_spec
from transforms.key_store import KeyStore
from transforms.nostr_event import validate_event
from transforms.records import SKIP_UP_TO_DATE, WorkItem
from transforms.remote_files import local_path

_LOG = logging.getLogger(__name__)

NO_SIGNING_KEY = "no_signing_key"


def load_key_store(keys_db: str, kek_spec: str = "") -> KeyStore:
  """The key store for a DoFn's setup(): decrypted with the KEK when one is configured.

  `keys_db` may be a gs:// path (Dataflow workers): it is read through a private copy.
  """
  decrypt = decryptor_for_spec(kek_spec) if kek_spec else None
  with local_path(keys_db) as path:
    return KeyStore.load(path, decrypt=decrypt)


class BuildVideoEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `unsigned` set; tagged skips for unchanged events."""

  def __init__(self, run_id: str, force_republish: bool = False,
               clock: Optional[Callable[[], float]] = None):
    super().__init__()
    self._run_id = run_id
    self._force = force_republish
    self._clock = clock or time.time

  def process(self, item: WorkItem) -> Iterator[Any]:
    try:
      unsigned = build_video_event(item, int(self._clock()))
    except Exception as exc:  # pylint: disable=broad-except
      accounting.dead_lettered(dl.STAGE_BUILD)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_BUILD, dl.BAD_INPUT, "cannot build event: %s: %s"
          % (type(exc).__name__, exc), item))
      return
    if not self._force and is_up_to_date(item.source.event, unsigned):
      accounting.skipped(SKIP_UP_TO_DATE)
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_BUILD, SKIP_UP_TO_DATE, item.vine_id,
                                                  item.event_id))
      return
    yield item.replace(unsigned=unsigned)


class SignEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `signed` set, signed by the original author's key."""

  def __init__(self, keys_db: str, run_id: str, kek_spec: str = ""):
    super().__init__()
    self._keys_db = keys_db  # a path, never key material
    self._kek_spec = kek_spec  # a reference (env:NAME, file:PATH, ...), never the key
    self._run_id = run_id

  def setup(self):
    self._keys = load_key_store(self._keys_db, self._kek_spec)

  def process(self, item: WorkItem) -> Iterator[Any]:
    signer = self._keys.signer_for(item.pubkey)
    if signer is None:
      accounting.dead_lettered(dl.STAGE_SIGN)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_SIGN, dl.PERMANENT,
          "%s: the keys database has no usable key for pubkey %s" % (NO_SIGNING_KEY,
                                                                       item.pubkey),
          item))
      return
    signed = signer.sign(item.unsigned)
    problem = validate_event(signed)
    if problem:
      accounting.dead_lettered(dl.STAGE_SIGN)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_SIGN, dl.BAD_INPUT, "signed event invalid: %s" % problem, item))
      return
    yield item.replace(signed=signed)
