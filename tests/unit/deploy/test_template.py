"""The flex template: its metadata covers every flag exactly, holds no secret, and its launcher maps back."""

import json
import re

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from deploy import template
from deploy.flex_main import to_flags
from pipeline.options import MigrationOptions, help_text
from transforms.clients.secrets import TOKEN_ENV_VAR, check_secret_spec
from transforms.io.bigquery_tables import parse_table_spec


@pytest.fixture(scope="module")
def params():
  with open(template.METADATA_PATH, encoding="utf-8") as handle:
    return {p["name"]: p for p in json.load(handle)["parameters"]}


def _accepts(param, value):
  return all(re.match(regex, value) for regex in param.get("regexes", ()))


def test_committed_metadata_is_what_the_flags_give(capsys):
  assert template.main(["--check"]) == 0, "run python -m deploy.template"
  assert "matches" in capsys.readouterr().out


def test_every_flag_is_exactly_one_parameter(params):
  # The flags as --help lists them, read independently of deploy.template.
  listed = set(re.findall(r"^\s+(--[a-z][a-z-]+)", help_text(), re.M)) - {"--help"}
  mapped = {to_flags(["--%s=true" % name])[0].split("=")[0] for name in params}
  assert listed and mapped == listed
  assert len(mapped) == len(params)


def test_parameters_are_well_formed(params):
  for name, param in params.items():
    assert re.match(r"^[a-z][a-z0-9_]*$", name), name
    assert param["label"] and param["helpText"] and isinstance(param["isOptional"], bool)
    for regex in param.get("regexes", ()):
      re.compile(regex)
  required = {name for name, param in params.items() if not param["isOptional"]}
  assert required == {"relays", "migration_api", "keys_db", "token_secret", "output_dir"}


def test_no_secret_value_is_a_parameter(params):
  secretish = {name for name in params
               if re.search(r"token|password|private|nsec|kek|secret|key", name)}
  # Only references: a Secret Manager version, a KEK reference and a keys database path.
  assert secretish == {"token_secret", "kek", "keys_db"}
  assert TOKEN_ENV_VAR.lower() not in params and "token" not in params
  version = "projects/p/secrets/cf-token/versions/3"
  assert _accepts(params["token_secret"], version) and check_secret_spec(version) == version
  kek = params["kek"]
  assert _accepts(kek, "gcp-secret:projects/p/secrets/kek/versions/7")
  for value in ("ab" * 32, "env:MIGRATION_KEK", "file:/etc/kek", "Bearer abc.def",
                "nsec1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsmhltgl"):
    assert not _accepts(kek, value) and not _accepts(params["token_secret"], value), value
  assert _accepts(params["keys_db"], "gs://bucket/keys.enc.db")
  assert not _accepts(params["keys_db"], "nsec1abc")


@pytest.mark.parametrize("name,good,bad", [
    ("relays", "wss://relay.divine.video,wss://b.example", "ws://relay.example"),
    ("migration_api", "https://api.example.workers.dev", "https://user:pw@api.example"),
    ("api_limit", "120", "-1"),
    ("retry_base_delay", "0.5", "fast"),
    ("event_kind", "both", "1"),
    ("force_remigrate", "true", "yes"),
    ("dead_letter_table", "my-proj:vine_migration.dead_letters", "dead_letters"),
    ("bigquery_temp_dataset", "my-proj:scratch", "scratch"),
])
def test_regexes_accept_what_the_pipeline_accepts(params, name, good, bad):
  assert _accepts(params[name], good) and not _accepts(params[name], bad)
  if name == "dead_letter_table":
    parse_table_spec(good, "--dead-letter-table")


def test_launcher_turns_parameters_back_into_flags():
  argv = to_flags(["--api_limit=120", "--force_remigrate=true", "--require_blurhash=false",
                   "--test_mode=TRUE", "--event_kind=both", "--project=my-proj",
                   "--relays=wss://a.example,wss://b.example"])
  assert "--require-blurhash" not in argv and "--no-progress" in argv
  options = PipelineOptions(argv)
  opts = options.view_as(MigrationOptions)
  assert (opts.api_limit, opts.force_remigrate, opts.require_blurhash, opts.test_mode) == (
      120, True, False, True)
  assert opts.event_kind == "both" and opts.relays == "wss://a.example,wss://b.example"
  assert options.view_as(GoogleCloudOptions).project == "my-proj"  # Beam's own, untouched
