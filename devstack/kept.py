"""A local stack that stays up between runs: `./run_local.sh --keep`, `--status`, `--down`.

The first `--keep` run generates the sample data, starts the relay (LMDB storage) and
the emulator as processes of their own (they outlive the command, see
processes.spawn_detached), publishes the sample events and records the stack in
`<work-dir>/stack/`: `stack.json` (pids, ports, URLs), `token` (the emulator's token,
mode 0600) and each process's log. Later `--keep` runs find it up and attach to it:
nothing is regenerated or republished, the relay keeps what the runs published and the
emulator what it migrated, so a re-run makes no calls and publishes nothing, and the
commands a run prints (the replay command of `pipeline.report`) work against the live
ports. `--down` stops both processes (each pid checked to still run its module) and
removes the record; `--status` says what is up.

Tests use KeptStack directly, like LocalStack (which it extends).
"""

import json
import logging
import os
import sys
from typing import Dict, List, Optional

from devstack.emulator_process import EmulatorProcess
from devstack.processes import ROOT, child_env, pid_alive, runs_module, spawn_detached, stop_pid
from devstack.relay import READY_PREFIX, RelayProcess, free_port
from devstack.stack import LocalStack
from transforms.core.text import utc_now_iso

_LOG = logging.getLogger("devstack")

STATE_DIR = "stack"
STATE_FILE = "stack.json"
TOKEN_FILE = "token"
RELAY_MODULE = "devstack.relay"
EMULATOR_MODULE = "devstack.emulator"


class KeptStack(LocalStack):
  """The local stack whose relay and emulator outlive this process (see the module doc).

  Attributes:
    reused: whether start() found the stack up and attached to it.
  """

  def __init__(self, work_dir: str, n_vines: int = 50, seed: int = 7,
               plant_failures: bool = True):
    super().__init__(work_dir, n_vines=n_vines, seed=seed, relays=1, lmdb=True,
                     plant_failures=plant_failures)
    self.reused = False

  @property
  def state_dir(self) -> str:
    return os.path.join(self.work_dir, STATE_DIR)

  @property
  def token_path(self) -> str:
    return os.path.join(self.state_dir, TOKEN_FILE)

  def state(self) -> Optional[Dict]:
    """What stack.json records, or None when there is no (readable) record."""
    try:
      with open(os.path.join(self.state_dir, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    except (OSError, ValueError):
      return None
    return state if isinstance(state, dict) else None

  def processes(self, state: Optional[Dict] = None) -> List[Dict]:
    """The recorded processes: {"name", "module", "pid", "url"} each."""
    state = self.state() if state is None else state
    if not state:
      return []
    found = [dict(r, name="relay%d" % i, module=RELAY_MODULE)
             for i, r in enumerate(state.get("relays") or [])]
    if state.get("emulator"):
      found.append(dict(state["emulator"], name="emulator", module=EMULATOR_MODULE))
    return found

  def is_up(self) -> bool:
    """Whether every recorded process still runs its module."""
    procs = self.processes()
    return bool(procs) and all(runs_module(int(p["pid"]), p["module"])
                               and pid_alive(int(p["pid"])) for p in procs)

  def start(self) -> "KeptStack":
    """Attaches to the stack when it is up, else starts it (what was left is stopped first)."""
    if self.is_up():
      self._attach(self.state())
      self.reused = True
      return self
    self.down()
    self.generate_data()
    os.makedirs(self.state_dir, exist_ok=True)
    fd = os.open(self.token_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(self.token)
    state = {"work_dir": self.work_dir, "n_vines": self.n_vines, "seed": self.seed,
             "started_at": utc_now_iso(), "relays": [], "emulator": None}
    try:
      relay = RelayProcess(port=free_port(), lmdb=self.lmdb_dir(0))
      pid, line = spawn_detached(relay.command(), self._log("relay0"), READY_PREFIX,
                                 child_env(), ROOT)
      state["relays"].append({"pid": pid, "url": line[len(READY_PREFIX):].strip()})
      self._write_state(state)  # a failure below still leaves the relay findable by --down
      ids_path = self.path("openvine_ids.txt")
      pid, line = spawn_detached(
          [sys.executable, "-m", EMULATOR_MODULE, "--port", "0", "--openvine-ids", ids_path],
          self._log("emulator"), "READY ", child_env({"EMULATOR_TOKEN": self.token}), ROOT)
      state["emulator"] = {"pid": pid, "url": line.split()[1]}
      self._write_state(state)
      self._attach(state)
      self.publish_sample_events()
    except BaseException:
      self.down()
      raise
    return self

  def _log(self, name: str) -> str:
    return os.path.join(self.state_dir, name + ".log")

  def _write_state(self, state: Dict) -> None:
    path = os.path.join(self.state_dir, STATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(state, f, indent=2)
    os.replace(path + ".tmp", path)

  def _attach(self, state: Dict) -> None:
    """Clients of the running processes (stop() on them stops nothing: not our children)."""
    with open(self.token_path, encoding="utf-8") as f:
      self.token = f.read().strip()
    self.relays = []
    for record in state["relays"]:
      relay = RelayProcess()
      relay.url = record["url"]
      self.relays.append(relay)
    self.emulator = EmulatorProcess(token=self.token)
    self.emulator.url = state["emulator"]["url"]
    if int(state.get("n_vines", self.n_vines)) != self.n_vines:
      _LOG.warning("the kept stack holds %s vines (--down first to change --n)",
                   state.get("n_vines"))
    self.n_vines, self.seed = int(state.get("n_vines", self.n_vines)), state.get("seed")
    try:
      with open(self.path("manifest.json"), encoding="utf-8") as f:
        self.manifest = json.load(f)
    except (OSError, ValueError):
      self.manifest = {}

  def stop(self) -> None:
    """Leaves the stack up (that is the point); `down()` stops it."""

  def down(self) -> List[int]:
    """Stops every recorded process still running its module; removes the record.

    Returns:
      The pids stopped.
    """
    stopped = []
    for proc in self.processes():
      pid = int(proc.get("pid") or 0)
      if pid_alive(pid) and runs_module(pid, proc["module"]):
        if not stop_pid(pid):
          raise RuntimeError("%s (pid %d) did not stop" % (proc["name"], pid))
        stopped.append(pid)
    for name in (STATE_FILE, TOKEN_FILE):
      try:
        os.remove(os.path.join(self.state_dir, name))
      except FileNotFoundError:
        pass
    return stopped

  def status_lines(self) -> List[str]:
    """What `--status` prints: each process, up or not, and how to use the stack."""
    state = self.state()
    if not state:
      return ["local stack: down (no record under %s)" % self.state_dir]
    lines = ["local stack under %s (started %s, %s sample vines):"
             % (self.work_dir, state.get("started_at"), state.get("n_vines"))]
    for proc in self.processes(state):
      pid = int(proc.get("pid") or 0)
      up = pid_alive(pid) and runs_module(pid, proc["module"])
      lines.append("  %-9s %s  pid %d  %s" % (proc["name"], "up  " if up else "DOWN", pid,
                                             proc.get("url")))
    return lines + self.usage_lines()

  def usage_lines(self) -> List[str]:
    return ["  token:    export CF_STREAM_MIGRATION_TOKEN=\"$(cat %s)\"" % self.token_path,
            "  re-run:   ./run_local.sh --keep   (pipeline flags may follow)",
            "  stop it:  ./run_local.sh --down"]
