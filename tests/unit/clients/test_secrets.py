"""The migration API token: only from the environment or Secret Manager, never echoed."""

import os
import subprocess
import sys

import pytest

from tests.support.paths import ROOT
from tests.support.runs import TOKEN_ENV
from tests.support.security import SECRET_NAME, TOKEN, FakeSecretManager
from transforms.clients import secrets as sv


def test_token_from_the_environment():
  assert sv.resolve_token(environ={TOKEN_ENV: TOKEN + "\n"}) == TOKEN
  with pytest.raises(sv.SecretError, match=TOKEN_ENV):
    sv.resolve_token(environ={})
  with pytest.raises(sv.SecretError) as info:
    sv.resolve_token(environ={TOKEN_ENV: "two words"})
  assert "two words" not in str(info.value)


@pytest.mark.parametrize("spec", ["gcp-secret:" + SECRET_NAME, SECRET_NAME])
def test_token_from_secret_manager_wins_over_the_environment(spec):
  client = FakeSecretManager(data=(TOKEN + "\n").encode())
  token = sv.resolve_token(secret_spec=spec, secret_client=client,
                           environ={TOKEN_ENV: "env-token-ignored"})
  assert token == TOKEN and client.names == [SECRET_NAME]
  assert "***" in sv.scrub("x %s y" % TOKEN)  # registered for redaction


@pytest.mark.parametrize("spec", [TOKEN, "projects/p/secrets/s", "gcp-secret:" + TOKEN,
                                  "gcp-secret:projects/p/secrets/s", "env:" + TOKEN_ENV,
                                  "projects/p/secrets/s/versions/1/extra"])
def test_a_bad_secret_spec_is_refused_without_echo(spec):
  with pytest.raises(sv.SecretError) as info:
    sv.resolve_token(secret_spec=spec, secret_client=FakeSecretManager(data=b"x" * 20))
  assert TOKEN not in str(info.value) and "gcp-secret:projects/P" in str(info.value)


def test_secret_manager_failures_and_empty_secrets_name_the_secret_not_the_value():
  sv.register(TOKEN)
  denied = FakeSecretManager(error=PermissionError("403 denied for %s" % TOKEN))
  with pytest.raises(sv.SecretError, match="request failed.*PermissionError") as info:
    sv.resolve_token(secret_spec="gcp-secret:" + SECRET_NAME, secret_client=denied)
  assert TOKEN not in str(info.value) and SECRET_NAME in str(info.value)
  for data in (b"", b"\n", b"\xff\xfe", b"a b"):
    with pytest.raises(sv.SecretError):
      sv.resolve_token(secret_spec="gcp-secret:" + SECRET_NAME,
                       secret_client=FakeSecretManager(data=data))


def test_secret_manager_is_imported_only_when_a_secret_is_named():
  code = ("import sys, transforms.clients.secrets, transforms.clients.migration_contract, "
          "transforms.clients.migration_api; "
          "print('google.cloud.secretmanager' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.stdout.strip() == "False"


LATEST = "projects/p1/secrets/migration-token/versions/latest"


@pytest.mark.parametrize("prefix", ["", "gcp-secret:"])
def test_latest_is_pinned_to_the_number_it_names_now_and_the_prefix_is_kept(prefix):
  value = "pin-" + os.urandom(12).hex()  # fresh: no other test registered it
  client = FakeSecretManager(data=value.encode(), current=7)
  pinned = sv.pin_secret_version(prefix + LATEST, "--token-secret", secret_client=client)
  assert pinned == prefix + "projects/p1/secrets/migration-token/versions/7"
  assert client.names == [LATEST] and value not in pinned
  assert sv.scrub("x %s y" % value) == "x *** y"  # seen at launch: registered for redaction


def test_a_numbered_version_is_kept_without_a_call():
  client = FakeSecretManager(error=AssertionError("no call expected"))
  assert sv.pin_secret_version(SECRET_NAME, "--token-secret", secret_client=client) == SECRET_NAME
  assert client.names == [] and sv.is_pinned(SECRET_NAME) and not sv.is_pinned(LATEST)


@pytest.mark.parametrize("client", [
    FakeSecretManager(error=PermissionError("403 Permission denied on secret")),
    FakeSecretManager(data=b""),
])
def test_a_version_that_cannot_be_read_at_launch_is_a_secret_error_naming_the_flag(client):
  with pytest.raises(sv.SecretError, match="--kek") as info:
    sv.pin_secret_version("gcp-secret:" + LATEST, "--kek", secret_client=client)
  assert TOKEN not in str(info.value)
