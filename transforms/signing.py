"""BuildVideoEvent and SignEvent stages.

BuildVideoEventFn turns a migrated WorkItem into its unsigned replacement event and
skips items whose event would not change (`up_to_date`), so re-runs do not churn
relays. SignEventFn signs with the key of the original event's pubkey, loaded from
the keys database in setup(); the key never leaves the worker.
"""

import logging
import re
import time
from typing import Any, Callable, Dict, Iterator, Optional

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
# Counter: unchanged events sent again, as they are, to relays that lack them.
CATCH_UP = "relay_catch_up"


def load_key_store(keys_db: str, kek_spec: str = "") -> KeyStore:
  """The key store for a DoFn's setup(): decrypted with the KEK when one is configured.

  `keys_db` may be a gs:// path (Dataflow workers): it is read through a private copy.
  """
  decrypt = decryptor_for_spec(kek_spec) if kek_spec else None
  with local_path(keys_db) as path:
    return KeyStore.load(path, decrypt=decrypt)


# What validate_event could still refuse in an event we have just signed: an empty
# tag, a C0 control or a lone surrogate (the id is computed from the event itself
# and the signature is verified by the signer against it).
_SUSPECT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def _needs_full_check(signed: Dict[str, Any]) -> bool:
  """True when a freshly signed event should go through the full validate_event.

  validate_event costs about 300 us (its id recomputation, a second signature
  verification, a regular expression per tag value); this one pass over the text
  finds every event it could refuse, and the full check then names the problem.
  """
  tags = signed["tags"]
  if not all(tags):
    return True
  text = "\n".join(["\n".join(tag) for tag in tags])
  return bool(_SUSPECT_TEXT.search(text) or _SUSPECT_TEXT.search(signed["content"]))


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
      if item.source.missing_on:
        # Nothing to change, but some relays lack this version (they refused or missed
        # an earlier publish): send them the very same signed event, no new version.
        accounting.inc(CATCH_UP)
        yield item.replace(signed=item.source.event)
        return
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
    if item.signed is not None:  # a catch-up resend, signed by its author already
      yield item
      return
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
    problem = validate_event(signed) if _needs_full_check(signed) else None
    if problem:
      accounting.dead_lettered(dl.STAGE_SIGN)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_SIGN, dl.BAD_INPUT, "signed event invalid: %s" % problem, item))
      return
    yield item.replace(signed=signed)
