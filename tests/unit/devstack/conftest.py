"""Fixtures of the devstack tests: one generated sample (300 vines, seed 11), read back."""

import json
import os
import sqlite3

import pytest

from devstack import sampledata


def ndjson(path):
  """The records of an NDJSON file; every line must be one JSON value."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """generate(300, seed=11) once per test module: its manifest and every file read back."""
  out = str(tmp_path_factory.mktemp("sample"))
  manifest = sampledata.generate(out, 300, seed=11)
  rows = ndjson(os.path.join(out, "rows.ndjson"))
  events = ndjson(os.path.join(out, "events.ndjson"))
  with open(os.path.join(out, "openvine_ids.txt"), encoding="utf-8") as f:
    oids = [line.strip() for line in f if line.strip()]
  conn = sqlite3.connect(os.path.join(out, "keys.db"))
  schema = conn.execute("SELECT sql FROM sqlite_master WHERE name='user_migrations'").fetchone()[0]
  keys = conn.execute("SELECT username, nostr_public_key, nostr_private_key "
                      "FROM user_migrations").fetchall()
  conn.close()
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    assert json.load(f) == manifest
  return {"out": out, "manifest": manifest, "rows": rows, "events": events, "oids": oids,
          "schema": schema, "keys": keys}
