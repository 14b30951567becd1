"""What the relay clients share (reader, publisher, subscription): NIP-01, websocket-client.

Relay url validation (``validate_relay_url``), ``RelayError``, and the decoding and
classification of relay messages (the backoff between retries is
``transforms.core.backoff``). Reading (``fetch_events``) is in
``transforms.clients.relay.reader``; publishing (``RelayPublisher``) in
``transforms.clients.relay.publisher``, with its event bookkeeping in
``transforms.clients.relay.pending`` and its NIP-42 AUTH in
``transforms.clients.relay.auth``; the live subscription of streaming mode
(``RelaySubscriptionClient``) in ``transforms.clients.relay.subscription``.

Nothing here opens a connection.
"""

import ipaddress
import json
import urllib.parse
from typing import Any, Optional

# OK and CLOSED messages with these prefixes are worth retrying.
TRANSIENT_PREFIXES = ("rate-limited", "error")

# NOTICEs per relay connection logged at INFO (then DEBUG): a chatty relay must not
# flood the logs, and the first few say what it is unhappy about.
NOTICES_LOGGED = 5


class RelayError(RuntimeError):
  """A relay refused a subscription or could not be read after retries."""


def validate_relay_url(url: str, allow_loopback_ws: bool = True) -> str:
  """Checks a relay url: wss:// anywhere, ws:// only for loopback hosts.

  Args:
    url: the relay url.
    allow_loopback_ws: whether ws:// is allowed for 127.0.0.0/8, ::1 and localhost.

  Returns:
    The url, stripped of surrounding whitespace.

  Raises:
    ValueError: the url (named in the message) is not an acceptable relay url.
  """
  text = (url or "").strip() if isinstance(url, str) else ""
  if "@" in text:  # first, so that no message below repeats credentials
    raise ValueError("relay url must not carry credentials (user:password@)")
  try:
    parts = urllib.parse.urlsplit(text)
    host = parts.hostname
    _ = parts.port  # raises ValueError on a bad port
  except ValueError:
    raise ValueError("relay url %r is not a valid url" % (url,)) from None
  scheme = parts.scheme.lower()
  if not host:
    raise ValueError("relay url %r has no host" % (url,))
  if scheme == "wss":
    return text
  if scheme == "ws":
    if allow_loopback_ws and _is_loopback(host):
      return text
    raise ValueError("relay url %r must use wss:// (ws:// is only allowed for loopback)" % (url,))
  raise ValueError("relay url %r must start with wss://" % (url,))


def _is_loopback(host: str) -> bool:
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def message_prefix(message: str) -> str:
  """The machine-readable prefix of an OK or CLOSED message ("" when it has none), lowercased."""
  head, sep, _ = message.partition(":")
  return head.strip().lower() if sep else ""


def decode_message(raw: Any) -> Optional[list]:
  """Parses a relay message: a JSON array whose first item is a string, else None."""
  try:
    msg = json.loads(raw)
  except (TypeError, ValueError):
    return None
  if isinstance(msg, list) and msg and isinstance(msg[0], str):
    return msg
  return None


def is_event_shape(event: Any) -> bool:
  """Whether an EVENT message's payload has what the clients rely on: a string id and an
  integer (not bool) created_at. The rest is checked later, by the caller's validation."""
  created_at = event.get("created_at") if isinstance(event, dict) else None
  return (isinstance(event, dict) and isinstance(event.get("id"), str)
          and isinstance(created_at, int) and not isinstance(created_at, bool))


def close_quietly(ws) -> None:
  """Closes a websocket (None allowed), ignoring any error."""
  if ws is not None:
    try:
      ws.close()
    except Exception:  # pylint: disable=broad-except
      pass
