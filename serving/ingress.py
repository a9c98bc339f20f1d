"""The gateway replicas' HTTP server: uvicorn (httptools) in front of
:func:`serving.endpoints.dispatch`, the same on a laptop and on Kubernetes.

Each gateway replica binds ``OPTISERVE_LISTEN`` (host:port) itself with ``SO_REUSEPORT``, so the
replicas of a machine share the port and the kernel spreads connections over them; Ray Serve's
proxies are off. uvicorn runs inside the replica's event loop with its signal handlers off (as
Ray's own direct ingress and MLServer embed it), on a bare ASGI callable: no framework, no
per-request middleware.

What uvicorn leaves to its user is added by a subclass of its httptools protocol, each bound
from :mod:`serving.settings`:

- request line + headers past ``http_max_header_bytes`` get 431 (llhttp has no limit of its
  own; bytes are counted while a head is incomplete, so one endless header is cut off);
- a request not received within ``http_request_timeout_s`` gets 408, a connection that sends
  nothing is closed after ``http_idle_timeout_s`` (uvicorn only times out keep-alive);
- connections past ``http_max_connections`` are answered 503 and closed at once, so idle
  connections cannot crowd out the requests of connected clients;
- a client that stops reading its answers is cut off after ``http_write_timeout_s``;
- a client that goes away cancels its request (it leaves the batch queue);
- a body past the gateway's ``max_body_bytes`` is refused with 413 as it streams in; the rest of
  the body is read and dropped (up to ``http_linger_s`` / ``http_linger_bytes``) so the client,
  still sending, reads the 413 instead of a reset.

Draining (:meth:`Ingress.drain`, a replica stopping or ``POST /-/drain`` from the pod itself):
first ``http_drain_accept_s`` during which the health endpoints fail, every answer carries
``connection: close`` and idle connections are closed (load balancers deregister the pod;
clients reconnect to other replicas); then the socket closes and requests in flight get up to
``http_drain_timeout_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .protocol.errors import PayloadTooLarge, RequestCancelled
from .settings import settings

log = logging.getLogger("ray.serve.optiserve.ingress")

# dispatch(method, path, headers, read_body) -> (status, body, headers): serving.endpoints
Dispatch = Callable[..., Awaitable[tuple[int, bytes, dict[str, str]]]]
#: the path KubeRay probes a serving pod's proxy on (its readiness check greps "success")
HEALTHZ = "/-/healthz"
DRAIN = "/-/drain"
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_LOOPBACK = {"127.0.0.1", "::1"}


def _error(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
    return status, orjson.dumps({"error": message}), {"content-type": "application/json"}


def _raw_response(status: int, message: str) -> bytes:
    """A whole JSON error response with connection: close, for the protocol's own answers."""
    from http import HTTPStatus

    body = orjson.dumps({"error": message})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode(),
                                            len(body))) + body


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it leaves to its user (see the module)."""

    ingress: Ingress  # set on the subclass made per Ingress

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_open = False     # a request head began and is not complete
        self._head_bytes = 0        # bytes received while it was incomplete (after its 1st read)
        self._request_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._refused = False
        self._pending_error: tuple[int, str] | None = None  # answered after the one in flight
        self._discard = 0           # bytes still dropped while lingering after an error

    # ---- connection --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        s = self.ingress.settings
        if len(self.connections) >= s.http_max_connections:
            # answered and closed before it is counted: the connected clients keep the room
            self._refused = True
            self.transport = transport
            transport.write(_raw_response(503, f"too many connections (the limit is "
                                               f"{s.http_max_connections}); retry later"))
            transport.close()
            self.ingress.refused += 1
            return
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a connection that never sends a request is closed like an idle keep-alive one
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        self._cancel_timers()
        task = self._task
        if task is not None and not task.done() and self.cycle is not None \
                and not self.cycle.response_complete:
            task.cancel()  # the client went away: its request leaves the queue
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._discard:  # lingering after an error answer: drop what still arrives
            self._discard = max(0, self._discard - len(data))
            if not self._discard:
                self.transport.close()
            return
        if self._pending_error is not None:
            return
        self._unset_keepalive_if_required()
        if self._head_open:
            # llhttp hands a header over only once it ends: bound the head by the bytes that
            # arrive while it is incomplete (the read it began in is not counted, so a
            # pipelined burst never inflates the next request's count)
            self._head_bytes += len(data)
            if self._head_bytes > self.ingress.settings.http_max_header_bytes:
                self._fail(431, "request line and headers exceed "
                                f"{self.ingress.settings.http_max_header_bytes} bytes")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not self.transport.is_closing():
                cause = e.__context__
                if isinstance(cause, _HeadTooLarge):
                    self._fail(431, str(cause))
                else:
                    log.error("HTTP parsing failed in a callback", exc_info=cause or e)
                    self._fail(400, "malformed HTTP request")
        except httptools.HttpParserUpgrade:
            # no protocol upgrades (h2c, websockets): the request is answered over HTTP/1.1
            pass
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed HTTP request: {e}")

    def send_400_response(self, msg: str) -> None:
        self._fail(400, msg)

    def _fail(self, status: int, message: str) -> None:
        """Answer a protocol error and close. Behind a request still being answered, the error
        waits for that answer (answers keep the order of requests). After it, what the client
        still sends is read and dropped for a while, so it reads the error, not a reset."""
        if self.cycle is not None and not self.cycle.response_complete and self._task \
                is not None and not self._task.done() and status != 408:
            self._pending_error = (status, message)
            self.flow.pause_reading()
            return
        self._cancel_timers()
        if self.transport.is_closing():
            return
        self.transport.write(_raw_response(status, message))
        s = self.ingress.settings
        self._discard = min(s.http_linger_bytes, 4 * 1024 * 1024)
        self.flow.resume_reading()
        self.loop.call_later(min(s.http_linger_s, 1.0), self.transport.close)

    # ---- parsing: bounds and timers ----------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes = True, 0
        self._arm_request_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        limit = self.ingress.settings.http_max_header_bytes
        if len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > limit:
            raise _HeadTooLarge(f"request line and headers exceed {limit} bytes")

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_request_timer()
        super().on_message_complete()

    def _arm_request_timer(self) -> None:
        self._disarm_request_timer()
        self._request_timer = self.loop.call_later(
            self.ingress.settings.http_request_timeout_s, self._request_timed_out)

    def _disarm_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.cycle is not None and self.cycle.response_started:
            # the app answered already (e.g. a 413 while the body still streams): close
            self.transport.close()
            return
        self._fail(408, "the request was not received within "
                        f"{self.ingress.settings.http_request_timeout_s:g} s")

    def _cancel_timers(self) -> None:
        self._disarm_request_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # ---- answering -----------------------------------------------------------------------
    def _start_asgi_task(self, cycle, app) -> None:
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._task = task

    def on_response_complete(self) -> None:
        if self._pending_error is not None:
            self.server_state.total_requests += 1
            status, message = self._pending_error
            self._pending_error = None
            self._fail(status, message)
            return
        super().on_response_complete()
        if self.ingress.draining and not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.ingress.settings.http_write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self.transport.abort()  # the client stopped reading its answers


class _HeadTooLarge(Exception):
    pass


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the replica's process is Ray's."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        key, value = k.decode("latin-1"), v.decode("latin-1")
        out[key] = value if key not in out else f"{out[key]}, {value}"
    return out


class _Body:
    """``read_body(limit)`` for dispatch over ASGI ``receive``: the limit applies as the body
    streams; past it the rest is read and dropped (lingering) before the 413 is answered."""

    __slots__ = ("receive", "headers", "ingress", "refused")

    def __init__(self, receive, headers: dict[str, str], ingress: Ingress):
        self.receive, self.headers, self.ingress = receive, headers, ingress
        self.refused = False

    async def read(self, limit: int) -> bytes:
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # a client waiting for 100 Continue sends nothing more: refuse without asking
            if self.headers.get("expect", "").lower() != "100-continue":
                await self._linger()
            self.refused = True
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of "
                                  f"{limit} bytes")
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise RequestCancelled("the client went away while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._linger(message.get("more_body", False))
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _linger(self, more: bool = True) -> None:
        """Read and drop what the client still sends, within the linger budget, so that it
        reads the 413 instead of a reset (it sends its whole body before it reads)."""
        self.refused = True
        s = self.ingress.settings
        deadline = time.monotonic() + s.http_linger_s
        dropped = 0
        while more and dropped <= s.http_linger_bytes:
            try:
                message = await asyncio.wait_for(self.receive(),
                                                 max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return
            if message["type"] == "http.disconnect":
                return
            dropped += len(message.get("body", b""))
            more = message.get("more_body", False)


class Ingress:
    """The HTTP server of one gateway replica on ``host:port`` (shared by the replicas of a
    machine). ``bind()`` takes the port at once (the caller reports an error there), ``start()``
    serves it on the running loop, ``drain()`` stops it without losing requests."""

    def __init__(self, dispatch: Dispatch, host: str, port: int,
                 ready: Callable[[], Awaitable[bool]] | None = None):
        self.dispatch = dispatch
        self.host, self.port = host, port
        self._ready = ready
        self.settings = settings()
        self.draining = False
        #: called when draining starts (the gRPC server beside this one drains too)
        self.on_drain: Callable[[], object] | None = None
        self.refused = 0  # connections refused past the limit
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None
        self._drain_task: asyncio.Task | None = None
        protocol = type("GatewayHttpProtocol", (_Protocol,), {"ingress": self})
        s = self.settings
        self._config = uvicorn.Config(
            self._app, http=protocol, interface="asgi3", proxy_headers=False, lifespan="off",
            log_level="warning", access_log=False,
            server_header=False, date_header=True, timeout_keep_alive=int(
                max(1, round(s.http_idle_timeout_s))),
            # a backstop only: connections past http_max_connections are refused before this
            limit_concurrency=s.http_max_connections + 1,
            timeout_graceful_shutdown=int(max(1, round(s.http_drain_timeout_s))),
            backlog=2048)

    # ---- lifecycle ---------------------------------------------------------------------------
    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot listen on {self.host}:{self.port}: {e.strerror}") \
                from None
        self._sock = sock

    async def start(self) -> None:
        if self._sock is None:
            self.bind()
        self._server = _Server(self._config)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("listening for OIP requests on %s:%d", self.host, self.port)

    @property
    def failed(self) -> BaseException | None:
        """Why the server stopped, if it stopped by itself."""
        t = self._task
        if t is not None and t.done() and not self.draining:
            return t.exception() if not t.cancelled() else RuntimeError("cancelled")
        return None

    def connections(self) -> int:
        return len(self._server.server_state.connections) if self._server else 0

    def drain(self, accept_s: float | None = None) -> asyncio.Task:
        """Start draining (once); the task ends when the server has stopped."""
        if self._drain_task is None:
            # health fails from now on, before the caller's next await
            self.draining = True
            if self.on_drain is not None:
                self.on_drain()
            if self._server is not None:
                # phase 1: still accepting, every answer closing its connection
                for conn in list(self._server.server_state.connections):
                    conn.shutdown()  # idle ones close now, busy ones after their answer
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(
                self.settings.http_drain_accept_s if accept_s is None else accept_s))
        return self._drain_task

    async def _drain(self, accept_s: float) -> None:
        server = self._server
        if server is None or self._task is None:
            if self._sock is not None:
                self._sock.close()
            return
        if accept_s > 0:
            await asyncio.sleep(accept_s)
        # phase 2: the socket closes; requests in flight finish (uvicorn's graceful shutdown)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task),
                                   self.settings.http_drain_timeout_s + 5)
        if not self._task.done():
            self._task.cancel()
        log.info("HTTP server on %s:%d drained", self.host, self.port)

    # ---- the ASGI application ------------------------------------------------------------
    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self._answer(scope, receive)
        except asyncio.CancelledError:
            return  # the client went away; nothing to answer
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        if self.draining:
            raw.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope, receive) -> tuple[int, bytes, dict[str, str]]:
        path, method = scope["path"], scope["method"]
        headers = _headers(scope["headers"])
        if path.startswith("/-/"):
            return await self._control(path, method, scope)
        if self.draining and path == "/v2/health/ready":
            return _error(400, "not ready: this gateway replica is draining")
        body = _Body(receive, headers, self)
        try:
            status, out, out_headers = await self.dispatch(method, path, headers, body.read)
        except asyncio.CancelledError:
            raise
        except Exception:  # dispatch answers every error itself; this is the last resort
            log.exception("%s %s failed in the HTTP server", method, path)
            return _error(500, "internal error")
        if body.refused:
            out_headers = {**out_headers, "connection": "close"}
        return status, out, out_headers

    async def _control(self, path: str, method: str, scope) -> tuple[int, bytes, dict[str, str]]:
        if path == HEALTHZ and method in ("GET", "HEAD"):
            ok = not self.draining and (self._ready is None or await self._ready())
            return (200, b"success", {"content-type": "text/plain"}) if ok else (
                503, b"draining" if self.draining else b"not ready",
                {"content-type": "text/plain"})
        if path == DRAIN and method == "POST":
            client = (scope.get("client") or ("",))[0]
            if client not in _LOOPBACK:
                return _error(403, "drain is accepted from the pod itself only")
            self.drain()
            return 202, orjson.dumps({"draining": True}), {"content-type": "application/json"}
        return _error(404, f"unknown endpoint {method} {path}")


__all__ = ["Ingress", "HEALTHZ", "DRAIN"]
