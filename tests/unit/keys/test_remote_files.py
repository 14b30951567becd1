"""A keys database on a remote filesystem is read through a private temporary copy."""

import io
import os
import stat

from apache_beam.io.filesystems import FileSystems

from transforms.keys.remote_files import local_path


def test_local_path_is_used_as_is(tmp_path):
  f = tmp_path / "keys.db"
  f.write_bytes(b"x")
  with local_path(str(f)) as path:
    assert path == str(f)
  assert f.exists()


def test_remote_file_is_copied_privately_and_removed(monkeypatch):
  opened = []

  def fake_open(path):
    opened.append(path)
    return io.BytesIO(b"sqlite bytes")

  monkeypatch.setattr(FileSystems, "open", fake_open)
  with local_path("gs://bucket/keys.db") as path:
    assert opened == ["gs://bucket/keys.db"]
    assert "://" not in path
    assert open(path, "rb").read() == b"sqlite bytes"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  assert not os.path.exists(path)
