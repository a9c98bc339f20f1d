"""The gateway's HTTP server (uvicorn + serving.ingress's bounds), at the protocol level, with
raw sockets.

The server runs for real on a loopback port; the dispatch behind it is a small test function
(recording what it got) instead of a gateway, so that each HTTP behaviour is checked alone. The
whole path (tritonclient, hostile clients, fuzzing, rollouts) runs through the same server in
tests/serving/test_server.py, test_hostile_server.py and the rollout suites.
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from optiserve.local import free_port
from serving import settings as S
from serving.ingress import Ingress
from serving.protocol import PayloadTooLarge

LIMIT = 1000


@pytest.fixture(autouse=True)
def knobs(monkeypatch):
    """Short timeouts and small limits for these tests (OPTISERVE_* as in production)."""
    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(S.env_name(k), str(v))
        S.reload()

    set_(http_linger_s=2, http_drain_accept_s=0.3, http_drain_timeout_s=2)
    yield set_
    monkeypatch.undo()
    S.reload()


class Recorder:
    """dispatch() for the tests: echoes the request, or waits when the path says so."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, method, path, headers, read_body):
        self.calls.append((method, path))
        try:
            body = await read_body(LIMIT)
        except PayloadTooLarge as e:
            return 413, orjson.dumps({"error": str(e)}), {"content-type": "application/json"}
        if path == "/big":
            return 200, b"x" * 1_000_000, {}
        if path == "/broken":
            raise RuntimeError("a bug behind the server")
        if path == "/wait":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        doc = {"method": method, "path": path, "body": body.decode(), "n": len(self.calls),
               "expect": headers.get("expect")}
        return 200, orjson.dumps(doc), {"content-type": "application/json"}


async def started(rec: Recorder | None = None, port: int | None = None) -> Ingress:
    srv = Ingress(rec or Recorder(), "127.0.0.1", port or free_port())
    await srv.start()
    return srv


def run(test):
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                await asyncio.wait_for(test(rec, reader, writer, srv), 30)
            finally:
                writer.close()
        finally:
            await srv.drain(0)
    asyncio.run(main())


