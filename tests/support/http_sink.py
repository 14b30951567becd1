"""A local HTTP server in a thread that records what is posted to it (webhooks, "no call made").

    with HttpSink() as sink:                    # answers 200
    with HttpSink(status=500) as sink:          # fails every request
    with HttpSink(hang=True) as sink:           # accepts, never answers (until closed)
      ... sink.url ...; sink.bodies (parsed JSON); sink.requests (count)
"""

import http.server
import json
import threading


class HttpSink:
  """http.server on 127.0.0.1, port chosen by the system; every request recorded."""

  def __init__(self, status: int = 200, hang: bool = False):
    self.status = status
    self.hang = hang
    self.bodies = []
    self.paths = []
    self.requests = 0
    self._release = threading.Event()
    sink = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def _any(self):
        sink.requests += 1
        size = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(size) if size else b""
        sink.paths.append(self.path)
        try:
          sink.bodies.append(json.loads(raw.decode("utf-8")) if raw else None)
        except ValueError:
          sink.bodies.append(raw)
        if sink.hang:
          sink._release.wait(30)
          return
        self.send_response(sink.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

      do_POST = do_GET = _any  # noqa: N815

      def log_message(self, *args):  # quiet
        pass

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.url = "http://127.0.0.1:%d/hook" % self._server.server_address[1]
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def __enter__(self) -> "HttpSink":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._release.set()
    self._server.shutdown()
    self._server.server_close()
