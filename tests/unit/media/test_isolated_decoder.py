"""The isolated thumbnail decoder: a native crash or a hang costs one image, not the worker.

Unit level, because a native crash cannot be injected end to end; the misbehaving
decoders are in tests/support/hostile/crashers.py.
"""

import pytest

from transforms.media.isolated_decoder import DecoderCrash, IsolatedDecoder
from transforms.media.thumbnail import ThumbnailError


def test_decoder_crash_and_hang_cost_one_image_not_the_worker():
  from devstack.emulator_media import _make_bomb, _make_thumbnail  # pylint: disable=import-outside-toplevel
  from transforms.media.thumbnail import blurhash_for_thumbnail  # pylint: disable=import-outside-toplevel
  good = _make_thumbnail("a" * 32)
  crashing = IsolatedDecoder("tests.support.hostile.crashers:segfault")
  hanging = IsolatedDecoder("tests.support.hostile.crashers:hang", timeout=0.5)
  decoder = IsolatedDecoder()
  try:
    with pytest.raises(DecoderCrash, match="died"):
      crashing(b"x")
    with pytest.raises(DecoderCrash, match="died"):
      crashing(b"x")  # a fresh child each time
    assert crashing.crashes == 2
    with pytest.raises(DecoderCrash, match="no answer within 0.5 s"):
      hanging(b"x")
    assert decoder(good) == blurhash_for_thumbnail(good)
    for bad, why in ((b"<html>", "not a recognised image"), (good[:len(good) // 2], "truncated"),
                     (_make_bomb(), "decompression-bomb")):
      with pytest.raises(ThumbnailError, match=why):
        decoder(bad)
    assert decoder(good) == blurhash_for_thumbnail(good) and decoder.crashes == 0
  finally:
    for d in (crashing, hanging, decoder):
      d.close()
