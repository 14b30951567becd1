"""Local copies of remote files for libraries that need a path (SQLite on Dataflow).

A keys database on GCS is copied into a private temporary file (mode 0600) for the
time of loading it, then removed.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def local_path(path: str) -> Iterator[str]:
  """Yields a local path for `path`: itself when local, else a private temporary copy."""
  if "://" not in path:
    yield path
    return
  # Imported here: the key modules import without Beam (the keys CLI, the tests).
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  fd, tmp = tempfile.mkstemp(prefix="vine-migration-", suffix=os.path.splitext(path)[1])
  try:
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
      shutil.copyfileobj(src, out)
    yield tmp
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
