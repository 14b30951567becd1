"""Fixtures of the relay client tests: a real LocalRelay process per test module."""

import pytest

from devstack.relay import RelayProcess


@pytest.fixture(scope="module")
def relay():
  with RelayProcess() as proc:
    yield proc