async def response(reader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (content-length framed, as the server writes them)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def test_keep_alive_and_pipelined_requests_are_answered_in_order():
    async def t(rec, reader, writer, srv):
        writer.write(post("/a", b"1"))
        status, headers, body = await response(reader)
        assert status == 200 and orjson.loads(body)["body"] == "1"
        assert "connection" not in headers and "date" in headers  # kept alive
        writer.write(post("/b", b"22") + post("/c", b"333") + b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n")
        got = [orjson.loads((await response(reader))[2]) for _ in range(3)]
        assert [(g["method"], g["path"], g["body"]) for g in got] == [
            ("POST", "/b", "22"), ("POST", "/c", "333"), ("GET", "/d", "")]
    run(t)


def test_chunked_body_and_expect_100_continue():
    async def t(rec, reader, writer, srv):
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                     b"expect: 100-continue\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        status, _, body = await response(reader)
        assert status == 200 and orjson.loads(body)["body"] == "abcde"
    run(t)


def test_a_declared_body_over_the_limit_waiting_for_100_continue_gets_413_unread():
    async def t(rec, reader, writer, srv):
        # headers only: the server must answer without asking for the 10 MB announced
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n"
                     b"expect: 100-continue\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 413 and "10000000 bytes" in orjson.loads(body)["error"]
        assert headers["connection"] == "close"
        assert await reader.read() == b""  # closed, no 100 Continue was sent
        assert rec.calls == [("POST", "/x")]  # the gateway saw (and counted) it
    run(t)


def test_a_client_sending_a_body_over_the_limit_reads_the_413():
    """Clients send their whole body before they read: the rest of a refused body is read and
    dropped, so the client reads a 413 instead of a broken pipe (nginx's lingering close)."""
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            def client() -> bytes:
                body = b"x" * (8 * 1024 * 1024)
                with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
                    s.sendall(post("/x", b"")[:-len("\r\n")].replace(
                        b"content-length: 0", f"content-length: {len(body)}".encode())
                        + b"\r\n" + body)  # raises BrokenPipeError without the lingering
                    answer = b""
                    while True:  # the whole answer: head and body may come apart
                        chunk = s.recv(65536)
                        if not chunk:
                            return answer
                        answer += chunk
            got = await asyncio.get_running_loop().run_in_executor(None, client)
            assert got.startswith(b"HTTP/1.1 413"), got[:200]
            assert b"exceeds the limit of 1000 bytes" in got
        finally:
            await srv.drain(0)
    asyncio.run(main())


def test_a_chunked_body_growing_past_the_limit_gets_413():
    async def t(rec, reader, writer, srv):
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"a" * 400
        for _ in range(3):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 413 and "exceeds the limit of 1000 bytes" in orjson.loads(body)["error"]
        assert headers["connection"] == "close" and await reader.read() == b""
    run(t)


def test_oversized_headers_get_431_and_malformed_http_400():
    async def t(rec, reader, writer, srv):
        limit = srv.settings.http_max_header_bytes
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (limit + 10)
                     + b"\r\n\r\n")
        status, _, body = await response(reader)
        assert status == 431 and "headers exceed" in orjson.loads(body)["error"]
        assert await reader.read() == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
        status, _, body = await response(r2)
        assert status == 400 and "malformed HTTP request" in orjson.loads(body)["error"]
        w2.close()
        assert rec.calls == []
    run(t)


def test_many_small_headers_past_the_limit_get_431():
    async def t(rec, reader, writer, srv):
        headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        status, _, _ = await response(reader)
        assert status == 431 and rec.calls == []
    run(t)


def test_a_pipelined_burst_over_the_header_limit_is_no_false_431(knobs):
    """Requests that each have a small head, sent in one burst larger than the header limit
    and ending in a partial head, are all answered (a read is not a head's size)."""
    knobs(http_max_header_bytes=4096)

    async def t(rec, reader, writer, srv):
        one = post("/p", b"y" * 900)
        burst = one * 8 + b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-le"
        writer.write(burst)
        await writer.drain()
        got = [await response(reader) for _ in range(8)]
        assert all(g[0] == 200 for g in got), [g[0] for g in got]
        writer.write(b"ngth: 1\r\n\r\nz")
        status, _, body = await response(reader)
        assert status == 200 and orjson.loads(body)["body"] == "z"
    run(t)


def test_one_endless_header_gets_431_without_being_read_whole():
    async def t(rec, reader, writer, srv):
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\nx-a: ")
        try:
            for _ in range(64):  # up to 4 MiB, never ending the header
                writer.write(b"a" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        status, _, body = await response(reader)
        assert status == 431
        assert rec.calls == []
    run(t)


def test_a_stalled_request_gets_408_and_an_idle_connection_is_closed(knobs):
    knobs(http_request_timeout_s=0.3, http_idle_timeout_s=1)

    async def t(rec, reader, writer, srv):
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        status, _, body = await response(reader)
        assert status == 408 and "not received within" in orjson.loads(body)["error"]
        assert await reader.read() == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(post("/a", b"1"))
        assert (await response(r2))[0] == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await r2.read() == b""  # closed by the server once idle
        assert 0.5 < loop.time() - t0 < 5
        w2.close()
        # a connection that never sends anything is closed too
        r3, w3 = await asyncio.open_connection("127.0.0.1", srv.port)
        assert await asyncio.wait_for(r3.read(), 5) == b""
        w3.close()
    run(t)


def test_a_client_that_goes_away_cancels_its_request():
    async def t(rec, reader, writer, srv):
        writer.write(post("/wait", b""))
        while not rec.calls:
            await asyncio.sleep(0.01)
        writer.close()
        await asyncio.wait_for(rec.cancelled.wait(), 5)
    run(t)


def test_replicas_share_the_port():
    async def main():
        port = free_port()
        a, b = Recorder(), Recorder()
        sa, sb = await started(a, port), await started(b, port)  # SO_REUSEPORT
        seen = 0
        for _ in range(60):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(post("/a", b""))
            await response(r)
            w.close()
            seen = sum(1 for x in (a, b) if x.calls)
            if seen == 2:
                break
        await sa.drain(0)
        await sb.drain(0)
        assert seen == 2, "the kernel never gave the second server a connection"
    asyncio.run(main())


@pytest.mark.parametrize("target,path", [
    ("/v2/models/m/infer?x=1", "/v2/models/m/infer"), ("/v2?x=1", "/v2"),
    ("http://example.com:8000/v2/models/m/ready", "/v2/models/m/ready"),
    ("/v2/models/caf%C3%A9", "/v2/models/café")])
def test_request_targets_reach_dispatch_as_paths(target, path):
    """Query strings dropped, absolute-form targets taken by their path, percent-encoding
    decoded as UTF-8."""
    async def t(rec, reader, writer, srv):
        writer.write(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        status, _, body = await response(reader)
        assert status == 200 and orjson.loads(body)["path"] == path
    run(t)


def test_a_failure_behind_the_server_is_a_500_and_the_connection_serves_on():
    async def t(rec, reader, writer, srv):
        writer.write(post("/broken", b"1"))
        status, _, body = await response(reader)
        assert status == 500 and orjson.loads(body) == {"error": "internal error"}
        writer.write(post("/a", b"1"))
        assert (await response(reader))[0] == 200
    run(t)


def test_head_has_no_body_and_http10_closes():
    async def t(rec, reader, writer, srv):
        writer.write(b"HEAD /v2 HTTP/1.1\r\nhost: x\r\n\r\n" + post("/a", b"1"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
        # the next answer starts right after the head
        assert await reader.readexactly(8) == b"HTTP/1.1"
        rest = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in rest.split(b"\r\n")[0]
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        # HTTP/1.0 is answered, and its connection closed (uvicorn keeps 1.1 alive only)
        w2.write(b"GET /b HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        status, headers, _ = await response(r2)
        assert status == 200 and headers["connection"] == "close"
        w2.close()
    run(t)


def test_after_a_closing_request_its_answer_arrives_and_the_connection_closes():
    async def t(rec, reader, writer, srv):
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 200 and orjson.loads(body)["path"] == "/a"
        assert headers["connection"] == "close" and await reader.read() == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
        status, _, body = await response(r2)  # no upgrade: answered over HTTP/1.1
        assert status == 200 and orjson.loads(body)["path"] == "/c"
        w2.close()
    run(t)


def test_a_malformed_request_behind_a_good_one_is_answered_after_it():
    async def t(rec, reader, writer, srv):
        writer.write(post("/wait", b"") + b"BROKEN\x00 / HTTP/1.1\r\n\r\n")
        while not rec.calls:
            await asyncio.sleep(0.01)
        rec.release.set()
        first, second = await response(reader), await response(reader)
        assert first[0] == 200 and second[0] == 400
        assert rec.cancelled.is_set() is False
    run(t)


def test_a_client_that_never_reads_its_answers_is_cut_off(knobs):
    knobs(http_write_timeout_s=0.5)

    async def t(rec, reader, writer, srv):
        writer.write(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n" * 20)  # 20 MB of answers
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while srv.connections() and loop.time() - t0 < 10:
            await asyncio.sleep(0.1)
        assert not srv.connections(), "the connection was kept with its answers buffered"
        assert len(rec.calls) < 20  # it stopped answering once the client stopped reading
    run(t)


def test_connections_past_the_limit_are_refused_and_the_connected_are_served(knobs):
    knobs(http_max_connections=20)

    async def t(rec, reader, writer, srv):
        idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(19)]
        await asyncio.sleep(0.1)
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        status, headers, body = await response(r)  # answered before it asked anything
        assert status == 503 and "too many connections" in orjson.loads(body)["error"]
        assert await r.read() == b"" and srv.refused == 1
        w.close()
        writer.write(post("/a", b"1"))  # the first client is still served
        assert (await response(reader))[0] == 200
        for _r, iw in idle:
            iw.close()
    run(t)


def test_drain_fails_health_closes_connections_then_the_socket_and_finishes_in_flight():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        port = srv.port
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(post("/wait", b""))
        while not rec.calls:
            await asyncio.sleep(0.01)
        draining = srv.drain(1.0)
        assert await asyncio.wait_for(idle_r.read(), 2) == b""  # idle: closed at once
        # still accepting during the first phase: health fails, answers close their connection
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /-/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        status, headers, body = await response(r)
        assert status == 503 and body == b"draining" and headers["connection"] == "close"
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(post("/a", b"1"))
        status, headers, _ = await response(r2)
        assert status == 200 and headers["connection"] == "close"
        await asyncio.sleep(1.2)  # the socket is closed now
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        rec.release.set()  # the request in flight still gets its answer
        status, headers, _ = await asyncio.wait_for(response(busy_r), 5)
        assert status == 200 and headers["connection"] == "close"
        await asyncio.wait_for(draining, 5)
        for wr in (idle_w, busy_w, w, w2):
            wr.close()
    asyncio.run(main())


def test_healthz_and_drain_from_the_pod_itself():
    async def t(rec, reader, writer, srv):
        writer.write(b"GET /-/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body = await response(reader)
        assert status == 200 and body == b"success"  # what KubeRay's probe greps for
        writer.write(b"POST /-/drain HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        status, _, body = await response(reader)
        assert status == 202 and srv.draining
    run(t)


def test_drain_is_refused_from_anywhere_but_the_machine_itself():
    """POST /-/drain stops a gateway taking traffic: a client of the pod network (any address
    but loopback) gets 403 and nothing drains."""
    async def main():
        srv = Ingress(Recorder(), "127.0.0.1", free_port())
        for client in (("10.1.2.3", 40000), ("192.0.2.7", 1), ("::ffff:127.0.0.2", 3)):
            status, body, _ = await srv._control("/-/drain", "POST", {"client": client})
            assert status == 403 and b"from the pod itself" in body, client
        assert not srv.draining
        status, _, _ = await srv._control("/-/drain", "POST", {"client": ("127.0.0.1", 9)})
        assert status == 202 and srv.draining
    asyncio.run(main())
