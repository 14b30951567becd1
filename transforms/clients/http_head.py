"""A lean HTTP/1.1 client for status-and-headers checks (HEAD, one-byte GET); no Beam.

VerifyUrls asks the CDN about six URLs per vine and reads only the status line and
the content type. aiohttp spends about 160 us of CPU on such a request (its session,
tracing, cookie and header machinery); this client, a bare asyncio protocol with
keep-alive connections per host, spends a fraction of that (bench: `bench/head_client.py`).
It does only what a check needs:

* methods without a request body; no redirects followed, no cookies, no proxies;
* the answer's status and headers; a body is read and dropped only when it is small
  and has a Content-Length (a one-byte ranged GET), otherwise the connection is closed;
* keep-alive per (scheme, host, port), at most `max_connections` requests at once;
  a reused connection the server closed before answering is replaced once at no cost;
* https with the system's default certificate checks; a time limit per request.
"""

import asyncio
import re
import ssl
from typing import Dict, List, Optional, Tuple

MAX_HEAD_BYTES = 64 * 1024  # status line and headers
MAX_DRAINED_BODY = 64 * 1024  # a body read to keep the connection is at most this
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpError(OSError):
  """A malformed or oversized answer, or a connection lost before the answer."""


class InvalidUrl(ValueError):
  """A URL this client will not send (not http(s), no host, spaces or control characters)."""


class Answer:
  """Status and headers (names lower case) of one answer."""

  __slots__ = ("status", "headers")

  def __init__(self, status: int, headers: Dict[str, str]):
    self.status = status
    self.headers = headers


def parse_head(head: bytes) -> Tuple[int, str, Dict[str, str]]:
  """(status, HTTP version, headers) of a response head without its blank line; pure."""
  lines = head.split(b"\r\n")
  parts = lines[0].split(None, 2)
  if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
    raise HttpError("malformed status line")
  headers: Dict[str, str] = {}
  for line in lines[1:]:
    name, sep, value = line.partition(b":")
    if not sep:
      raise HttpError("malformed header line")
    headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
  return int(parts[1]), parts[0].decode("ascii"), headers


# scheme, authority (no user info), path and query; a fragment is dropped. A regular
# expression, not urlsplit: this runs for every check and urlsplit costs more than the rest.
_URL = re.compile(r"((?i:https?))://([^/?#@]+)([^#]*)(?:#.*)?", re.ASCII)
_AUTHORITY = re.compile(r"(?:\[([0-9a-f:.]+)\]|([^:\[\]]+))(?::(\d{0,5}))?", re.ASCII)


def request_target(url: str) -> Tuple[Tuple[str, str, int], bytes, bytes]:
  """((scheme, host, port), Host header value, path) of an http(s) URL; InvalidUrl if unsafe."""
  if not url.isascii() or not url.isprintable() or " " in url:
    raise InvalidUrl("URL has spaces, control or non-ASCII characters")
  parts = _URL.fullmatch(url)
  if parts is None:
    raise InvalidUrl("not an http(s) URL with a host")
  scheme, authority, path = parts.groups()
  scheme = scheme.lower()
  where = _AUTHORITY.fullmatch(authority.lower())
  if where is None:
    raise InvalidUrl("not an http(s) URL with a host")
  v6, name, port_text = where.groups()
  default = _DEFAULT_PORTS[scheme]
  port = int(port_text) if port_text else default
  if not 0 < port < 65536:
    raise InvalidUrl("bad port")
  host = v6 or name
  shown = ("[%s]" % v6) if v6 else name
  host_header = shown if port == default else "%s:%d" % (shown, port)
  if not path.startswith("/"):
    path = "/" + path
  return (scheme, host, port), host_header.encode("ascii"), path.encode("ascii")


