"""setup.py: workers install only what transforms/ imports; launcher, local and test extras apart."""

import ast
import os
import re
import runpy
import sys

import pytest
import setuptools

from tests.support.paths import ROOT

# Import name -> the distribution that provides it (where the two differ).
_DIST_OF = {"PIL": "pillow", "websocket": "websocket-client", "apache_beam": "apache-beam",
            "google": "apache-beam", "nostr_sdk": "nostr-sdk"}


@pytest.fixture(scope="module")
def setup_kwargs():
  captured = {}
  cwd = os.getcwd()
  real_setup = setuptools.setup
  try:
    os.chdir(ROOT)  # find_packages looks at the working directory
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    runpy.run_path(os.path.join(ROOT, "setup.py"))
  finally:
    setuptools.setup = real_setup
    os.chdir(cwd)
  return captured


def _names(requirements):
  """'apache-beam[gcp]==2.77.0' -> 'apache-beam' (lower case, extras and versions dropped)."""
  return {re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0].lower() for req in requirements}


def _third_party_imports(folder):
  """{import name: [files]} of every import below ROOT/folder that is not stdlib or ours."""
  found = {}
  for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          tops = [node.module.split(".")[0]]
        else:
          continue
        for top in tops:
          if top not in sys.stdlib_module_names and top not in ("pipeline", "transforms"):
            found.setdefault(top, []).append(os.path.relpath(path, ROOT))
  return found


def test_workers_get_only_the_pipeline_packages(setup_kwargs):
  packages = setup_kwargs["packages"]
  assert "transforms" in packages and "pipeline" in packages and "transforms.clients.relay" in packages
  assert not [p for p in packages if p.split(".")[0] in ("devstack", "tests", "bench", "deploy")]


def test_every_worker_import_is_installed_on_workers(setup_kwargs):
  workers = _names(setup_kwargs["install_requires"])
  imports = _third_party_imports("transforms")
  assert {"apache_beam", "coincurve", "aiohttp", "numpy", "PIL", "websocket"} <= set(imports)
  missing = {top: files for top, files in imports.items()
             if _DIST_OF.get(top, top).lower() not in workers}
  assert not missing


def test_launcher_imports_are_in_the_launcher_extra(setup_kwargs):
  available = _names(setup_kwargs["install_requires"]) | _names(
      setup_kwargs["extras_require"]["launcher"])
  imports = _third_party_imports("pipeline")
  assert "rich" in imports  # the progress display and the summary table
  assert not {top for top in imports if _DIST_OF.get(top, top).lower() not in available}
  assert "rich" not in _third_party_imports("transforms")  # so workers need not have it


def test_packages_nothing_on_workers_imports_stay_off_workers(setup_kwargs):
  workers = _names(setup_kwargs["install_requires"])
  # pynostr pulls tlv8 (built from source) and typer; blurhash is the encoder's reference only.
  assert not workers & {"pynostr", "blurhash", "rich", "requests", "nostr-sdk", "pytest", "ruff"}
  extras = setup_kwargs["extras_require"]
  assert {"pynostr", "blurhash", "pytest"} <= _names(extras["test"])
  assert "nostr-sdk" in _names(extras["local"])  # devstack's relay process


def test_the_venv_installs_every_extra():
  with open(os.path.join(ROOT, "tools", "ensure_venv.sh"), encoding="utf-8") as handle:
    script = handle.read()
  match = re.search(r'pip install -q -e "\$ROOT\[([a-z,]+)\]"', script)
  assert match and set(match.group(1).split(",")) == {"launcher", "local", "test"}
