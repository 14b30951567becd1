"""Two authors and their signed kind 32222 events, for the graph tests of reading and joining."""

from transforms.nostr.event import Signer, generate_private_key

A = Signer(generate_private_key())
B = Signer(generate_private_key())


def vine_event(signer, d, created_at, extra=()):
  """A kind 32222 event with the d tag (none when d is falsy) and an OpenVine url, signed."""
  tags = ([["d", d]] if d else []) + [
      ["url", "https://api.openvine.co/media/1751085897568-0fd41442"]] + list(extra)
  return signer.sign({"kind": 32222, "created_at": created_at, "tags": tags, "content": "c"})
