"""Replay: run dead letters through the same stages again, from the stage that failed.

Dead letters come from local NDJSON files (a glob) or from the BigQuery dead-letter
table, filtered with --replay-filter:

    run_id=RUN[|RUN2],stage=migrate|publish,error_class=transient_exhausted,
    since=2026-11-01T00:00:00Z,until=2026-11-30

(`since`/`until` compare with `last_failure`; several values of one key are joined
with `|`; keys are ANDed). Each replayed vine is refreshed against the relays first:
when a relay already holds a newer version of its event (a previous replay or run
published it), that version becomes the source, so the migration is reused and an
unchanged event is skipped `up_to_date`. Replaying twice therefore neither
migrates nor publishes twice. Outcomes of a replay carry `replay_of` pointing at the
dead letter they replay.
"""

import collections
import datetime
import json
import logging
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.core.records import SourceEvent, WorkItem, newer, row_from_dict, to_source_event
from transforms.runtime import accounting
from transforms.runtime import outcomes as dl
from transforms.runtime.logs import log_stage

_LOG = logging.getLogger(__name__)

REPLAY_KEYS = ("run_id", "stage", "error_class", "since", "until")
# The stage a failed stage is replayed from. A signature is cheap and its input
# (the unsigned event) is rebuilt deterministically, so `sign` restarts at `build`.
ENTRY_STAGE = {
    dl.STAGE_MIGRATE: dl.STAGE_MIGRATE,
    dl.STAGE_BLURHASH: dl.STAGE_BLURHASH,
    dl.STAGE_VERIFY: dl.STAGE_VERIFY,
    dl.STAGE_BUILD: dl.STAGE_BUILD,
    dl.STAGE_SIGN: dl.STAGE_BUILD,
    dl.STAGE_PUBLISH: dl.STAGE_PUBLISH,
}
# RefreshFromRelaysFn's outputs: one per stage an item can enter at.
ENTRY_STAGES = (dl.STAGE_MIGRATE, dl.STAGE_BLURHASH, dl.STAGE_VERIFY, dl.STAGE_BUILD,
                dl.STAGE_PUBLISH)
SKIP_NOT_REPLAYABLE = "not_replayable"
REPLAY_NOTE = "replay_of="
UNFILTERED = "unfiltered"


class ReplayFilterError(ValueError):
  pass


def _parse_time(text: str) -> datetime.datetime:
  value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
  if value.tzinfo is None:
    value = value.replace(tzinfo=datetime.timezone.utc)
  return value


