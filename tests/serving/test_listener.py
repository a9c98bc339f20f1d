"""The gateway's own HTTP listener, at the protocol level, with raw sockets.

The listener runs for real on a loopback port; the dispatch behind it is a small test function
(recording what it got) instead of a gateway, so that each HTTP behaviour is checked alone. The
whole server path through the listener (tritonclient, hostile clients, fuzzing) is covered by
tests/serving/test_server.py and test_hostile_server.py, which use it by default.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from serving import listener as L
from optiserve.local import free_port
from serving.protocol import PayloadTooLarge

LIMIT = 1000


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
        if path == "/wait":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        doc = {"method": method, "path": path, "body": body.decode(), "n": len(self.calls),
               "expect": headers.get("expect")}
        return 200, orjson.dumps(doc), {"content-type": "application/json"}


def run(test):
    async def main():
        rec = Recorder()
        srv = L.Listener(rec, lambda: LIMIT, "127.0.0.1", free_port())
        await srv.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                await asyncio.wait_for(test(rec, reader, writer, srv), 20)
            finally:
                writer.close()
        finally:
            await srv.stop(drain_s=0.5)
    asyncio.run(main())


async def response(reader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (content-length framed, as the listener writes them)."""
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
        assert "connection" not in headers  # kept alive
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


def test_a_declared_body_over_the_limit_gets_413_unread_and_the_connection_closes():
    async def t(rec, reader, writer, srv):
        # headers only: the listener must answer without waiting for the 10 MB it announced
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n"
                     b"expect: 100-continue\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 413 and "10000000 bytes" in orjson.loads(body)["error"]
        assert headers["connection"] == "close"
        assert await reader.read() == b""  # closed, no 100 Continue was sent
        assert rec.calls == [("POST", "/x")]  # the gateway saw (and counted) it
    run(t)


def test_a_chunked_body_growing_past_the_limit_gets_413():
    async def t(rec, reader, writer, srv):
        writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"a" * 400
        for _ in range(3):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = await response(reader)
        assert status == 413 and "exceeds the limit of 1000 bytes" in orjson.loads(body)["error"]
        assert await reader.read() == b""
    run(t)


def test_oversized_headers_get_431_and_malformed_http_400():
    async def t(rec, reader, writer, srv):
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (L.MAX_HEADER_BYTES + 10)
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


def test_a_stalled_request_gets_408_and_an_idle_connection_is_closed(monkeypatch):
    monkeypatch.setattr(L, "REQUEST_TIMEOUT_S", 0.3)
    monkeypatch.setattr(L, "IDLE_TIMEOUT_S", 0.3)

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
        assert await r2.read() == b""  # closed by the listener once idle
        assert 0.1 < loop.time() - t0 < 5
        w2.close()
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
        a = L.Listener(Recorder(), lambda: LIMIT, "127.0.0.1", port)
        b = L.Listener(Recorder(), lambda: LIMIT, "127.0.0.1", port)
        await a.start()
        await b.start()  # SO_REUSEPORT: the second replica binds too
        seen = set()
        for _ in range(40):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(post("/a", b""))
            await response(r)
            w.close()
            seen = {id(x) for x in (a, b) if x.dispatch.calls}
            if len(seen) == 2:
                break
        await a.stop(0.1)
        await b.stop(0.1)
        assert len(seen) == 2, "the kernel never gave the second listener a connection"
    asyncio.run(main())


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2"])
def test_paths_reach_dispatch_without_query(path):
    async def t(rec, reader, writer, srv):
        writer.write(f"GET {path}?x=1 HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        status, _, body = await response(reader)
        assert status == 200 and orjson.loads(body)["path"] == path
    run(t)


def test_a_failure_of_the_listener_itself_is_a_500_not_the_clients_fault():
    async def main():
        def broken():
            raise RuntimeError("no config yet")
        srv = L.Listener(Recorder(), broken, "127.0.0.1", free_port())
        await srv.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(post("/a", b"1"))
            status, _, body = await asyncio.wait_for(response(r), 5)
            assert status == 500 and orjson.loads(body) == {"error": "internal error"}
            w.close()
        finally:
            await srv.stop(0.1)
    asyncio.run(main())


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


def test_head_has_no_body_and_http10_keep_alive_is_confirmed():
    async def t(rec, reader, writer, srv):
        writer.write(b"HEAD /v2 HTTP/1.1\r\nhost: x\r\n\r\n" + post("/a", b"1"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
        # the next answer starts right after the head
        assert await reader.readexactly(8) == b"HTTP/1.1"
        rest = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in rest.split(b"\r\n")[0]
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(b"GET /b HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        status, headers, _ = await response(r2)
        assert status == 200 and headers["connection"] == "keep-alive"
        w2.close()
    run(t)


def test_after_a_closing_request_nothing_is_read_and_its_answer_arrives():
    async def t(rec, reader, writer, srv):
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                     b"GET /b HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE")
        status, headers, body = await response(reader)
        assert status == 200 and orjson.loads(body)["path"] == "/a"
        assert headers["connection"] == "close" and await reader.read() == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
        status, headers, body = await response(r2)  # answered over HTTP/1.1, then closed
        assert status == 200 and headers["connection"] == "close"
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


def test_a_client_that_never_reads_its_answers_is_cut_off(monkeypatch):
    monkeypatch.setattr(L, "WRITE_TIMEOUT_S", 0.5)

    async def t(rec, reader, writer, srv):
        writer.write(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n" * 20)  # 20 MB of answers
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while srv.connections and loop.time() - t0 < 10:
            await asyncio.sleep(0.1)
        assert not srv.connections, "the connection was kept with its answers buffered"
        assert len(rec.calls) < 20  # it stopped answering once the client stopped reading
    run(t)


def test_stop_closes_idle_connections_and_marks_the_last_answers():
    async def main():
        rec = Recorder()
        srv = L.Listener(rec, lambda: LIMIT, "127.0.0.1", free_port())
        await srv.start()
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", srv.port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", srv.port)
        busy_w.write(post("/wait", b""))
        while not rec.calls:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(srv.stop(drain_s=5))
        assert await asyncio.wait_for(idle_r.read(), 2) == b""  # closed at once
        rec.release.set()
        status, headers, _ = await asyncio.wait_for(response(busy_r), 5)
        assert status == 200 and headers["connection"] == "close"
        await stopping
        idle_w.close()
        busy_w.close()
    asyncio.run(main())
