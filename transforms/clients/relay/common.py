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
from typing import Any, Dict, Optional, Tuple

# OK and CLOSED messages with these prefixes are worth retrying.
TRANSIENT_PREFIXES = ("rate-limited", "error")

# NOTICEs per relay connection logged at INFO (then DEBUG): a chatty relay must not
# flood the logs, and the first few say what it is unhappy about.
NOTICES_LOGGED = 5

# A relay message larger than this (characters or bytes) is dropped unparsed: no NIP-01
# message the clients need comes near it (an event is a few KB), and parsing a huge one
# would tie up memory and time. The whole frame is still received: websocket-client has
# no frame cap.
MAX_MESSAGE_BYTES = 1 << 20

# Deepest nesting of arrays and objects a kept message may have: ["EVENT", sub, {"tags":
# [[...]]}] is 4. Deeper input would make json (and any code walking the message later)
# raise RecursionError; it is dropped instead.
MAX_MESSAGE_DEPTH = 8

# Why decode_message dropped a message (the clients tally these; the Beam side counts them).
DROP_OVERSIZED = "oversized"
DROP_TOO_DEEP = "too_deep"
DROP_MALFORMED = "malformed"


class RelayError(RuntimeError):
  """A relay refused a subscription or could not be read after retries."""


class RelayMisbehaving(RelayError):
  """A relay broke NIP-01 so that its read cannot be trusted or would not end: it sent
  events newer than the ``until`` asked, served the oldest events first, ignored
  ``limit``, or the read passed its bound of pages or time."""


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
  """Parses a relay message: a JSON array whose first item is a string, else None.

  Never raises, whatever the relay sent (see parse_message for why a message is dropped).
  """
  return parse_message(raw)[0]


def parse_message(raw: Any) -> Tuple[Optional[list], Optional[str]]:
  """(message, None) for a usable relay message, else (None, why it was dropped).

  Never raises: an oversized message (DROP_OVERSIZED), one nested deeper than
  MAX_MESSAGE_DEPTH (DROP_TOO_DEEP, including what json itself refuses with
  RecursionError) or anything else that is not a JSON array starting with a string
  (DROP_MALFORMED) is dropped.
  """
  if not isinstance(raw, (str, bytes, bytearray)):
    return None, DROP_MALFORMED
  if len(raw) > MAX_MESSAGE_BYTES:
    return None, DROP_OVERSIZED
  try:
    msg = json.loads(raw)
  except RecursionError:
    return None, DROP_TOO_DEEP
  except (TypeError, ValueError):  # UnicodeDecodeError is a ValueError
    return None, DROP_MALFORMED
  if not (isinstance(msg, list) and msg and isinstance(msg[0], str)):
    return None, DROP_MALFORMED
  if _too_deep(msg, MAX_MESSAGE_DEPTH):
    return None, DROP_TOO_DEEP
  return msg, None


def _too_deep(value: Any, limit: int) -> bool:
  """Whether containers nest deeper than limit (iterative: no recursion on hostile input)."""
  stack = [(value, 1)]
  while stack:
    item, depth = stack.pop()
    children = item.values() if isinstance(item, dict) else item
    for child in children:
      if isinstance(child, (list, dict)):
        if depth + 1 > limit:
          return True
        stack.append((child, depth + 1))
  return False


def matches_filter(event: Dict[str, Any], flt: Dict[str, Any]) -> bool:
  """Whether an event (of is_event_shape) matches a NIP-01 filter's kinds, ids, authors,
  since, until and #x tags; ``limit`` and unknown keys are ignored.

  A relay should only send matching events; one that sends others (a kind not asked for,
  a second outside the window) has them ignored by the clients, not taken as input.
  """
  created_at = event["created_at"]
  if "since" in flt and flt["since"] is not None and created_at < flt["since"]:
    return False
  if "until" in flt and flt["until"] is not None and created_at > flt["until"]:
    return False
  for key, field in (("kinds", "kind"), ("ids", "id"), ("authors", "pubkey")):
    if key in flt and event.get(field) not in flt[key]:
      return False
  tags = event.get("tags")
  for key, wanted in flt.items():
    if len(key) == 2 and key[0] == "#":
      values = {t[1] for t in tags if isinstance(t, list) and len(t) > 1 and t[0] == key[1]
                and isinstance(t[1], str)} if isinstance(tags, list) else set()
      if not values.intersection(wanted):
        return False
  return True


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
