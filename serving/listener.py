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
from collections import deque
from http import HTTPStatus
from typing import Awaitable, Callable

import httptools
import orjson

log = logging.getLogger("ray.serve.optiserve")

# dispatch(method, path, headers, read_body) -> (status, body, headers): serving.endpoints
Dispatch = Callable[..., Awaitable[tuple[int, bytes, dict[str, str]]]]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
MAX_HEADER_BYTES = 64 * 1024    # request line + headers (uvicorn/h11 allow 16 KiB per header)
MAX_PIPELINED = 32              # requests queued on one connection before it stops reading
IDLE_TIMEOUT_S = 60.0           # a keep-alive connection with nothing to do is closed
REQUEST_TIMEOUT_S = 60.0        # from the first byte of a request to its last


class _Request:
    __slots__ = ("method", "path", "headers", "body", "too_large", "keep_alive")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: list[bytes],
                 too_large: bool, keep_alive: bool):
        self.method, self.path, self.headers = method, path, headers
        self.body, self.too_large, self.keep_alive = body, too_large, keep_alive


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Listener):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[_Request] = deque()
        self.task: asyncio.Task | None = None
        self.closed = False
        self._paused = False
        self._in_message = False
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
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
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not self.closed:  # not one of ours (431 already answered): a bug, say so
                log.error("listener failed on a request", exc_info=e.__context__ or e)
                self._fail(500, "internal error")
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not served")
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed HTTP request: {e}")

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._disarm()
        self.server.connections.discard(self)
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: its request is cancelled

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
            self.transport.close()  # idle keep-alive connection

    @property
    def busy(self) -> bool:
        return bool(self.queue) or (self.task is not None and not self.task.done())

    # ---- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_message = True
        self._arm(REQUEST_TIMEOUT_S)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = text if prev is None else f"{prev}, {text}"

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")  # stops this feed

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.server.max_body():
            self._too_large_now()
        elif self._headers.get("expect", "").lower() == "100-continue":
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
        self._enqueue()
        self.transport.pause_reading()
        self._paused = True

    def on_message_complete(self) -> None:
        if not self._too_large:
            self._enqueue()

    def _enqueue(self) -> None:
        self._in_message = False
        self._disarm()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        method = self.parser.get_method().decode("latin-1")
        self.queue.append(_Request(method, path, self._headers, self._body, self._too_large,
                                   self.parser.should_keep_alive()))
        if len(self.queue) >= MAX_PIPELINED and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())

    # ---- answering ---------------------------------------------------------------------------
    async def _drain(self) -> None:
        while self.queue and not self.closed:
            req = self.queue.popleft()
            if self._paused and not req.too_large and len(self.queue) < MAX_PIPELINED // 2:
                self._paused = False
                self.transport.resume_reading()
            status, body, headers = await self._answer(req)
            if self.closed:
                return
            keep = req.keep_alive and not req.too_large
            self._write(status, body, headers, keep)
            if not keep:
                self.closed = True
                self.transport.close()
                return
        if not self.closed and not self._in_message:
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

    def _write(self, status: int, body: bytes, headers: dict[str, str], keep: bool) -> None:
        head = [b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n"
                % (status, _REASONS.get(status, b""), len(body))]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        if not keep:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        self.transport.write(b"".join(head))

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed or finished, and close the connection."""
        if self.transport is not None and not self.transport.is_closing() and not self.busy:
            s, body, headers = _error(status, message)
            self._write(s, body, headers, keep=False)
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _error(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
    return status, orjson.dumps({"error": message}), {"content-type": "application/json"}


class Listener:
    """Listens on ``host:port`` (shared by the gateway replicas of a machine)."""

    def __init__(self, dispatch: Dispatch, max_body: Callable[[], int], host: str, port: int):
        self.dispatch, self.max_body = dispatch, max_body
        self.host, self.port = host, port
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        sock.setblocking(False)
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        log.info("listening for OIP requests on %s:%d", self.host, self.port)

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop accepting, let the requests in flight finish (up to ``drain_s``), close."""
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        self._server = None
