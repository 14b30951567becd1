"""Smoke test with worker processes (--workers 3: multi_processing): catches modules that
do not ship and module globals that a distributed runner does not carry, and shows the
job-wide API cap holding across processes."""

import os

import pytest

from devstack.stack import LocalStack
from tests.support.runs import read_ndjson, run_pipeline

pytestmark = pytest.mark.integration


def test_multi_processing_run_publishes_and_accounts(tmp_path):
  with LocalStack(str(tmp_path / "stack"), n_vines=16, seed=9) as stack:
    code, run_dir, summary = run_pipeline(stack, tmp_path / "out", [
        "--workers", "3", "--api-limit", "2"])
    assert code == 0 and summary["balanced"], summary
    assert summary["published"] == stack.manifest["expected_published"]
    published = read_ndjson(os.path.join(run_dir, "published.ndjson"))
    assert len(published) == summary["published"]
    # Counters incremented inside worker processes (and on their event loops) arrive.
    assert summary["counters"]["videos_migrated"] >= summary["published"]
    assert summary["counters"]["events_checked"] > 0
    stats = stack.emulator.stats()
    assert max(stats["migrate_calls"].values()) == 1
    # Three processes, each free to hold every call: the cap is the two keys, not a share.
    assert 1 <= stats["max_in_flight"] <= 2
