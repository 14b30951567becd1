"""A guard for tests that build Google Cloud clients: no public network, no credentials, no hang."""

import contextlib
import signal
import socket
from unittest import mock


@contextlib.contextmanager
def offline_and_bounded(seconds):
  """Public sockets and Google credential lookups fail the test; an alarm stops hangs.

  Both are also recorded and asserted afterwards: Beam may catch and log the errors.
  """
  real_connect = socket.socket.connect
  credential_calls, connections = [], []

  def connect(sock, address):
    if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in (
        "127.0.0.1", "::1", "localhost")):
      return real_connect(sock, address)
    connections.append(address)
    raise AssertionError("network access attempted: %r" % (address,))

  def no_credentials(*args, **kwargs):
    credential_calls.append(args)
    raise AssertionError("google.auth.default called: a real Google client was built")

  def timeout(signum, frame):
    raise TimeoutError("test took more than %d s" % seconds)

  previous = signal.signal(signal.SIGALRM, timeout)
  signal.alarm(seconds)
  try:
    with mock.patch.object(socket.socket, "connect", connect), \
        mock.patch("google.auth.default", no_credentials):
      yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  assert not credential_calls, "credentials were looked up"
  assert not connections, "network access attempted: %r" % connections
