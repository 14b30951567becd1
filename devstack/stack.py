"""The embedded local stack: a real relay, the migration API emulator and sample data.

    python -m devstack.stack --n 50            # what ./run_local.sh runs

starts a LocalRelay (LMDB storage under the work dir, so it can be inspected after
the run) and the emulator on 127.0.0.1, generates N realistic vines, publishes
their "before migration" events to the relay, runs the pipeline against it all,
checks the relay's state afterwards and stops everything. Tests use LocalStack
directly.

    python -m devstack.stack --keep            # ./run_local.sh --keep: the stack stays up
    python -m devstack.stack --status | --down

keep the relay, the emulator and their data between runs (devstack/kept.py).
"""

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
from typing import Dict, List, Optional

from devstack import sampledata
from devstack.emulator_process import EmulatorProcess
from devstack.relay import RelayProcess
from transforms.clients.relay.publisher import RelayPublisher
from transforms.clients.relay.reader import fetch_events
from transforms.clients.secrets import TOKEN_ENV_VAR
from transforms.nostr.event import validate_event

_LOG = logging.getLogger("devstack")


def split_events(events_path: str, archive_path: str) -> List[dict]:
  """Valid events (returned, for the relay) and the rest, written to archive_path.

  A real relay refuses an event with a forged id or signature, and nostr-sdk's
  relay an addressable event without `d`, so those planted events reach the
  pipeline the way they do in the wild: from an archive (a relay export), read
  with --events-file.
  """
  valid, hostile = [], []
  with open(events_path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        event = json.loads(line)
        relay_takes = validate_event(event) is None and any(
            t and t[0] == "d" for t in event["tags"])
        (valid if relay_takes else hostile).append(event)
  with open(archive_path, "w", encoding="utf-8") as f:
    for event in hostile:
      f.write(json.dumps(event, ensure_ascii=False) + "\n")
  return valid


def publish_events(relay_url: str, events: List[dict]) -> int:
  """Publishes events to a relay; returns how many were accepted."""
  # Older versions first, as they were published in reality: a relay refuses an
  # addressable event older than the version it holds.
  events.sort(key=lambda e: e.get("created_at", 0))
  publisher = RelayPublisher(relay_url, max_in_flight=500, ack_timeout=20.0)
  accepted = 0
  try:
    for event in events:
      publisher.submit(event)
      accepted += sum(1 for r in publisher.poll() if r.accepted)
    accepted += sum(1 for r in publisher.drain(timeout=120) if r.accepted)
  finally:
    publisher.close()
  return accepted


class LocalStack:
  """Relay(s) + emulator + sample data under one work directory."""

  def __init__(self, work_dir: str, n_vines: int = 50, seed: int = 7, relays: int = 1,
               lmdb: bool = False, plant_failures: bool = True,
               emulator_knobs: Optional[Dict] = None, publish: bool = True):
    self.work_dir = os.path.abspath(work_dir)
    self.n_vines = n_vines
    self.seed = seed
    self.relay_count = relays
    self.lmdb = lmdb
    self.plant_failures = plant_failures
    self.emulator_knobs = dict(emulator_knobs or {})
    self.publish = publish
    self.token = secrets.token_hex(16)
    self.relays: List[RelayProcess] = []
    self.emulator: Optional[EmulatorProcess] = None
    self.manifest: Dict = {}

  @property
  def data_dir(self) -> str:
    return os.path.join(self.work_dir, "data")

  @property
  def relay_urls(self) -> List[str]:
    return [r.url for r in self.relays]

  def path(self, name: str) -> str:
    return os.path.join(self.data_dir, name)

  def start(self) -> "LocalStack":
    self.generate_data()
    for index in range(self.relay_count):
      self.relays.append(RelayProcess(lmdb=self.lmdb_dir(index)).start())
    self.emulator = EmulatorProcess(token=self.token, openvine_ids=self.held_openvine_ids(),
                                    **self.emulator_knobs).start()
    self.publish_sample_events()
    return self

  def generate_data(self) -> None:
    """The sample data under data/ (rows, events, keys, the emulator's ids, the manifest)."""
    os.makedirs(self.work_dir, exist_ok=True)
    self.manifest = sampledata.generate(self.data_dir, self.n_vines, seed=self.seed,
                                        plant_failures=self.plant_failures)
    os.chmod(self.path("keys.db"), 0o600)

  def lmdb_dir(self, index: int) -> Optional[str]:
    """Relay `index`'s LMDB folder, emptied (None: the relay keeps events in memory)."""
    if not self.lmdb:
      return None
    lmdb_dir = os.path.join(self.work_dir, "relay%d.lmdb" % index)
    shutil.rmtree(lmdb_dir, ignore_errors=True)
    return lmdb_dir

  def held_openvine_ids(self) -> List[str]:
    with open(self.path("openvine_ids.txt"), encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]

  def publish_sample_events(self) -> None:
    """The "before migration" events to every relay (the relay-refused ones to the archive)."""
    valid = split_events(self.path("events.ndjson"), self.path("archive_events.ndjson"))
    if self.publish:
      for url in self.relay_urls:
        accepted = publish_events(url, list(valid))
        _LOG.info("published %d sample events to %s", accepted, url)

  def stop(self) -> None:
    if self.emulator:
      self.emulator.stop()
    for relay in self.relays:
      relay.stop()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def env(self) -> Dict[str, str]:
    return {TOKEN_ENV_VAR: self.token}

  def pipeline_args(self, output_dir: Optional[str] = None, extra: Optional[List[str]] = None):
    return ["--relays", ",".join(self.relay_urls),
            "--rows", self.path("rows.ndjson"),
            "--migration-api", self.emulator.url,
            "--cdn-base", self.emulator.url,
            "--keys-db", self.path("keys.db"),
            "--events-file", self.path("archive_events.ndjson"),
            "--output-dir", output_dir or os.path.join(self.work_dir, "out"),
            ] + list(extra or [])

  def relay_events(self, index: int = 0, kind: int = 32222) -> List[dict]:
    """Every event of `kind` (default 32222) the relay holds now."""
    return list(fetch_events(self.relay_urls[index], {"kinds": [kind]}))


def check_relay_state(events: List[dict]) -> Dict[str, int]:
  """Counts what the relay holds after a run: versions per address, migrated, valid."""
  per_address: Dict = {}
  migrated = invalid = 0
  for event in events:
    d = next((t[1] for t in event["tags"] if len(t) >= 2 and t[0] == "d"), None)
    per_address[(event["pubkey"], d)] = per_address.get((event["pubkey"], d), 0) + 1
    if any(t[:2] == ["migration", "openvine-to-stream"] for t in event["tags"]):
      migrated += 1
    if validate_event(event) is not None:
      invalid += 1
  return {"events": len(events), "addresses": len(per_address),
          "duplicated_addresses": sum(1 for n in per_address.values() if n > 1),
          "migrated": migrated, "invalid": invalid}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Any other flag goes to the pipeline, e.g. --api-limit 50 or --event-kind both: "
      "python -m pipeline.main --help lists them.")
  parser.add_argument("--n", type=int, default=50, help="sample vines to generate (default 50)")
  parser.add_argument("--work-dir", default=".local", help="stack state (default .local)")
  parser.add_argument("--seed", type=int, default=7)
  parser.add_argument("--relays", type=int, default=1, help="relay processes (default 1)")
  kept = parser.add_mutually_exclusive_group()
  kept.add_argument("--keep", action="store_true",
                    help="leave the relay, the emulator and their data up after the run, under "
                    "WORK_DIR/stack/; a later --keep run reuses them (no new data, no new "
                    "sample events): a re-run makes no calls for vines already done")
  kept.add_argument("--status", action="store_true",
                    help="say whether a kept stack is up, its URLs and how to use it (exit 0 "
                    "when up, 1 when not)")
  kept.add_argument("--down", action="store_true", help="stop a kept stack")
  args, pipeline_extra = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  from devstack.kept import KeptStack  # pylint: disable=import-outside-toplevel
  from pipeline import main as pipeline_main  # pylint: disable=import-outside-toplevel
  record = KeptStack(args.work_dir, n_vines=args.n, seed=args.seed)
  if args.status:
    print("\n".join(record.status_lines()))
    return 0 if record.is_up() else 1
  if args.down:
    stopped = record.down()
    print("local stack down (%d processes stopped)" % len(stopped))
    return 0
  if args.keep:
    return _run_kept(record, pipeline_extra, pipeline_main)
  if record.is_up():
    print("a kept local stack is up under %s: run with --keep to use it, or --down first "
          "(this run would overwrite its data)" % args.work_dir, file=sys.stderr)
    return 2
  with LocalStack(args.work_dir, n_vines=args.n, seed=args.seed, relays=args.relays,
                  lmdb=True) as stack:
    os.environ.update(stack.env())
    code = pipeline_main.run(stack.pipeline_args(extra=pipeline_extra))
    state = check_relay_state(stack.relay_events())
    print("relay state:     %s" % json.dumps(state))
    videos = check_relay_state(stack.relay_events(kind=34236))
    if videos["events"]:
      print("relay 34236:     %s" % json.dumps(videos))
      state["invalid"] += videos["invalid"]
      state["duplicated_addresses"] += videos["duplicated_addresses"]
    print("emulator:        %d migrate calls, %d migrations"
          % (stack.emulator.stats()["migrate_calls_total"], stack.emulator.stats()["migrations"]))
    print("planted failures: %s" % json.dumps(stack.manifest.get("planted", {}),
                                              ensure_ascii=False)[:2000])
    if state["invalid"] or state["duplicated_addresses"]:
      print("relay state check FAILED", file=sys.stderr)
      code = code or 1
  return code


def _run_kept(stack, pipeline_extra: List[str], pipeline_main) -> int:
  """One pipeline run on the kept stack (started when it is not up); the stack stays up."""
  stack.start()
  print("local stack %s: relay %s, emulator %s" % (
      "reused" if stack.reused else "started (kept)", ",".join(stack.relay_urls),
      stack.emulator.url))
  os.environ.update(stack.env())
  before = stack.emulator.stats()["migrate_calls_total"]
  code = pipeline_main.run(stack.pipeline_args(extra=pipeline_extra))
  print("emulator:        %d migrate calls in this run"
        % (stack.emulator.stats()["migrate_calls_total"] - before))
  print("relay state:     %s" % json.dumps(check_relay_state(stack.relay_events())))
  print("the stack stays up:")
  print("\n".join(stack.usage_lines()))
  return code


if __name__ == "__main__":
  sys.exit(main())
