"""SignEvent: sign each unsigned event with the key of the original event's pubkey.

The key store is acquired in setup(), loaded once per worker process and shared with
PublishEvents (`transforms.keys.shared_store`); the key never leaves the worker. No key for the pubkey: a `no_signing_key` dead letter.
"""

import logging
from typing import Any, Dict, Iterator

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.core.records import WorkItem
from transforms.core.text import SUSPECT_TEXT
from transforms.keys.shared_store import SharedKeyStore
from transforms.nostr.event import validate_event
from transforms.runtime import outcomes as dl
from transforms.runtime.logs import log_stage

_LOG = logging.getLogger(__name__)

NO_SIGNING_KEY = "no_signing_key"


def _needs_full_check(signed: Dict[str, Any]) -> bool:
  """True when a freshly signed event should go through the full validate_event.

  validate_event costs about 300 us (its id recomputation, a second signature
  verification, a regular expression per tag value); this one pass over the text
  finds every event it could still refuse (an empty tag, a C0 control or a lone
  surrogate: the id is computed from the event itself and the signer verifies the
  signature), and the full check then names the problem.
  """
  tags = signed["tags"]
  if not all(tags):
    return True
  text = "\n".join(["\n".join(tag) for tag in tags])
  return bool(SUSPECT_TEXT.search(text) or SUSPECT_TEXT.search(signed["content"]))


class SignEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `signed` set, signed by the original author's key."""

  OUTPUTS = (dl.DEAD_LETTER,)  # tagged outputs besides "main"

  def __init__(self, keys_db: str, run_id: str, kek_spec: str = ""):
    super().__init__()
    # Names only (a path and a KEK reference), never key material: the DoFn pickles.
    self._key_store = SharedKeyStore(keys_db, kek_spec)
    self._run_id = run_id

  def setup(self):
    self._keys = self._key_store.acquire()
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
        yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
            self._run_id, dl.STAGE_SIGN, dl.BAD_INPUT, "signed event invalid: %s" % problem,
            item))
        return
      changes[field] = signed
    self._signed += 1
    # The unsigned drafts are not needed past here (a replay rebuilds them): dropping them
    # halves what the CapPublishes shuffle carries of the new events.
    yield item.replace(unsigned=None, unsigned_video=None, **changes)
