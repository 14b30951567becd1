"""Command-line validation: bad or missing configuration fails early, naming the flag.

Relay URLs off loopback, with credentials or bad ports, and a token given where a secret's
name belongs are refused without being echoed (issue 4).
"""

import argparse
import sqlite3

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import main as pipeline_main
from pipeline.options import (
  HELP_GROUPS,
  ConfigError,
  MigrationOptions,
  check_relay_url,
  validate,
)
from tests.support.keys import tiny_keys_db
from tests.support.runs import TOKEN_ENV
from tests.support.security import SECRET_NAME, TOKEN, needs_patch
from transforms.clients.relay.common import validate_relay_url
from transforms.clients.relay.publisher import RelayPublisher


@pytest.fixture
def base(tmp_path):
  keys = tmp_path / "keys.db"
  sqlite3.connect(str(keys)).close()
  rows = tmp_path / "rows.ndjson"
  rows.write_text("")
  return ["--relays", "ws://127.0.0.1:7777", "--migration-api", "http://127.0.0.1:8080",
          "--cdn-base", "http://127.0.0.1:8080", "--keys-db", str(keys), "--rows", str(rows)]


ENV = {"CF_STREAM_MIGRATION_TOKEN": "t"}


def _validate(argv, environ=ENV):
  validate(PipelineOptions(argv).view_as(MigrationOptions), environ=environ)


def test_valid_configuration_passes(base):
  _validate(base)


@pytest.mark.parametrize("change,flag", [
    (["--relays", ""], "--relays"),
    (["--relays", "ws://relay.example.com"], "--relays"),
    (["--relays", "http://127.0.0.1:1"], "--relays"),
    (["--migration-api", "ftp://x"], "--migration-api"),
    (["--migration-api", "http://api.example.com"], "--migration-api"),
    (["--cdn-base", "file:///etc"], "--cdn-base"),
    (["--keys-db", "/nonexistent.db"], "--keys-db"),
    (["--rows", "/nonexistent/*.ndjson"], "--rows"),
    (["--api-limit", "0"], "--api-limit"),
    (["--min-relays", "2"], "--min-relays"),
    (["--dead-letter-table", "not a table"], "--dead-letter-table"),
    (["--mode", "replay"], "--replay-from"),
    (["--kek", "env:NOT_SET_ANYWHERE"], "--kek"),
    (["--bigquery-temp-dataset", "only_a_dataset"], "--bigquery-temp-dataset"),
])
def test_bad_configuration_names_the_flag(base, change, flag):
  with pytest.raises(ConfigError, match=flag):
    _validate(base + change)


def test_token_only_from_the_environment(base):
  with pytest.raises(ConfigError, match="CF_STREAM_MIGRATION_TOKEN"):
    _validate(base, environ={})


def test_main_exits_2_on_bad_configuration(base, capsys, monkeypatch):
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", "t")
  assert pipeline_main.run(base + ["--api-limit", "-1"]) == 2
  assert "--api-limit" in capsys.readouterr().err


def test_multi_threading_mode_is_refused(base, capsys, monkeypatch):
  monkeypatch.setenv("CF_STREAM_MIGRATION_TOKEN", "t")
  assert pipeline_main.run(base + ["--direct_running_mode=multi_threading"]) == 2
  assert "multi_threading" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Relay URLs and the token secret (issue 4).

RELAYS_OK = ["wss://relay.divine.video", "wss://relay.example:443/path", "ws://127.0.0.1:7777",
             "ws://localhost:7777", "ws://[::1]:7777", "ws://127.8.9.10"]
RELAYS_REFUSED = ["ws://relay.example", "ws://10.0.0.1:7777", "ws://169.254.169.254",
                  "ws://0.0.0.0:7777", "ws://[::ffff:127.0.0.1]:7", "ws://127.0.0.1.evil.example",
                  "http://127.0.0.1:7777", "https://relay.example", "file:///tmp/relay",
                  "gopher://relay.example", "wss://", "relay.example"]


@pytest.mark.parametrize("url", RELAYS_OK)
def test_relay_urls_accepted(url):
  assert check_relay_url(url) == url and validate_relay_url(url) == url


@pytest.mark.parametrize("url", RELAYS_REFUSED)
def test_relay_urls_refused_by_options_client_and_publisher(url):
  with pytest.raises(ConfigError):
    check_relay_url(url)
  with pytest.raises(ValueError):
    validate_relay_url(url)
  with pytest.raises(ValueError):
    RelayPublisher(url)


@needs_patch
@pytest.mark.parametrize("url", ["wss://user:hunter2-secret@relay.example",
                                 "wss://user:hunter2-secret@relay.example:bad",
                                 "ws://u:p@127.0.0.1:7777", "wss://relay.example:99999",
                                 "wss://relay.example:port"])
def test_relay_urls_with_credentials_or_bad_ports_are_refused(url):
  with pytest.raises(ConfigError) as info:
    check_relay_url(url)
  assert "hunter2" not in str(info.value)
  with pytest.raises(ValueError) as info:
    validate_relay_url(url)
  assert "hunter2" not in str(info.value)


def test_a_plain_ws_relay_off_loopback_fails_before_the_run(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv(TOKEN_ENV, TOKEN)
  db = tmp_path / "keys.db"
  db.write_bytes(b"")
  rows = tmp_path / "rows.ndjson"
  rows.write_text("")
  code = pipeline_main.run(["--relays", "ws://relay.example", "--rows", str(rows),
                            "--migration-api", "https://api.example", "--keys-db", str(db)])
  assert code == 2 and "--relays" in capsys.readouterr().err


@needs_patch
def test_token_secret_option_holds_a_name_and_replaces_the_env_var(monkeypatch, tmp_path):
  monkeypatch.delenv(TOKEN_ENV, raising=False)
  db = tmp_path / "keys.db"
  tiny_keys_db(str(db), 0o600)
  rows = tmp_path / "rows.ndjson"
  rows.write_text("")
  base = ["--relays", "wss://relay.example", "--rows", str(rows),
          "--migration-api", "https://api.example", "--keys-db", str(db)]
  opts = PipelineOptions(base + ["--token-secret", "gcp-secret:" + SECRET_NAME]).view_as(
      MigrationOptions)
  validate(opts, environ={})
  assert opts.token_secret == "gcp-secret:" + SECRET_NAME
  with pytest.raises(ConfigError) as info:
    validate(PipelineOptions(base + ["--token-secret", TOKEN]).view_as(MigrationOptions),
             environ={})
  assert TOKEN not in str(info.value) and "--token-secret" in str(info.value)
  with pytest.raises(ConfigError, match=TOKEN_ENV):
    validate(PipelineOptions(base).view_as(MigrationOptions), environ={})


def test_help_lists_every_flag_once_in_its_group_and_exits_0(capsys):
  assert pipeline_main.run(["--help"]) == 0
  text = capsys.readouterr().out
  flags = [f for _, _, group in HELP_GROUPS for f in group]
  assert len(flags) == len(set(flags))
  parser = argparse.ArgumentParser()
  MigrationOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  declared = {s for action in parser._actions for s in action.option_strings} - {"-h", "--help"}
  assert declared == set(flags)  # no flag without a group, no group entry without a flag
  positions = [text.index("\n%s:\n" % title) for title, _, _ in HELP_GROUPS]
  assert positions == sorted(positions)
  for title, _, group in HELP_GROUPS:
    section = text[text.index("\n%s:\n" % title):]
    assert all(flag in section for flag in group)
  words = " ".join(text.split())
  assert "Default: env NOSTR_RELAYS" in words and "--runner" in words and "--dry_run" in words
