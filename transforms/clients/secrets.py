"""Where the migration API token comes from, and how secret values stay out of text.

The token is read in a DoFn's setup(), never passed through a constructor or an
option value:

- locally, from the environment variable `CF_STREAM_MIGRATION_TOKEN`;
- on Dataflow, from Google Secret Manager: the option `--token-secret` holds only
  the secret version's name, `gcp-secret:projects/P/secrets/S/versions/V` (the
  prefix is optional).

Every secret value the process loads (the token, the KEK's text forms) is also
registered here, and `scrub`, the one scrubber every error text passes through
before it is logged or stored (dead letters, the client's failure reasons, the
summary's argv), replaces registered values wherever they appear, so an exception
that quotes a secret in an unexpected form still cannot carry it into a log line
or a dead letter. It also masks Authorization header values, bearer tokens and
nsec keys.

Versions are pinned at launch (`pin_secret_version`): a name whose version is `latest`
or another alias is turned into the version number it names now, so every worker,
including one started after a rotation, reads the version the launcher checked. The registry is per process, which is where scrubbing happens (each
worker loads its own secrets in setup()).
"""

import os
import re
import threading
import urllib.parse
from typing import Iterable, Mapping, Optional

TOKEN_ENV_VAR = "CF_STREAM_MIGRATION_TOKEN"
SECRET_PREFIX = "gcp-secret:"
SPEC_HELP = "gcp-secret:projects/P/secrets/S/versions/V"
# Shorter values would redact ordinary words; no real token or key is this short.
MIN_REDACTED_CHARS = 6
_MAX_TOKEN_CHARS = 4096
_SECRET_NAME = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")
_VERSION_NUMBER = re.compile(r"^[1-9][0-9]*$")

_lock = threading.Lock()
_registered: "set[str]" = set()
_ordered: "tuple[str, ...]" = ()


class SecretError(ValueError):
  """A secret that cannot be loaded; the message names the source, never the value."""


def _forms(value: str) -> "set[str]":
  """A secret as it may appear in text: itself and its URL-encoded forms."""
  return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}


def register(value: Optional[str]) -> None:
  """Adds a secret value (and its URL-encoded form) to the redaction registry.

  Args:
    value: The secret text; None, empty or very short values are ignored.
  """
  global _ordered
  if not isinstance(value, str) or len(value) < MIN_REDACTED_CHARS:
    return
  forms = _forms(value)
  with _lock:
    if forms <= _registered:
      return
    _registered.update(forms)
    # Longest first, so a value that contains another is replaced whole.
    _ordered = tuple(sorted(_registered, key=len, reverse=True))


