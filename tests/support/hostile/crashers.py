"""Decoders that misbehave, for IsolatedDecoder's tests (imported by its child process).

Kept free of heavy imports: a decoder child imports this module on start.
"""

import ctypes
import time


def segfault(data: bytes) -> str:
  """Dereferences NULL: the process dies of SIGSEGV, as a native decoder bug would."""
  ctypes.memmove(0, data, len(data) or 1)
  return "unreachable"


def hang(data: bytes) -> str:
  """Never answers in time."""
  time.sleep(60)
  return "late"
