"""The worker image: its base matches the pinned Beam and Python, its context holds what workers need."""

import os
import re
import shutil
import sys

from deploy.image import base_images, build_context
from tests.support.paths import ROOT


def _setup_text():
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
    return handle.read()


def _dockerfile():
  with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as handle:
    return handle.read()


def test_base_image_is_beams_sdk_of_the_pinned_version_and_python():
  beam = re.search(r'"apache-beam\[gcp\]==([0-9.]+)"', _setup_text()).group(1)
  minor = re.search(r'python_requires=">=3\.(\d+),<3\.(\d+)"', _setup_text()).group(1)
  assert sys.version_info[:2] == (3, int(minor))  # the tests run on the Python workers get
  images = base_images()
  final = images[-1][0]  # the last FROM is the image that is run
  assert final == "apache/beam_python3.%s_sdk:%s" % (minor, beam)
  launcher = [image for image, stage in images if stage == "launcher"]
  assert len(launcher) == 1 and "python3%s-template-launcher" % minor in launcher[0]


def test_context_holds_every_shipped_module_and_nothing_else():
  context = set(build_context())
  shipped = set()
  for package in ("pipeline", "transforms"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
      shipped |= {os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
                  for f in files if f.endswith(".py")}
  assert shipped and shipped <= context
  assert {"setup.py", "deploy/flex_main.py", "deploy/template.py",
          "deploy/flex-template-metadata.json"} <= context
  tops = {path.split("/")[0] for path in context}
  assert tops == {"setup.py", "pipeline", "transforms", "deploy"}


def test_dockerignore_keeps_out_tests_devstack_venv_and_stray_secrets(tmp_path):
  shutil.copy(os.path.join(ROOT, ".dockerignore"), tmp_path / ".dockerignore")
  files = ["setup.py", "pipeline/main.py", "pipeline/__pycache__/main.cpython-311.pyc",
           "transforms/io/vine_rows.py", "transforms/keys.db", "deploy/flex_main.py",
           "tests/unit/test_x.py", "devstack/stack.py", "bench/run_bench.py",
           ".venv/lib/python3.11/site.py", ".local/out/run/summary.json", "keys.enc.db",
           ".env", "deploy/.env.local", "new_folder/tool.py", "docs/dataflow.md"]
  for name in files:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("x")
  assert build_context(str(tmp_path)) == [
      "deploy/flex_main.py", "pipeline/main.py", "setup.py", "transforms/io/vine_rows.py"]


def test_every_copy_source_is_in_the_context_and_the_launcher_file_exists():
  text = _dockerfile()
  context = build_context()
  sources = [line.split()[1] for line in text.splitlines()
             if line.startswith("COPY ") and "--from=" not in line]
  assert sources == ["setup.py", "pipeline", "transforms", "deploy"]
  for source in sources:
    assert any(path == source or path.startswith(source + "/") for path in context), source
  py_file = re.search(r"^ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)$", text, re.M).group(1)
  assert py_file in context


def test_no_secret_is_baked_into_the_image():
  settings = [line for line in _dockerfile().splitlines() if re.match(r"^(ENV|ARG)\s", line)]
  assert settings  # the check reads something
  for line in settings:
    assert not re.search(r"TOKEN|KEK|SECRET|PASSWORD|MIGRATION_DB|PRIVATE", line, re.I), line
