r"""The identifiers the pipeline handles: one pattern per kind of id.

`\Z`, not `$`, everywhere: `$` also matches before a trailing newline, and
"b9KOOWX7HUx\n" is not a Vine id (bytes.fromhex even skips whitespace, so a pubkey
"<hex>\n" would pass and its signature verify).
"""

import hashlib
import re
from typing import Any, Optional

# Vine post ids: 11 characters of [0-9A-Za-z].
VINE_ID_RE = re.compile(r"^[0-9A-Za-z]{11}\Z")
# Cloudflare Stream video uids: 32 lowercase hex.
STREAM_UID_RE = re.compile(r"^[0-9a-f]{32}\Z")
# Nostr event ids and public keys, and SHA-256 digests: 64 lowercase hex.
HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
# BIP-340 signatures: 128 lowercase hex.
HEX128_RE = re.compile(r"^[0-9a-f]{128}\Z")
# OpenVine ids as the archive names them: `{13-digit epoch ms}-{8 hex}`.
OPENVINE_ID_RE = re.compile(r"^[0-9]{13}-[0-9a-f]{8}\Z")
# What may be sent to the migration API as videoId when the strict shape does not
# hold: the server puts the id in https://api.openvine.co/media/{id}, so no leading
# dot and no "..", nothing that could walk a path.
OPENVINE_ID_USABLE_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")

OPENVINE_MEDIA_URL = "https://api.openvine.co/media/%s"
# An OpenVine id is everything after /media/ up to /?#.
_OPENVINE_URL_RE = re.compile(r"^https?://(?:api|apt)\.openvine\.co/media/([^/?#\s]+)")


def is_vine_id(value: Any) -> bool:
  return isinstance(value, str) and bool(VINE_ID_RE.match(value))


def usable_openvine_id(value: Any) -> bool:
  """True for an id that is safe to send as videoId (the server puts it in a URL path)."""
  return isinstance(value, str) and bool(OPENVINE_ID_USABLE_RE.match(value))


def openvine_id_from_url(url: str) -> Optional[str]:
  match = _OPENVINE_URL_RE.match(url or "")
  return match.group(1) if match else None


def record_id(*parts: Any) -> str:
  """A deterministic id for one output record, from what makes it unique.

  Results: (run id, "published", vine id, event id); dead letters: (run id, stage, vine
  id, event id). A bundle that Dataflow retries makes the same record with the same id,
  so a reader (or a BigQuery query) can drop a duplicate by it.
  """
  joined = "\x1f".join("" if part is None else str(part) for part in parts)
  return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:32]
