"""The gateway's own HTTP/1.1 listener: the OIP REST endpoints without Serve's ingress.

Ray Serve's ingress puts, in front of the gateway's code, HAProxy and then (in the replica)
uvicorn, two ASGI middlewares, Serve's request wrapper (request ids, context variables, tracing
hooks, per-request metrics, disconnect watch tasks) and the conversion from a Starlette
``Response`` back to ASGI messages. Profiled at saturation (py-spy, minilm INT8, 2 cores) that
machinery (with HAProxy) was about half of the gateway's CPU per request. This listener parses
with httptools (the parser uvicorn uses) straight into :func:`serving.endpoints.dispatch`, the
same endpoints Serve's ingress calls, and writes the answer back.

HTTP/1.1 as clients use it: keep-alive, pipelined requests answered in order (reading pauses past
``MAX_PIPELINED`` queued), ``Content-Length`` and chunked bodies, ``Expect: 100-continue``. What a
hostile client can do is bounded: a body past the gateway's ``max_body_bytes`` is not read on (413,
then the connection closes), request line + headers past ``MAX_HEADER_BYTES`` get 431, a request
not complete within ``REQUEST_TIMEOUT_S`` gets 408, an idle connection closes after
``IDLE_TIMEOUT_S``, malformed HTTP gets 400; a client that goes away cancels its request (it
leaves the batch queue, as through Serve's ingress).

Every gateway replica of a machine binds the same port with ``SO_REUSEPORT``, so the kernel spreads
connections over them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import unquote
from collections import deque
from http import HTTPStatus
from typing import Awaitable, Callable

import httptools
import orjson

from .settings import settings

log = logging.getLogger("ray.serve.optiserve")

# dispatch(method, path, headers, read_body) -> (status, body, headers): serving.endpoints
Dispatch = Callable[..., Awaitable[tuple[int, bytes, dict[str, str]]]]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# knobs (serving.settings, OPTISERVE_HTTP_*), read when the replica imports this module
_S = settings()
MAX_HEADER_BYTES = _S.http_max_header_bytes   # request line + headers
MAX_PIPELINED = _S.http_max_pipelined         # requests queued before a connection stops reading
IDLE_TIMEOUT_S = _S.http_idle_timeout_s       # a keep-alive connection with nothing to do closes
REQUEST_TIMEOUT_S = _S.http_request_timeout_s  # from the first byte of a request to its last
WRITE_TIMEOUT_S = _S.http_write_timeout_s     # a client that stops reading its answers is cut off
LINGER_S = _S.http_linger_s                   # after a 413, read (and drop) what the client still
LINGER_BYTES = _S.http_linger_bytes           # sends, so the 413 is not lost to a reset
CLOSE_GRACE_S = _S.http_close_grace_s         # a closing connection whose client does not read


class _Request:
    __slots__ = ("method", "path", "headers", "body", "too_large", "keep_alive", "http10")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: list[bytes],
                 too_large: bool, keep_alive: bool, http10: bool):
        self.method, self.path, self.headers = method, path, headers
        self.body, self.too_large, self.keep_alive, self.http10 = body, too_large, keep_alive, \
            http10


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Listener):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[_Request] = deque()
        self.task: asyncio.Task | None = None
        self.closed = False          # gone, or closing: nothing more is written
        self._no_more = False        # sticky: nothing more is parsed (close after the queue)
        self._pending_error: tuple[int, str] | None = None  # answered once the queue is done
        self._paused = False         # reading paused by us (queue full, 413, closing)
        self._discard = 0            # bytes left to drop while lingering after a 413
        self._in_message = False
        self._head_done = False
        self._head_bytes = 0
        self._continue_pending = False
        self._last_queued = False    # a closing request is queued: later bytes are ignored
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    # ---- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        self._arm(IDLE_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self._discard:  # lingering after a 413
            self._discard = max(0, self._discard - len(data))
            if not self._discard:
                self.transport.abort()
            return
        if self.closed or self._no_more:
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            if not self._last_queued:  # bytes after a closing request (or an upgrade): ignored
                self._parse_failed(e)
            return
        self._count_head(len(data))

    def _parse_failed(self, e: Exception) -> None:
        if isinstance(e, httptools.HttpParserCallbackError):
            if not self._no_more:  # not one of ours (431 already answered): a bug, say so
                log.error("listener failed on a request", exc_info=e.__context__ or e)
                self._fail(500, "internal error")
        elif isinstance(e, httptools.HttpParserUpgrade):
            # no protocol upgrades (h2c, websockets): the request is answered over HTTP/1.1,
            # then the connection closes
            if self.queue:
                self.queue[-1].keep_alive = False
                self._last_queued = True
                self._stop_reading()
            else:
                self._fail(400, "protocol upgrades are not served")
        else:
            self._fail(400, f"malformed HTTP request: {e}")

    def _count_head(self, n: int) -> None:
        if self._in_message and not self._head_done:
            # httptools hands a header over only once it ends: one endless header is stopped
            # here, by the bytes received while the head is incomplete
            self._head_bytes += n
            if self._head_bytes > MAX_HEADER_BYTES:
                self._fail(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    # No eof_received: a client's FIN closes the connection and cancels its request, as with
    # uvicorn. A client that half-closes after sending cannot be told from one that went away,
    # and a request nobody waits for must leave the queue.

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._disarm()
        self._writable.set()
        self.server.connections.discard(self)
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: its request is cancelled

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---- timers ------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._in_message:
            self._fail(408, f"the request was not received within {REQUEST_TIMEOUT_S:.0f} s")
        elif self.transport is not None and not self.busy:
            self.transport.abort()  # idle keep-alive connection

    @property
    def busy(self) -> bool:
        return bool(self.queue) or (self.task is not None and not self.task.done())

    def _stop_reading(self) -> None:
        self._no_more = True
        self._disarm()
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    # ---- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._last_queued:
            return
        self._reset()
        self._in_message, self._head_done, self._head_bytes = True, False, 0
        if not self._paused:
            self._arm(REQUEST_TIMEOUT_S)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = text if prev is None else f"{prev}, {text}"

    def on_headers_complete(self) -> None:
        self._head_done = True
        if len(self._url) + sum(len(k) + len(v) + 4 for k, v in self._headers.items()) \
                > MAX_HEADER_BYTES:
            self._fail(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")  # stops this feed
        declared = self._headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.server.max_body():
            self._too_large_now()
        elif (self._headers.get("expect", "").lower() == "100-continue"
              and self.parser.get_http_version() != "1.0"):
            if self.busy:  # answers to earlier requests go first
                self._continue_pending = True
            else:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self.server.max_body():
            self._too_large_now()
        else:
            self._body.append(chunk)

    def _too_large_now(self) -> None:
        """A body past the limit is not read on: the request is answered (413, counted by the
        gateway under its model) and the connection closed after it."""
        self._too_large, self._body = True, []
        self._continue_pending = False
        self._enqueue()
        self._stop_reading()

    def on_message_complete(self) -> None:
        if not self._too_large and not self._last_queued:
            self._enqueue()

    def _enqueue(self) -> None:
        self._in_message = False
        self._disarm()
        path = unquote(self._url.split(b"?", 1)[0].decode("latin-1"))
        method = self.parser.get_method().decode("latin-1")
        keep = self.parser.should_keep_alive() and not self._too_large
        self.queue.append(_Request(method, path, self._headers, self._body, self._too_large,
                                   keep, self.parser.get_http_version() == "1.0"))
        if not keep:
            self._last_queued = True
            self._stop_reading()  # nothing after a closing request is read
        elif len(self.queue) >= MAX_PIPELINED and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())

    # ---- answering ---------------------------------------------------------------------------
    async def _drain(self) -> None:
        while self.queue and not self.closed:
            req = self.queue.popleft()
            if self._paused and not self._no_more and len(self.queue) < MAX_PIPELINED // 2:
                self._paused = False
                self.transport.resume_reading()
                if self._in_message:
                    self._arm(REQUEST_TIMEOUT_S)
            status, body, headers = await self._answer(req)
            if self.closed:
                return
            if not self._writable.is_set():
                try:
                    await asyncio.wait_for(self._writable.wait(), WRITE_TIMEOUT_S)
                except asyncio.TimeoutError:
                    self.transport.abort()  # the client stopped reading its answers
                    return
                if self.closed:
                    return
            keep = req.keep_alive and not self.server.draining and not (
                self._no_more and not self.queue and self._pending_error is None)
            self._write(status, body, headers, keep, head_only=req.method == "HEAD",
                        http10=req.http10)
            if req.too_large:
                self._linger()
                return
            if not keep:
                break
        if self.closed:
            return
        if self._pending_error is not None:
            status, message = self._pending_error
            self._write(*_error(status, message), keep=False)
            self._linger()
        elif self._no_more or self.server.draining:
            self._finish()
        elif self._continue_pending and self._in_message:
            self._continue_pending = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._arm(REQUEST_TIMEOUT_S)
        elif not self._in_message:
            self._arm(IDLE_TIMEOUT_S)

    async def _answer(self, req: _Request) -> tuple[int, bytes, dict[str, str]]:
        body = b"".join(req.body)
        too_large = req.too_large

        async def read_body(limit: int) -> bytes:
            from .protocol import PayloadTooLarge

            if too_large or len(body) > limit:
                declared = req.headers.get("content-length")
                size = f" of {declared} bytes" if declared and declared.isdigit() else ""
                raise PayloadTooLarge(f"request body{size} exceeds the limit of {limit} bytes")
            return body

        try:
            return await self.server.dispatch(req.method, req.path, req.headers, read_body)
        except asyncio.CancelledError:
            raise
        except Exception:  # dispatch answers every error itself; this is the last resort
            log.exception("%s %s failed in the listener", req.method, req.path)
            return _error(500, "internal error")

    def _write(self, status: int, body: bytes, headers: dict[str, str], keep: bool,
               head_only: bool = False, http10: bool = False) -> None:
        head = [b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n"
                % (status, _REASONS.get(status, b""), len(body))]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
        if not keep:
            head.append(b"connection: close\r\n")
        elif http10:
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        if not head_only:
            head.append(body)
        self.transport.write(b"".join(head))

    def _finish(self) -> None:
        """Close after what was written; a client that does not read it is cut off later."""
        self.closed = True
        self._disarm()
        transport = self.transport
        transport.close()
        self.loop.call_later(CLOSE_GRACE_S, transport.abort)

    def _linger(self) -> None:
        """After answering a request not read whole (413, 431, 400, 408): send our
        half-close, then read and drop what the client is still sending for a moment, so that
        the kernel does not answer it with a reset that could discard our answer before the
        client reads it."""
        self.closed = True
        self._disarm()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self._discard = LINGER_BYTES
        transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.abort)

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed or finished: answered after those before it, then
        the connection closes."""
        self._stop_reading()
        if self.busy:
            if self._pending_error is None:
                self._pending_error = (status, message)
            return
        if self.transport is not None and not self.transport.is_closing() and not self.closed:
            self._write(*_error(status, message), keep=False)
            self._linger()  # the client may still be sending


