"""Tests for transforms.clients.relay.common: relay url validation."""

import pytest

from transforms.clients.relay.common import validate_relay_url

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