def parse_replay_filter(text: Optional[str]) -> Dict[str, List[str]]:
  """`key=v1|v2,key2=v` -> {key: [values]}; raises ReplayFilterError naming the flag."""
  result: Dict[str, List[str]] = {}
  for part in (text or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" not in part:
      raise ReplayFilterError("--replay-filter: %r is not key=value" % part)
    key, value = (x.strip() for x in part.split("=", 1))
    if key not in REPLAY_KEYS:
      raise ReplayFilterError("--replay-filter: unknown key %r (known: %s)"
                              % (key, ", ".join(REPLAY_KEYS)))
    values = [v for v in value.split("|") if v]
    if key == "stage":
      for v in values:
        if v not in dl.STAGES:
          raise ReplayFilterError("--replay-filter: unknown stage %r" % v)
    if key == "error_class":
      for v in values:
        if v not in dl.ERROR_CLASSES:
          raise ReplayFilterError("--replay-filter: unknown error class %r" % v)
    if key in ("since", "until"):
      try:
        _parse_time(values[0])
      except (ValueError, IndexError):
        raise ReplayFilterError("--replay-filter: %s needs an ISO-8601 time" % key) from None
    result[key] = values
  return result


def matches(dead: Dict[str, Any], flt: Dict[str, List[str]]) -> bool:
  for key in ("run_id", "stage", "error_class"):
    if key in flt and dead.get(key) not in flt[key]:
      return False
  if "since" in flt or "until" in flt:
    try:
      when = _parse_time(str(dead.get("last_failure")))
    except ValueError:
      return False
    if "since" in flt and when < _parse_time(flt["since"][0]):
      return False
    if "until" in flt and when > _parse_time(flt["until"][0]):
      return False
  return True


def replay_pointer(dead: Dict[str, Any]) -> str:
  return "%s/%s/%s" % (dead.get("run_id"), dead.get("stage"),
                       dead.get("event_id") or dead.get("vine_id"))


def item_from_dead_letter(dead: Dict[str, Any]) -> Tuple[str, WorkItem]:
  """(entry stage, WorkItem) of a replayable dead letter; ValueError otherwise."""
  stage = dead.get("stage")
  if stage not in ENTRY_STAGE:
    raise ValueError("stage %r cannot be replayed (fix the source and re-run the job)" % stage)
  payload = json.loads(dead.get("payload") or "null")
  if not isinstance(payload, dict) or not isinstance(payload.get("event"), dict):
    raise ValueError("dead letter has no replay payload")
  notes = tuple(n for n in payload.get("notes") or () if not n.startswith(REPLAY_NOTE))
  item = WorkItem(
      vine_id=payload["vine_id"],
      source=to_source_event(payload["event"]),
      row=row_from_dict(payload["row"]) if payload.get("row") else None,
      openvine_id=payload.get("openvine_id"),
      migration=payload.get("migration"),
      blurhash=payload.get("blurhash"),
      signed=payload.get("signed"),
      video=(to_source_event(payload["video_event"])
             if isinstance(payload.get("video_event"), dict) else None),
      signed_video=payload.get("signed_video"),
      notes=notes + (REPLAY_NOTE + replay_pointer(dead),))
  return ENTRY_STAGE[stage], item


def refresh(entry: str, item: WorkItem, current: Optional[SourceEvent],
            current_video: Optional[SourceEvent] = None) -> Tuple[str, WorkItem]:
  """Uses the relays' newer versions of the vine's events (32222, 34236) when there are.

  A newer version that already carries our migration tags means an earlier run or
  replay finished this vine: restart at migrate, which reuses the uid, so the item
  ends `up_to_date` unless something really changed.
  """
  fresh = {}
  if current is not None and newer(current.event, item.source.event) is not item.source.event:
    fresh["source"] = current  # kept whole: it knows which relays lack it (missing_on)
  if current_video is not None and (item.video is None or newer(
      current_video.event, item.video.event) is not item.video.event):
    fresh["video"] = current_video
  if not fresh:
    return entry, item
  item = item.replace(signed=None, unsigned=None, signed_video=None, unsigned_video=None,
                      **fresh)
  if any(source.migrated_uid for source in fresh.values()):
    return dl.STAGE_MIGRATE, item.replace(migration=None, blurhash=None)
  if entry == dl.STAGE_PUBLISH:  # what was signed is outdated: build again
    return dl.STAGE_BUILD, item
  return entry, item


class ToReplayItemFn(beam.DoFn):
  """dead letter dict -> (vine_id, (entry stage, WorkItem)); tagged skips for the rest."""

  OUTPUTS = (dl.SKIPPED,)  # tagged outputs besides "main"

  def __init__(self, flt: Dict[str, List[str]]):
    super().__init__()
    self._filter = flt

  def setup(self):
    self._counts = collections.Counter()
    shown = ",".join("%s=%s" % (k, "|".join(v)) for k, v in sorted(self._filter.items()))
    log_stage(_LOG, "ReplayDeadLetters", "ready", filter=shown or UNFILTERED)

  def teardown(self):
    counts = getattr(self, "_counts", {})
    log_stage(_LOG, "ReplayDeadLetters", "done", **{k: counts.get(k, 0) for k in (
        "replayed", "not_replayable", "filtered_out")})

  def process(self, dead: Any) -> Iterator[Any]:
    if isinstance(dead, str):
      dead = json.loads(dead)
    if not matches(dead, self._filter):
      self._counts["filtered_out"] += 1
      return
    accounting.born()
    try:
      entry, item = item_from_dead_letter(dead)
    except (ValueError, KeyError, TypeError) as exc:
      self._counts["not_replayable"] += 1
      _LOG.debug("dead letter %s not replayable: %s", replay_pointer(dead), exc)
      yield TaggedOutput(dl.SKIPPED, dl.make_skip("replay", SKIP_NOT_REPLAYABLE,
                                                  dead.get("vine_id"), dead.get("event_id")))
      return
    self._counts["replayed"] += 1
    yield item.vine_id, (entry, item)


class RefreshFromRelaysFn(beam.DoFn):
  """(vine_id, {replay, events}) -> TaggedOutput(entry stage, WorkItem)."""

  def process(self, keyed) -> Iterator[Any]:
    _, grouped = keyed
    current = {source.key: source for source in grouped["events"]}
    videos = {source.key: source for source in grouped.get("videos") or ()}
    for entry, item in grouped["replay"]:
      entry, item = refresh(entry, item, current.get(item.source.key),
                            videos.get(item.source.key))
      yield TaggedOutput(entry, item)


def link_replay(dead: Dict[str, Any]) -> Dict[str, Any]:
  """Sets `replay_of` on a dead letter produced while replaying another."""
  if dead.get("replay_of") or not dead.get("payload"):
    return dead
  try:
    notes = json.loads(dead["payload"]).get("notes") or []
  except (ValueError, AttributeError):
    return dead
  for note in notes:
    if isinstance(note, str) and note.startswith(REPLAY_NOTE):
      return dict(dead, replay_of=note[len(REPLAY_NOTE):])
  return dead
