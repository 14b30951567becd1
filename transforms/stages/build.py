"""BuildVideoEvent: a migrated WorkItem's unsigned events, or an `up_to_date` skip.

BuildVideoEventFn turns a migrated WorkItem into its unsigned events (the 32222
replacement, the NIP-71 34236 event, or both: --event-kind) and skips items whose
events would not change (`up_to_date`), so re-runs do not churn relays. The events
themselves are built by pure functions (`transforms.nostr.video_event`,
`transforms.nostr.short_video_event`); a value today's row lacks keeps the previous
version's (`transforms.nostr.carry_over`), counted `values_kept_from_previous`.
"""

import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.core.records import (
  KIND_32222,
  KIND_34236,
  KIND_BOTH,
  SKIP_UP_TO_DATE,
  SourceEvent,
  WorkItem,
)
from transforms.nostr.carry_over import kept_names
from transforms.nostr.short_video_event import build_short_video_event, previous_events
from transforms.nostr.video_event import build_video_event, is_up_to_date
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl

# Counter: unchanged events sent again, as they are, to relays that lack them.
CATCH_UP = "relay_catch_up"


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


def values_kept(item: WorkItem, replacement: bool, video: bool) -> int:
  """Tag values the new versions keep from the previous ones because the row lacks them."""
  kept = len(kept_names(item.row, [item.source.event])) if replacement else 0
  return kept + (len(kept_names(item.row, previous_events(item))) if video else 0)


class BuildVideoEventFn(beam.DoFn):
  """WorkItem -> WorkItem with `unsigned` (32222) and/or `unsigned_video` (34236) set.

  event_kind is 32222, 34236 or both. An address whose event would not change gets
  nothing to sign (or, if relays lack it, its current version to resend); a vine
  with nothing to publish at any address is a tagged `up_to_date` skip.
  """

  OUTPUTS = (dl.DEAD_LETTER, dl.SKIPPED)  # tagged outputs besides "main"

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
      yield TaggedOutput(dl.DEAD_LETTER, dl.dead_letter_for_item(
          self._run_id, dl.STAGE_BUILD, dl.BAD_INPUT, "cannot build event: %s: %s"
          % (type(exc).__name__, exc), item))
      return
    # Counted for every version built, published or up to date: what the row lacked.
    kept = values_kept(item, replacement is not None, video is not None)
    if kept:
      accounting.inc(accounting.VALUES_KEPT, kept)
    changes: Dict[str, Any] = {"unsigned": None, "signed": None, "unsigned_video": None,
                               "signed_video": None}
    if replacement is not None:
      changes["unsigned"], changes["signed"] = plan_event(item.source, replacement, self._force)
    if video is not None:
      changes["unsigned_video"], changes["signed_video"] = plan_event(item.video, video,
                                                                      self._force)
    if not any(changes.values()):
      yield TaggedOutput(dl.SKIPPED, dl.make_skip(dl.STAGE_BUILD, SKIP_UP_TO_DATE, item.vine_id,
                                                  item.event_id))
      return
    if not (changes["unsigned"] or changes["unsigned_video"]):
      accounting.inc(CATCH_UP)
    yield item.replace(**changes)
