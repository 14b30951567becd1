"""A websocket server in a thread on 127.0.0.1: the base of the relays tests script."""

import threading

from websockets.sync.server import serve


class ThreadedServer:
  """Serves `_handle(conn)` on a free port of 127.0.0.1 from a daemon thread.

  A context manager: entering starts the thread, leaving shuts the server down.
  `serve_kwargs` go to websockets' `serve` (e.g. process_request, max_size).
  """

  def __init__(self, **serve_kwargs):
    self._server = serve(self._handle, "127.0.0.1", 0, **serve_kwargs)
    self.url = "ws://127.0.0.1:%d" % self._server.socket.getsockname()[1]
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def _handle(self, conn):
    raise NotImplementedError

  def start(self) -> "ThreadedServer":
    self._thread.start()
    return self

  def close(self) -> None:
    self._server.shutdown()
    self._thread.join(5)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.close()
