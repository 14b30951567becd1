"""Beam counters and the conservation check: vines in = published + skipped + dead-lettered.

Every item is counted `vines_in` once where it is born (a bad input read, an event
without a vine id, one join output) and once at its terminal outcome. Counters are
Beam metrics, so the same numbers show on Dataflow.

Retry-safe: the summary and the balance check read Beam's committed counters, which
hold only the work of bundles that committed. An increment made while an AsyncDoFn
handles an element (on its event loop, with no Beam metrics container) is kept with
that element (`collect_for_element`) and committed into the Beam counters of the
bundle that emits the element's outputs (`commit`): when that bundle fails, or the
element's result is dropped because its bundle was abandoned, the increment goes
with it and a retry counts the element once.

Every increment also adds to a process-local live tally (`live_counts()`): the local
runner reports Beam counters only when the run ends, and the progress display
(`pipeline/progress.py`) reads the tally while it runs. The tally counts attempts,
retried work included: it is for the display only, never for the summary.
"""

import collections
import contextvars
import threading
from typing import Dict, Mapping, Optional

from apache_beam.metrics import Metrics
from apache_beam.metrics.execution import MetricsEnvironment

NAMESPACE = "vine_migration"

VINES_IN = "vines_in"
PUBLISHED = "published"
SKIPPED_PREFIX = "skipped_"
DEAD_LETTER_PREFIX = "dead_letters_"
# Dead letters per error class; informational (the stage counters do the accounting).
# Not a DEAD_LETTER_PREFIX name ("dead_letter_c..." against "dead_letters_"), so never
# counted twice by summarise().
DEAD_LETTER_CLASS_PREFIX = "dead_letter_class_"

# Informational counters: the seed's checkpoint stats, and what the progress display
# and the report read. A stage's other counters are constants of its own module.
EVENTS_READ = "events_read"
# Relay messages the clients dropped unparsed (oversized, too deep, malformed), and events
# a relay sent outside the filter asked for: counted by the reads, the stream and publishing.
RELAY_MESSAGES_DROPPED = "relay_messages_dropped"
EVENTS_OUTSIDE_FILTER = "events_outside_filter"
ROWS_READ = "rows_read"
MIGRATIONS_REUSED = "migrations_reused"
# GET /v1/lookup calls of the migrate stage (confirming an earlier migration, or before a
# resend after a call that got no answer), and earlier tools' migrations reused after one.
MIGRATION_LOOKUPS = "migration_lookups"
EARLIER_MIGRATIONS_REUSED = "earlier_migrations_reused"
EVENTS_CHECKED = "events_checked"
VIDEOS_MIGRATED = "videos_migrated"
VIDEOS_ALREADY_MIGRATED = "videos_already_migrated"
VIDEOS_REPUBLISHED = "videos_republished"
EVENTS_PUBLISHED = "events_published"  # with --event-kind both, up to two per vine
FAILED_MIGRATIONS = "failed_migrations"
METADATA_MISSING = "metadata_missing"
BLURHASH_MISSING = "blurhash_missing"
THROTTLING_SECONDS = "cumulativeThrottlingSeconds"
# VerifyUrls: media URLs checked on the CDN, and those that did not work (not published).
URLS_CHECKED = "urls_checked"
URLS_DEAD = "urls_dead"
# BuildVideoEvent: tag values a new version kept from the previous one (the row lacked them).
VALUES_KEPT = "values_kept_from_previous"
SEED_STATS = (EVENTS_CHECKED, VIDEOS_MIGRATED, VIDEOS_ALREADY_MIGRATED, VIDEOS_REPUBLISHED,
              FAILED_MIGRATIONS, MIGRATIONS_REUSED, METADATA_MISSING, BLURHASH_MISSING)

_counters: Dict[str, object] = {}
# The increments of the element an AsyncDoFn task is handling (each asyncio task has
# its own context, and tasks it spawns share their parent's Counter).
_element_counts: "contextvars.ContextVar[Optional[collections.Counter]]" = (
    contextvars.ContextVar("vine_migration_element_counts", default=None))
# Increments made off a Beam thread (an AsyncDoFn's event loop) have no metrics
# container and would be dropped; they wait here until a Beam thread flushes them.
_deferred: "collections.Counter[str]" = collections.Counter()
_deferred_lock = threading.Lock()
# Every increment of this process, from any thread, as it happens (the progress display).
_live: "collections.Counter[str]" = collections.Counter()
_live_lock = threading.Lock()