def _error(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
    return status, orjson.dumps({"error": message}), {"content-type": "application/json"}


class Listener:
    """Listens on ``host:port`` (shared by the gateway replicas of a machine).

    ``bind()`` takes the port at once (an error there is the caller's to report); ``start()``
    then serves it on the running event loop."""

    def __init__(self, dispatch: Dispatch, max_body: Callable[[], int], host: str, port: int):
        self.dispatch, self.max_body = dispatch, max_body
        self.host, self.port = host, port
        self.connections: set[_Connection] = set()
        self.draining = False
        self._sock: socket.socket | None = None
        self._server: asyncio.base_events.Server | None = None

    def bind(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot listen on {self.host}:{self.port}: {e.strerror}") \
                from None
        self._sock = sock

    async def start(self) -> None:
        if self._sock is None:
            self.bind()
        if self.draining:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=self._sock)
        log.info("listening for OIP requests on %s:%d", self.host, self.port)

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting; idle connections close at once, busy ones after their answers
        (marked ``connection: close``), up to ``drain_s``; then every connection is cut."""
        self.draining = True
        if drain_s is None:
            drain_s = settings().http_drain_s
        if self._server is not None:
            self._server.close()
        elif self._sock is not None:
            self._sock.close()
        for c in list(self.connections):
            if not c.busy and not c._in_message and c.transport is not None:
                c.transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()
        self._server = None