_AUTH_HEADER = re.compile(
    r"(['\"]?\bauthorization['\"]?\s*[:=]\s*)(['\"]?)[^'\",;}\]\r\n]*\2", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer\s+)[^\s,;'\"}\]]+", re.IGNORECASE)
_NSEC = re.compile(r"(?i)nsec1[0-9a-z]{20,}")


def scrub(text: str, extra: Iterable[Optional[str]] = ()) -> str:
  """`text` without secrets: safe to log or store.

  Args:
    text: Any text about to be logged or stored.
    extra: Secret values not registered in this process (a client's own token),
      replaced like registered ones, URL-encoded forms included.

  Returns:
    The text with every registered or given secret value, Authorization header
    value, bearer token and nsec key replaced by "***".
  """
  values = _ordered
  given = [v for v in extra if v]
  if given:
    values = tuple(sorted(set(values).union(*(_forms(v) for v in given)), key=len, reverse=True))
  for value in values:
    if value in text:
      text = text.replace(value, "***")
  text = _AUTH_HEADER.sub(r"\1\2***\2", text)
  text = _BEARER.sub(r"\1***", text)
  return _NSEC.sub("nsec1***", text)


def check_secret_spec(spec: str, what: str = "--token-secret") -> str:
  """Validates a Secret Manager reference without ever echoing it.

  Args:
    spec: `gcp-secret:projects/P/secrets/S/versions/V`, or the bare version name
      `projects/P/secrets/S/versions/V` (as run_dataflow.sh's TOKEN_SECRET holds it).
    what: Name of the flag or variable, for the message.

  Returns:
    The secret version name (without the `gcp-secret:` prefix).

  Raises:
    SecretError: The spec is not such a reference (it may hold the secret itself,
      so it is not repeated).
  """
  text = (spec or "").strip()
  name = text[len(SECRET_PREFIX):] if text.startswith(SECRET_PREFIX) else text
  if not _SECRET_NAME.match(name):
    raise SecretError("%s must name a Secret Manager version, %s (a name, never the token "
                      "itself)" % (what, SPEC_HELP))
  return name


def is_pinned(name: str) -> bool:
  """Whether a secret version name ends in a version number (not `latest` or an alias)."""
  return _VERSION_NUMBER.match(name.rpartition("/versions/")[2]) is not None


def pin_secret_version(spec: str, what: str, secret_client=None) -> str:
  """`spec` with its version as a number: `.../versions/latest` -> `.../versions/7`.

  Reads the version once (access_secret_version answers with the version it resolved;
  only the accessor role is needed), so the launcher has also checked that it exists,
  is enabled and is not empty. The value is never kept or returned. A spec that already
  names a number is returned unchanged, without a call.

  Args:
    spec: `[gcp-secret:]projects/P/secrets/S/versions/V`; the prefix, if any, is kept.
    what: Name of the flag, for messages.
    secret_client: A Secret Manager client with `access_secret_version(name=...)`
      (tests pass a fake); default: a new `SecretManagerServiceClient`.

  Raises:
    SecretError: not a version name, the request failed, or the answer names no number.
  """
  text = (spec or "").strip()
  prefix = SECRET_PREFIX if text.startswith(SECRET_PREFIX) else ""
  name = check_secret_spec(text, what)
  if is_pinned(name):
    return text
  response = _access_version(name, secret_client, what + ": ",
                             "; pin a version number to launch without this check")
  number = str(getattr(response, "name", "") or "").rpartition("/versions/")[2]
  if not _VERSION_NUMBER.match(number):
    raise SecretError("%s: Secret Manager did not say which version %s is" % (what, name))
  data = response.payload.data
  if not data:
    raise SecretError("%s: Secret Manager %s (version %s) is empty" % (what, name, number))
  if isinstance(data, (bytes, bytearray)):  # this process saw it: scrub it like any secret
    data = bytes(data).decode("utf-8", "ignore")
  register(data.strip())
  return prefix + name.rpartition("/versions/")[0] + "/versions/" + number


def _access_version(name: str, secret_client=None, prefix: str = "", hint: str = ""):
  """Secret Manager's answer for version `name`; a failure is a SecretError without the value.

  `secret_client` defaults to a new `SecretManagerServiceClient`, imported only here so
  local runs need no GCP libraries.
  """
  if secret_client is None:
    from google.cloud import secretmanager  # pylint: disable=import-outside-toplevel

    secret_client = secretmanager.SecretManagerServiceClient()
  try:
    return secret_client.access_secret_version(name=name)
  except Exception as exc:  # pylint: disable=broad-except
    # Client errors name resources and permissions; keep a short first line, redacted.
    detail = scrub((str(exc).splitlines() or [""])[0][:200])
    raise SecretError("%sSecret Manager %s: request failed (%s: %s)%s"
                      % (prefix, name, type(exc).__name__, detail, hint)) from None


def _clean_token(value, source: str) -> str:
  if isinstance(value, (bytes, bytearray)):
    try:
      value = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
      raise SecretError("the token from %s is not UTF-8 text" % source) from None
  # Secrets are often stored with a trailing newline (`echo ... | gcloud secrets create`).
  token = value.strip() if isinstance(value, str) else ""
  if not token:
    raise SecretError("the token from %s is empty" % source)
  if len(token) > _MAX_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
    raise SecretError("the token from %s must be one line of printable characters without "
                      "spaces" % source)
  return token


def resolve_token(env_name: str = TOKEN_ENV_VAR, secret_spec: Optional[str] = None,
                  secret_client=None, environ: Optional[Mapping[str, str]] = None) -> str:
  """Loads the migration API token: from Secret Manager when named, else the environment.

  Call it in a DoFn's setup(). The value is registered for redaction before it
  is returned.

  Args:
    env_name: Environment variable holding the token when no secret is named.
    secret_spec: `[gcp-secret:]projects/P/secrets/S/versions/V`, or None/"" for the env.
    secret_client: A Secret Manager client with `access_secret_version(name=...)`
      (tests pass a fake); default: a new `SecretManagerServiceClient`, imported
      only here so local runs need no GCP libraries.
    environ: Environment mapping (default `os.environ`).

  Returns:
    The token, stripped of surrounding whitespace.

  Raises:
    SecretError: The source is missing, unreachable, or holds no usable token.
  """
  if secret_spec:
    name = check_secret_spec(secret_spec)
    response = _access_version(name, secret_client)
    token = _clean_token(response.payload.data, "Secret Manager " + name)
  else:
    environ = os.environ if environ is None else environ
    if not env_name:
      raise SecretError("no token source: name an environment variable or --token-secret")
    value = environ.get(env_name)
    if not value:
      raise SecretError("%s is not set in the worker's environment (or use --token-secret "
                        "on Dataflow)" % env_name)
    token = _clean_token(value, "env " + env_name)
  register(token)
  return token
