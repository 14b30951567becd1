"""run_dataflow.sh: --help documents both launch paths; the command it builds (printed, never run)."""

import os
import re
import shlex
import subprocess

from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

from pipeline.options import MigrationOptions
from tests.support.paths import ROOT

SCRIPT = os.path.join(ROOT, "run_dataflow.sh")
BASE_ENV = {"PATH": os.environ["PATH"], "GCP_PROJECT": "my-proj-123", "GCP_REGION": "us-central1",
            "GCS_TEMP": "gs://bucket/tmp", "DATAFLOW_PRINT_ARGS": "1"}


def _script(*args, **env):
  return subprocess.run(["bash", SCRIPT, *args], env=dict(BASE_ENV, **env), cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)


def _command(*args, **env):
  done = _script(*args, **env)
  assert done.returncode == 0, done.stderr
  argv = shlex.split(done.stdout)
  assert argv[:3] == ["python", "-m", "pipeline.main"]
  return argv[3:]


def test_help_documents_both_launch_paths_and_what_workers_reach():
  done = subprocess.run(["bash", SCRIPT, "--help"], env={"PATH": os.environ["PATH"]}, cwd=ROOT,
                        capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0
  text = done.stdout
  assert "WORKER_IMAGE" in text and "--sdk_container_image" in text
  assert "gcloud dataflow flex-template build" in text and "flex-template run" in text
  (metadata,) = set(re.findall(r"--metadata-file (\S+)", text))
  assert os.path.isfile(os.path.join(ROOT, metadata))
  for must in ("migration API", "relay", "CDN", "Cloud NAT", "public IPs"):
    assert must in text, must


def test_prebuilt_image_replaces_the_setup_file():
  with_image = _command(WORKER_IMAGE="us-docker.pkg.dev/p/r/vine-migration:1")
  assert with_image[with_image.index("--sdk_container_image") + 1].endswith("vine-migration:1")
  assert "--setup_file" not in with_image
  without = _command()
  assert "--sdk_container_image" not in without
  assert without[without.index("--setup_file") + 1] == "./setup.py"


def test_defaults_are_the_sizing_sections_and_flags_after_the_script_win():
  options = PipelineOptions(_command())
  api_limit = options.view_as(MigrationOptions).api_limit
  workers = options.view_as(WorkerOptions)
  with open(os.path.join(ROOT, "docs", "dataflow.md"), encoding="utf-8") as handle:
    docs = handle.read()
  recommended = re.search(r"recommended defaults: `--api-limit (\d+)`, (\d+) workers? of "
                          r"`([a-z0-9-]+)`", docs)
  assert recommended, "docs/dataflow.md Sizing states the recommended defaults"
  assert (api_limit, workers.max_num_workers, workers.machine_type) == (
      int(recommended.group(1)), int(recommended.group(2)), recommended.group(3))
  overridden = PipelineOptions(_command("--api-limit", "7", API_LIMIT="50"))
  assert overridden.view_as(MigrationOptions).api_limit == 7
  assert PipelineOptions(_command(API_LIMIT="50")).view_as(MigrationOptions).api_limit == 50


def test_private_workers_and_missing_settings():
  argv = _command(DATAFLOW_NO_PUBLIC_IPS="1", DATAFLOW_SUBNETWORK="regions/r/subnetworks/s")
  assert "--no_use_public_ips" in argv and "regions/r/subnetworks/s" in argv
  assert "--no_use_public_ips" not in _command()
  done = _script(GCP_PROJECT="")
  assert done.returncode == 2 and "GCP_PROJECT" in done.stderr
