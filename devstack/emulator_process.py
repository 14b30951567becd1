"""EmulatorProcess: the migration emulator run as a subprocess (tests, benchmarks, local stack).

Starts ``python -m devstack.emulator`` on a free port, waits for its READY line and
drives its control API (stats, runtime knobs, counter resets). Knobs are passed as
flags where the command line has one and in a ``--config`` file otherwise; the token
only through the environment, so it never shows in a process listing.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading

import requests

from devstack.emulator_state import DEFAULTS, SET_KNOBS
from devstack.processes import terminate

# Knobs devstack.emulator.parse_args takes as flags; the others go in the --config file.
_CLI_KNOBS = set(DEFAULTS) - set(SET_KNOBS) - {'token', 'manifest_gone', 'fault_keyed'}


class EmulatorProcess:
  """Runs the emulator as a subprocess; a context manager for tests and scripts.

  Example::

    with EmulatorProcess(token='t', openvine_ids=['1751085897568-0fd41442'], shape='aug2025') as emu:
      requests.post(emu.url + '/v1/openvine/migrate', ...)
      assert emu.stats()['migrations'] == 1
  """

  def __init__(self, token='test-token', openvine_ids=(), startup_timeout=20.0, **knobs):
    """Stores the settings; ``start()`` (or ``with``) launches the process.

    Args:
      token: Bearer token, passed through the EMULATOR_TOKEN environment variable.
      openvine_ids: OpenVine ids the emulator holds (written to a file for --openvine-ids).
      startup_timeout: Seconds to wait for the READY line.
      **knobs: Any config knob; those with a command-line flag are passed as flags, the rest in a
        --config file.
    """
    self.token, self.openvine_ids, self.startup_timeout, self.knobs = (
      token, list(openvine_ids), startup_timeout, knobs)
    self.url, self._proc, self._tmp, self._stderr, self._stderr_tail = None, None, None, None, ''

  def _argv(self):
    argv = ['--port', '0', '--openvine-ids', self._write('openvine_ids.txt', self.openvine_ids)]
    rest = {}
    for key, value in self.knobs.items():
      if key == 'always_fail_vine_ids':
        argv += ['--always-fail-vine-ids', self._write('always_fail.txt', value)]
      elif key in _CLI_KNOBS and isinstance(value, bool):
        argv += ['--' + key.replace('_', '-')] if value else []
      elif key in _CLI_KNOBS:
        argv += ['--' + key.replace('_', '-'), str(value)]
      else:
        rest[key] = sorted(value) if isinstance(value, (set, frozenset, tuple, list)) else value
    if rest:
      argv += ['--config', self._write('config.json', None, json.dumps(rest))]
    return argv

  def _write(self, name, lines, text=None):
    path = os.path.join(self._tmp.name, name)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text if text is not None else ''.join(f'{x}\n' for x in lines))
    return path

  def start(self):
    """Starts the process and waits for READY; returns self."""
    self._tmp = tempfile.TemporaryDirectory(prefix='emulator-')
    cmd = [sys.executable, '-m', 'devstack.emulator', *self._argv()]
    env = {**os.environ, 'EMULATOR_TOKEN': self.token}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
    self._stderr = open(os.path.join(self._tmp.name, 'stderr.log'), 'w+', encoding='utf-8')
    self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
    line = _read_line(self._proc.stdout, self.startup_timeout)
    if not line.startswith('READY '):
      self.stop()
      raise RuntimeError(f'emulator did not start (got {line!r}); stderr tail:\n{self._stderr_tail}')
    self.url = line.split()[1]
    return self

  def stats(self):
    """Returns the ``/_emulator/stats`` JSON."""
    return self._control('get', 'stats')

  def configure(self, **knobs):
    """Updates knobs at runtime (sets given as lists, sets or tuples)."""
    body = {k: sorted(v) if isinstance(v, (set, frozenset, tuple)) else v for k, v in knobs.items()}
    return self._control('post', 'config', json=body)

  def reset_stats(self, forget_migrations=False):
    """Zeroes the counters; optionally forgets migrated videos too."""
    return self._control('post', 'reset_stats', json={'forget_migrations': forget_migrations})

  def _control(self, method, name, **kwargs):
    response = requests.request(method, f'{self.url}/_emulator/{name}', timeout=10, **kwargs)
    response.raise_for_status()
    return response.json()

  def stop(self):
    """Stops the process (SIGTERM, then SIGKILL after 5 s) and removes its temporary files."""
    if self._proc is not None:
      terminate(self._proc)
      self._proc.stdout.close()
      self._stderr_tail = self._read_stderr_tail()
      self._proc = None
    if self._tmp is not None:
      self._tmp.cleanup()
      self._tmp = None

  def _read_stderr_tail(self):
    self._stderr.seek(0)
    tail = self._stderr.read()[-2000:]
    self._stderr.close()
    return tail

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()



def _read_line(stream, timeout):
  """Reads one line from a pipe, giving up after ``timeout`` seconds."""
  result = []
  reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
  reader.start()
  reader.join(timeout)
  return result[0].strip() if result else ''

