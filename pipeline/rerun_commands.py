"""The commands pipeline.report prints: the replay of a run's dead letters, the re-run of a run that
did not finish.

Both are rebuilt from the run's own flags (summary.json `argv`, or the journal's `run` record of
a run killed before it wrote a summary), so they can be copied as they are.
"""

import os
import shlex
from typing import Any, Dict, List, Optional, Sequence

from pipeline.run_outputs import RunOutputs, join_path, select_dead
from transforms.clients.secrets import TOKEN_ENV_VAR
from transforms.io.local_files import DEAD_LETTERS_FILE
from transforms.runtime import outcomes as dl

# Stages whose dead letters a replay cannot run (transforms/stages/replay.py ENTRY_STAGE).
NOT_REPLAYABLE_STAGES = (dl.STAGE_READ_ROWS, dl.STAGE_READ_EVENTS, dl.STAGE_JOIN)
# Flags of the original run a replay must not repeat, with whether they take a value:
# the mode and its inputs are the replay's own, a run id is generated per run, and a
# replay reads dead letters, never rows or an events export (a replay's event reads
# only refresh the vines it replays; an export's bad events would be counted again).
DROPPED_FLAGS = ("--mode", "--replay-from", "--replay-filter", "--run-id", "--rows",
                 "--events-file", "--notify-url")
# Flags a replay needs, and the variable the run took each from when it was not given.
NEEDED_FLAGS = (("--relays", "NOSTR_RELAYS", "<RELAY_URLS>"),
                ("--migration-api", "CF_STREAM_MIGRATION_API", "<MIGRATION_API_URL>"),
                ("--cdn-base", "CDN_BASE", "<CDN_BASE>"),
                ("--keys-db", "MIGRATION_DB", "<KEYS_DB>"),
                ("--kek", "MIGRATION_KEK_SPEC", None),
                ("--token-secret", "TOKEN_SECRET", None))
PATH_FLAGS = ("--keys-db", "--output-dir")


# ---------------------------------------------------------------------------
# The replay command.


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
  value = None
  for index, arg in enumerate(argv):
    if arg == flag and index + 1 < len(argv):
      value = argv[index + 1]
    elif arg.startswith(flag + "="):
      value = arg[len(flag) + 1:]
  return value


def strip_flags(argv: Sequence[str], flags: Sequence[str] = DROPPED_FLAGS) -> List[str]:
  """argv without `flags` and their values (`--flag value` and `--flag=value`).

  Leading words that are not flags (a program name) are dropped too.
  """
  args = list(argv)
  while args and not args[0].startswith("-"):
    args.pop(0)
  out, skip = [], False
  for arg in args:
    if skip:
      skip = False
      continue
    if arg in flags:
      skip = True
      continue
    if any(arg.startswith(flag + "=") for flag in flags):
      continue
    out.append(arg)
  return out


def replay_filter_text(error_class: Optional[str] = None, stage: Optional[str] = None) -> str:
  """The --replay-filter value for a class and/or stage (see transforms/stages/replay.py)."""
  parts = []
  if stage:
    parts.append("stage=" + stage)
  if error_class:
    parts.append("error_class=" + error_class)
  return ",".join(parts)


