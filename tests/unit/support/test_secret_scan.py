"""The secret scanner's canary: it finds every form of a secret it claims to, none in clean text."""

import base64
import json
import urllib.parse

from tests.support.secret_scan import find_leaks, kek_forms, key_forms, token_forms
from tests.support.security import KEK, TOKEN
from transforms.nostr.event import nsec_encode


def test_scanner_finds_every_form_it_claims_to():
  priv = "7f" * 32
  secrets = {"key": key_forms(priv), "KEK": kek_forms(KEK), "token": token_forms(TOKEN)}
  planted = {
      "hex in json": json.dumps({"k": priv}).encode(),
      "nsec": ("x " + nsec_encode(priv) + " y").encode(),
      "base64 at offset 1": base64.b64encode(b"A" + bytes.fromhex(priv) + b"tail"),
      "base64url at offset 2": base64.urlsafe_b64encode(b"AB" + KEK + b"tail"),
      "kek env text": base64.b64encode(KEK),
      "basic auth": base64.b64encode(b"user:" + TOKEN.encode()),
      "token url-encoded": ("?t=" + urllib.parse.quote(TOKEN)).encode(),
  }
  leaks = find_leaks(planted, secrets)
  for where in planted:
    assert any(leak.endswith(" in " + where) for leak in leaks), where
  assert find_leaks({"clean": b"nothing secret here " * 10}, secrets) == []
