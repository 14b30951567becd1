"""Tests for transforms.clients.relay.common: relay url validation, message decoding, filters."""

import json

import pytest

from tests.support.hostile_messages import HOSTILE
from transforms.clients.relay.common import (
  DROP_MALFORMED,
  DROP_TOO_DEEP,
  decode_message,
  matches_filter,
  parse_message,
  validate_relay_url,
)

# ---------------------------------------------------------------------------
# validate_relay_url


@pytest.mark.parametrize("url", [
    "wss://relay.divine.video", "wss://relay.example.com:443/path", "ws://127.0.0.1:7777",
    "ws://127.5.6.7", "ws://localhost:8080", "ws://[::1]:7000"])
def test_validate_relay_url_accepts(url):
  assert validate_relay_url(url) == url


@pytest.mark.parametrize("url", [
    "ws://relay.example.com", "http://127.0.0.1", "https://relay.example.com", "relay.example.com",
    "", "wss://", "ws://10.0.0.1", "ws://128.0.0.1"])
def test_validate_relay_url_refuses(url):
  with pytest.raises(ValueError) as info:
    validate_relay_url(url)
  assert repr(url) in str(info.value)


def test_validate_relay_url_loopback_ws_can_be_refused():
  with pytest.raises(ValueError):
    validate_relay_url("ws://127.0.0.1:7777", allow_loopback_ws=False)
  assert validate_relay_url(" wss://r.example ", allow_loopback_ws=False) == "wss://r.example"


# ---------------------------------------------------------------------------
# parse_message / decode_message: never raise, say why a message is dropped


@pytest.mark.parametrize("raw,why", list(HOSTILE) + [
    (b"\xff\xfe", DROP_MALFORMED), (None, DROP_MALFORMED), ("{}", DROP_MALFORMED),
    ("[1, 2]", DROP_MALFORMED), ("[]", DROP_MALFORMED),
    (json.dumps(["EVENT", "s", {"tags": [[[[[[["deep"]]]]]]]}]), DROP_TOO_DEEP)])
def test_parse_message_drops_hostile_input(raw, why):
  assert parse_message(raw) == (None, why)
  assert decode_message(raw) is None


def test_parse_message_keeps_an_event_message():
  event = {"id": "a", "created_at": 1, "tags": [["d", "x"], ["e", "y", "wss://r"]]}
  raw = json.dumps(["EVENT", "sub", event])
  assert parse_message(raw) == (["EVENT", "sub", event], None)
  assert parse_message(raw.encode()) == (["EVENT", "sub", event], None)


# ---------------------------------------------------------------------------
# matches_filter


def test_matches_filter_checks_kinds_authors_window_and_tags():
  event = {"id": "i1", "pubkey": "p1", "kind": 32222, "created_at": 100,
           "tags": [["d", "vine1"], ["t", "x"]]}
  assert matches_filter(event, {"kinds": [32222], "authors": ["p1"], "since": 100,
                                "until": 100, "#d": ["vine1", "vine2"], "limit": 1})
  for flt in ({"kinds": [1]}, {"authors": ["p2"]}, {"ids": ["i2"]}, {"since": 101},
              {"until": 99}, {"#d": ["vine2"]}, {"#e": ["z"]}):
    assert not matches_filter(event, flt), flt
