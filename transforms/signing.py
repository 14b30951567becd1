"""BuildVideoEvent and SignEvent stages.

BuildVideoEventFn turns a migrated WorkItem into its unsigned events (the 32222
replacement, the NIP-71 34236 event, or both: --event-kind) and skips items whose
events would not change (`up_to_date`), so re-runs do not churn relays.
SignEventFn signs with the key of the original event's pubkey, loaded from the keys
database in setup(); the key never leaves the worker.
"""

import logging
import re
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms import accounting
from transforms import dead_letters as dl
from transforms.concurrency import log_stage
from transforms.event_builder import build_video_event, is_up_to_date
from transforms.key_crypto import decryptor_for_spec
from transforms.key_store import KeyStore
from transforms.nip71_event import build_short_video_event
from transforms.nostr_event import validate_event
from transforms.records import KIND_32222, KIND_34236, KIND_BOTH, SKIP_UP_TO_DATE, \
  SourceEvent, WorkItem
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


def plan_event(old: Optional[SourceEvent], new_unsigned: Dict[str, Any],
               force: bool) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
  """(event to sign, event to resend as it is) for one address; (None, None): nothing to do.

  A new version when it changes something (or with force); else, when some relays
  lack the current version (they refused or missed an earlier publish), that very
  version again, never a new one.
  """
  if old is None or force or not is_up_to_date(old.event, new_unsigned):
    return new_unsigned, None
  if old.missing_on:
    return None, old.event
  return None, None


class BuildVideoEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `unsigned` (32222) and/or `unsigned_video` (34236) set.

  event_kind is 32222, 34236 or both. An address whose event would not change gets
  nothing to sign (or, if relays lack it, its current version to resend); a vine
  with nothing to publish at any address is a tagged `up_to_date` skip.
  """

  def __init__(self, run_id: str, force_republish: bool = False,
               clock: Optional[Callable[[], float]] = None, event_kind: str = KIND_32222):
    super().__init__()
    if event_kind not in (KIND_32222, KIND_34236, KIND_BOTH):
      raise ValueError("event_kind must be 32222, 34236 or both, not %r" % (event_kind,))
    self._run_id = run_id
    self._force = force_republish
    self._clock = clock or time.time
    self._kind = event_kind

  def process(self, item: WorkItem) -> Iterator[Any]:
    now = int(self._clock())
    try:
      replacement = (build_video_event(item, now) if self._kind != KIND_34236 else None)
      video = build_short_video_event(item, now) if self._kind != KIND_32222 else None
    except Exception as exc:  # pylint: disable=broad-except
      accounting.dead_lettered(dl.STAGE_BUILD)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_BUILD, dl.BAD_INPUT, "cannot build event: %s: %s"
          % (type(exc).__name__, exc), item))
      return
    changes: Dict[str, Any] = {"unsigned": None, "signed": None, "unsigned_video": None,
                               "signed_video": None}
    if replacement is not None:
      changes["unsigned"], changes["signed"] = plan_event(item.source, replacement, self._force)
    if video is not None:
      changes["unsigned_video"], changes["signed_video"] = plan_event(item.video, video,
                                                                      self._force)
    if not any(changes.values()):
      accounting.skipped(SKIP_UP_TO_DATE)
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_BUILD, SKIP_UP_TO_DATE, item.vine_id,
                                                  item.event_id))
      return
    if not (changes["unsigned"] or changes["unsigned_video"]):
      accounting.inc(CATCH_UP)
    yield item.replace(**changes)


class SignEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `signed` set, signed by the original author's key."""

  def __init__(self, keys_db: str, run_id: str, kek_spec: str = ""):
    super().__init__()
    self._keys_db = keys_db  # a path, never key material
    self._kek_spec = kek_spec  # a reference (env:NAME, file:PATH, ...), never the key
    self._run_id = run_id

  def setup(self):
    self._keys = load_key_store(self._keys_db, self._kek_spec)
    self._signed = self._invalid = 0
    self._no_key: Dict[str, int] = {}
    log_stage(_LOG, "SignEvent", "ready", keys=len(self._keys))

  def teardown(self):
    if not hasattr(self, "_signed"):
      return
    log_stage(_LOG, "SignEvent", "done", signed=self._signed, no_key=sum(self._no_key.values()),
              invalid=self._invalid)
    if self._no_key:
      _LOG.warning("SignEvent: %d vines of %d pubkeys had no signing key (dead letters "
                   "no_signing_key)", sum(self._no_key.values()), len(self._no_key))

  def process(self, item: WorkItem) -> Iterator[Any]:
    to_sign = [e for e in (item.unsigned, item.unsigned_video) if e is not None]
    if not to_sign:  # a catch-up resend, signed by its author already
      yield item
      return
    signer = self._keys.signer_for(item.pubkey)
    if signer is None:
      _LOG.debug("sign %s: no key for pubkey %s", item.vine_id, item.pubkey)
      self._no_key[item.pubkey] = self._no_key.get(item.pubkey, 0) + 1
      accounting.dead_lettered(dl.STAGE_SIGN)
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_SIGN, dl.PERMANENT,
          "%s: the keys database has no usable key for pubkey %s" % (NO_SIGNING_KEY,
                                                                       item.pubkey),
          item))
      return
    changes = {}
    for field, unsigned in (("signed", item.unsigned), ("signed_video", item.unsigned_video)):
      if unsigned is None:
        continue
      signed = signer.sign(unsigned)
      problem = validate_event(signed) if _needs_full_check(signed) else None
      if problem:
        self._invalid += 1
        accounting.dead_lettered(dl.STAGE_SIGN)
        yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
            self._run_id, dl.STAGE_SIGN, dl.BAD_INPUT, "signed event invalid: %s" % problem,
            item))
        return
      changes[field] = signed
    self._signed += 1
    yield item.replace(**changes)