def _absolute(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


def replay_command(run: RunOutputs, error_class: Optional[str] = None,
                   stage: Optional[str] = None) -> Dict[str, Any]:
  """The command that replays the run's dead letters, and what the reader must know.

  Built from summary.json `argv` (the run's own flags, minus those a replay sets or
  does not read: DROPPED_FLAGS) when the run recorded it, else with placeholders.

  Returns:
    {"argv": list, "command": str, "from_run_flags": bool, "replayable": int,
    "notes": [str]}.
  """
  run_dir = _absolute(run.run_dir)
  dead_file = join_path(run_dir, DEAD_LETTERS_FILE)
  head = ["python", "-m", "pipeline.main", "--mode", "replay", "--replay-from", dead_file]
  flt = replay_filter_text(error_class, stage)
  if flt:
    head += ["--replay-filter", flt]
  notes = []
  recorded = (run.summary or {}).get("argv")
  parent = run_dir[:run_dir.rstrip("/").rfind("/")] or "/"
  if isinstance(recorded, list) and all(isinstance(a, str) for a in recorded):
    rest = strip_flags(recorded)
    for flag, env, _ in NEEDED_FLAGS:
      if _flag_value(rest, flag) is None and env in ("NOSTR_RELAYS", "CF_STREAM_MIGRATION_API",
                                                     "MIGRATION_DB"):
        notes.append("the run took %s from env %s: set it the same way" % (flag, env))
    if _flag_value(rest, "--output-dir") is None:
      rest += ["--output-dir", parent]
    for flag in PATH_FLAGS:
      value = _flag_value(rest, flag)
      if value and "://" not in value and not os.path.isabs(value):
        notes.append("%s %s is relative to the directory the run started in" % (flag, value))
    from_run = True
  else:
    rest = []
    for flag, _, placeholder in NEEDED_FLAGS:
      if placeholder:
        rest += [flag, placeholder]
    rest += ["--output-dir", parent]
    kind = (run.summary or {}).get("event_kind")
    if kind:
      rest += ["--event-kind", str(kind)]
    rest += ["[--kek <KEK_SPEC>]"]
    notes.append("summary.json has no argv (the run did not record its flags): replace the "
                 "<PLACEHOLDERS> with the original run's values and add its other flags")
    from_run = False
  if _flag_value(rest, "--token-secret") is None:
    notes.append("the API token comes from env %s (or --token-secret)" % TOKEN_ENV_VAR)
  chosen = select_dead(run.dead, error_class, stage)
  replayable = [d for d in chosen if d["stage"] not in NOT_REPLAYABLE_STAGES]
  if len(replayable) < len(chosen):
    unreplayable = len(chosen) - len(replayable)
    notes.append("%d dead letter%s of the read stages %s not replayable (skipped "
                 "not_replayable): fix the source and re-run the job"
                 % (unreplayable, "" if unreplayable == 1 else "s",
                    "is" if unreplayable == 1 else "are"))
  if not chosen:
    notes.append("no dead letters%s: nothing to replay" % (" match " + flt if flt else ""))
  argv = head + rest
  command = " ".join(a if a.startswith("[") else shlex.quote(a) for a in argv)
  return {"argv": [a for a in argv if not a.startswith("[")], "command": command,
          "from_run_flags": from_run, "replayable": len(replayable), "notes": notes}


def unfinished(run: RunOutputs) -> Optional[Dict[str, Any]]:
  """Why and where a run that did not finish ended, and how to go on; None when it finished.

  Returns:
    {"status" (stopped or unfinished), "reason", "journal" (whether there is one),
    "started_at", "last_record_at", "published", "in_doubt" (vine ids sent without an
    answer), "not_published", "dead_letters", "skipped", "rerun" (the command)}.
  """
  if run.finished:
    return None
  saw = run.journal or {}
  summary = run.summary or {}
  stopped = summary.get("status") == "stopped" or bool((saw.get("end") or {}).get("reason"))
  argv = summary.get("argv") or (saw.get("run") or {}).get("argv")
  rerun = None
  if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
    rerun = " ".join(shlex.quote(a) for a in ["python", "-m", "pipeline.main"]
                     + strip_flags(argv, ("--run-id",)))
  return {"status": "stopped" if stopped else "unfinished",
          "reason": summary.get("stop_reason") or (saw.get("end") or {}).get("reason"),
          "journal": run.journal is not None,
          "started_at": (saw.get("run") or {}).get("started_at") or summary.get("started_at"),
          "last_record_at": saw.get("last"),
          "published": len(saw.get("published") or {}),
          "in_doubt": list(saw.get("in_doubt") or ()),
          "not_published": len(saw.get("not_published") or {}),
          "dead_letters": len(saw.get("dead_letters") or ()),
          "skipped": len(saw.get("skipped") or ()), "rerun": rerun}