def _counter(name: str):
  counter = _counters.get(name)
  if counter is None:
    counter = _counters[name] = Metrics.counter(NAMESPACE, name)
  return counter


def inc(name: str, n: int = 1) -> None:
  """Adds n to a Beam counter and to the live tally.

  While an AsyncDoFn handles an element, the Beam increment waits with that element
  and is committed with its outputs; elsewhere off a Beam thread it is deferred until
  a Beam thread flushes it. The live tally counts it at once.
  """
  with _live_lock:
    _live[name] += n
  element = _element_counts.get()
  if element is not None:
    element[name] += n
    return
  if MetricsEnvironment.current_container() is None:
    with _deferred_lock:
      _deferred[name] += n
    return
  _counter(name).inc(n)


def collect_for_element() -> "collections.Counter[str]":
  """From here on, this asyncio task's increments are kept in the returned Counter.

  Called at the start of the task that handles one element; the caller hands the
  Counter to `commit` on the Beam thread that emits the element's outputs.
  """
  counts: "collections.Counter[str]" = collections.Counter()
  _element_counts.set(counts)
  return counts


def commit(counts: Mapping[str, int]) -> None:
  """Adds an element's kept increments to the calling Beam thread's bundle counters."""
  for name, n in counts.items():
    if n:
      _counter(name).inc(n)


def flush_deferred() -> None:
  """Moves deferred increments into the calling Beam thread's metrics container."""
  if not _deferred or MetricsEnvironment.current_container() is None:
    return
  with _deferred_lock:
    pending = dict(_deferred)
    _deferred.clear()
  for name, n in pending.items():
    _counter(name).inc(n)


def reset_deferred() -> None:
  """Drops increments left unflushed by an earlier run in this process (one that stopped)."""
  with _deferred_lock:
    _deferred.clear()


def live_counts() -> Dict[str, int]:
  """A snapshot of every increment this process made since `reset_live()`."""
  with _live_lock:
    return dict(_live)


def reset_live() -> None:
  """Starts the live tally from zero (at the start of a run)."""
  with _live_lock:
    _live.clear()


_fractions: Dict[str, float] = {}


def add_seconds(name: str, seconds: float) -> None:
  """Adds a duration to an integer counter, carrying the fraction to the next call.

  Beam counters are integers; rounding each backoff separately would lose most of
  many short waits (Dataflow reads `cumulativeThrottlingSeconds` to hold autoscaling).
  """
  with _deferred_lock:
    total = _fractions.get(name, 0.0) + max(0.0, seconds)
    whole = int(total)
    _fractions[name] = total - whole
  if whole:
    inc(name, whole)


def born(n: int = 1) -> None:
  inc(VINES_IN, n)


def count_skip(reason: str) -> None:
  """Counts one skip. Called by `outcomes.make_skip` only: making a skip counts it."""
  inc(SKIPPED_PREFIX + reason)


def count_dead_letter(stage: str, error_class: str) -> None:
  """Counts one dead letter by stage and by class.

  Called by `outcomes.make_dead_letter` only: making a dead letter counts it.
  """
  inc(DEAD_LETTER_PREFIX + stage)
  inc(DEAD_LETTER_CLASS_PREFIX + error_class)


def published() -> None:
  inc(PUBLISHED)


def summarise(counters: Mapping[str, int]) -> Dict[str, object]:
  """Builds the accounting from counter values; `balanced` says whether it adds up.

  `dead_letter_classes` (dead letters per error class) is informational: the same dead
  letters as `dead_lettered`, counted by class instead of stage.
  """
  vines_in = int(counters.get(VINES_IN, 0))
  published_n = int(counters.get(PUBLISHED, 0))
  skipped_by = {k[len(SKIPPED_PREFIX):]: int(v) for k, v in counters.items()
                if k.startswith(SKIPPED_PREFIX) and v}
  dead_by = {k[len(DEAD_LETTER_PREFIX):]: int(v) for k, v in counters.items()
             if k.startswith(DEAD_LETTER_PREFIX) and v}
  classes = {k[len(DEAD_LETTER_CLASS_PREFIX):]: int(v) for k, v in counters.items()
             if k.startswith(DEAD_LETTER_CLASS_PREFIX) and v}
  out = published_n + sum(skipped_by.values()) + sum(dead_by.values())
  return {
      "vines_in": vines_in,
      "published": published_n,
      "skipped": dict(sorted(skipped_by.items())),
      "dead_lettered": dict(sorted(dead_by.items())),
      "dead_letter_classes": dict(sorted(classes.items())),
      "accounted": out,
      "balanced": vines_in == out,
  }
