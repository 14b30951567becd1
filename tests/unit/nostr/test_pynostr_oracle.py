"""pynostr as an independent oracle: the kind 32222 and 34236 events we sign parse and verify there.

pynostr recomputes the id from the fields itself (its from_dict ignores the incoming id) and
checks the BIP-340 signature with its own key code, so an id or signature our code got wrong in
the same way it checks it would show here.
"""

from pynostr.event import Event

from tests.support.short_video import SIGNER, short_video_item
from transforms.nostr.short_video_event import build_short_video_event
from transforms.nostr.video_event import build_video_event

NOW = 2100000000


def _signed(kind):
  item = short_video_item()
  build = build_video_event if kind == 32222 else build_short_video_event
  return SIGNER.sign(build(item, now=NOW))


def _oracle(event):
  parsed = Event.from_dict(event)
  return parsed, parsed.verify()


def test_both_kinds_verify_in_pynostr_with_our_id():
  for kind in (32222, 34236):
    event = _signed(kind)
    parsed, ok = _oracle(event)
    assert ok, kind
    assert parsed.id == event["id"] and parsed.kind == kind and parsed.created_at == NOW
    assert parsed.pubkey == SIGNER.pubkey


def test_tags_read_back_in_pynostr():
  video = _oracle(_signed(32222))[0]
  assert video.get_tag_list("d") == [["MYxVapFvz2z"]]
  assert ["world"] in video.get_tag_list("t") and ["felizañonuevo"] in video.get_tag_list("t")
  assert video.get_tag_list("vine_id") == [["MYxVapFvz2z"]]
  assert video.get_tag_list("migration")[0][0] == "openvine-to-stream"
  assert "blurhash LKO2?U%2Tw=w]~RBVZRi};RPxuwH" in video.get_tag_list("imeta")[0]
  short = _oracle(_signed(34236))[0]
  assert short.get_tag_list("d") == [["MYxVapFvz2z"]]
  (imeta,) = short.get_tag_list("imeta")
  assert imeta[0].startswith("url ") and "m video/mp4" in imeta
  assert short.get_tag_dict()["title"] == [["hello #World #FelizAñoNuevo"]]


def test_pynostr_refuses_what_we_would_refuse():
  # The oracle can fail: a changed tag changes its id, a wrong signature does not verify.
  event = _signed(34236)
  tampered = dict(event, tags=event["tags"] + [["t", "extra"]])
  parsed, ok = _oracle(tampered)
  assert parsed.id != event["id"] and not ok
  other = _signed(32222)
  assert not _oracle(dict(event, sig=other["sig"]))[1]
