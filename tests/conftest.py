"""Shared fixtures: the local stack (a real relay process and the emulator) and a clean tally.

Module-level helpers live in tests/support/ (runs, keys databases, the offline guard, ...).
"""

import pytest

from devstack.stack import LocalStack
from transforms.runtime import accounting


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
  work = tmp_path_factory.mktemp("stack")
  with LocalStack(str(work), n_vines=50, seed=11) as s:
    yield s


@pytest.fixture
def clean_tally():
  """Empties the live tally before and after a test: the progress display reads it."""
  accounting.reset_live()
  accounting.reset_deferred()
  yield
  accounting.reset_live()
  accounting.reset_deferred()