class _Connection(asyncio.Protocol):
  """One keep-alive connection answering one request at a time."""

  def __init__(self, loop: asyncio.AbstractEventLoop):
    self._loop = loop
    self.transport: Optional[asyncio.Transport] = None
    self._buffer = bytearray()
    self._waiter: Optional[asyncio.Future] = None
    self._method = b""
    self._answer: Optional[Answer] = None
    self._reusable = False
    self._body_left = 0
    self.closed = False
    self.got_bytes = False  # any byte of the current answer

  # -- protocol ----------------------------------------------------------------
  def connection_made(self, transport) -> None:
    self.transport = transport

  def connection_lost(self, exc) -> None:
    self.closed = True
    self._fail(HttpError("connection closed before the answer"))

  def data_received(self, data: bytes) -> None:
    if self._waiter is None or self._waiter.done():
      self.close()  # nothing was asked: a server talking out of turn
      return
    self.got_bytes = True
    self._buffer += data
    try:
      self._advance()
    except HttpError as exc:
      self._fail(exc)
      self.close()

  def eof_received(self):
    self.closed = True  # not taken from the pool again, even before connection_lost
    return False  # close the transport

  # -- one request ---------------------------------------------------------------
  def send(self, method: bytes, host: bytes, path: bytes, extra: bytes) -> asyncio.Future:
    self._waiter = self._loop.create_future()
    self._method = method
    self._answer = None
    self._buffer.clear()
    self.got_bytes = False
    self.transport.write(b"%s %s HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\n"
                         b"User-Agent: vine-migration\r\n%s\r\n" % (method, path, host, extra))
    return self._waiter

  def _advance(self) -> None:
    while self._answer is None:
      end = self._buffer.find(b"\r\n\r\n")
      if end < 0:
        if len(self._buffer) > MAX_HEAD_BYTES:
          raise HttpError("answer head larger than %d bytes" % MAX_HEAD_BYTES)
        return
      status, version, headers = parse_head(bytes(self._buffer[:end]))
      del self._buffer[:end + 4]
      if 100 <= status < 200:  # an interim answer: the real one follows
        continue
      self._answer = Answer(status, headers)
      self._reusable = (version == "HTTP/1.1"
                        and headers.get("connection", "").lower() != "close")
      self._body_left = 0
      if self._method != b"HEAD" and status not in (204, 304):
        length = headers.get("content-length", "")
        if "transfer-encoding" in headers or not length.isdigit() or int(length) > MAX_DRAINED_BODY:
          self._reusable = False  # do not read it: close the connection instead
        else:
          self._body_left = int(length)
    if self._reusable and self._body_left:
      take = min(self._body_left, len(self._buffer))
      del self._buffer[:take]
      self._body_left -= take
      if self._body_left:
        return
    if self._buffer:
      self._reusable = False  # bytes nobody asked for
    if not self._waiter.done():
      self._waiter.set_result(self._answer)

  def _fail(self, exc: Exception) -> None:
    if self._waiter is not None and not self._waiter.done():
      self._waiter.set_exception(exc)

  @property
  def reusable(self) -> bool:
    return self._reusable and not self.closed

  def close(self) -> None:
    self.closed = True
    if self.transport is not None:
      self.transport.close()


class HeadClient:
  """Status and headers of http(s) URLs over pooled keep-alive connections."""

  def __init__(self, timeout: float, max_connections: int = 64,
               ssl_context: Optional[ssl.SSLContext] = None):
    self._timeout = timeout
    self._limit = asyncio.Semaphore(max(1, max_connections))
    self._idle: Dict[Tuple[str, str, int], List[_Connection]] = {}
    self._ssl = ssl_context
    self._closed = False

  async def request(self, method: str, url: str, headers: Optional[Dict[str, str]] = None,
                    target: Optional[Tuple[Tuple[str, str, int], bytes, bytes]] = None) -> Answer:
    """The answer's status and headers; raises InvalidUrl, HttpError, OSError, TimeoutError.

    `target`: `request_target(url)` when the caller has it already.
    """
    key, host, path = target or request_target(url)
    extra = b"".join(b"%s: %s\r\n" % (k.encode("ascii"), v.encode("ascii"))
                     for k, v in (headers or {}).items())
    async with self._limit:
      async with asyncio.timeout(self._timeout):
        conn = self._take_idle(key)
        if conn is not None:
          try:
            return await self._exchange(conn, key, method.encode("ascii"), host, path, extra)
          except HttpError:
            if conn.got_bytes:
              raise
            # a kept connection the server had closed: one fresh try, as any client does
        conn = await self._connect(key)
        return await self._exchange(conn, key, method.encode("ascii"), host, path, extra)

  async def _exchange(self, conn: _Connection, key, method: bytes, host: bytes, path: bytes,
                      extra: bytes) -> Answer:
    done = False
    try:
      answer = await conn.send(method, host, path, extra)
      done = True
      return answer
    finally:
      if done and conn.reusable and not self._closed:
        self._idle.setdefault(key, []).append(conn)
      else:
        conn.close()

  def _take_idle(self, key) -> Optional[_Connection]:
    idle = self._idle.get(key)
    while idle:
      conn = idle.pop()
      if conn.reusable:
        return conn
    return None

  async def _connect(self, key) -> _Connection:
    scheme, host, port = key
    loop = asyncio.get_running_loop()
    context = None
    if scheme == "https":
      if self._ssl is None:
        self._ssl = ssl.create_default_context()
      context = self._ssl
    _, conn = await loop.create_connection(lambda: _Connection(loop), host, port, ssl=context,
                                           server_hostname=host if context else None)
    return conn

  async def close(self) -> None:
    self._closed = True
    for conns in self._idle.values():
      for conn in conns:
        conn.close()
    self._idle.clear()
