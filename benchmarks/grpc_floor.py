"""What a Python gRPC server costs per call before any inference: a bare echo server on grpcio
(``grpc.aio``, what the gateway replicas run, and the thread-pool ``grpc.server``) against a bare
HTTP/1.1 echo on uvicorn with httptools (what they run for REST), the same payload and client
concurrency, server CPU per request from /proc (utime + stime of the server process).

It answers one question: how much of the gateway's gRPC cost per request is the library's own
floor. Each server runs in its own process, one at a time, rounds interleaved, medians.

    python -m benchmarks.grpc_floor [--requests 20000] [--payload 4200] [--concurrency 32]
        [--rounds 3] [--work-us 0,200]

Measured here (2 cores, 2026-12-04, 4,200-byte payloads (64 rows x 16 FP32 and framing), 32
calls at once from an asyncio client in this process; 20,000 calls per point, 3 interleaved
rounds, medians; the second block `--work-us 0,200 --requests 10000 --rounds 2`):

    server              calls/s   server CPU per call
    grpc.aio               4451        240 us
    grpc (threads)         6639        154 us
    http (uvicorn)        29484         34 us

    with 200 us of Python per call in the handler
    grpc.aio               2496        449 us   (250 without)
    grpc (threads)         2115        478 us   (156 without: its threads fight for the GIL)
    http (uvicorn)         4073        244 us   (36 without)

The gateway's own options (message limits, stream and connection caps, keepalive rules,
maximum_concurrent_rpcs) changed nothing measurable (238-251 vs 240-243 us in two rounds), and a
handler's own work adds to grpc.aio's floor about one for one (no GIL trading between its
poller thread and a busy loop). So a unary gRPC request costs a Python server at least ~200 us
more than the same request over REST, whatever the handler does.

In the gateway replica (perf on its threads, 64-row requests at 32 clients, 2026-12-04): per
unary gRPC request its event-loop thread spent 659 us (248 over REST), grpc's poller thread 56
and grpc core's event-engine threads 113 (17 over REST). With the infer handler answering a
canned response at once (an ad-hoc build, no gateway work) the replica still spent 388 us per
call, more than a whole REST request (~275-290 us); the rest is the gateway's own work (~240 us,
as over REST) plus smaller batches at the lower rate (Ray's handle routing per request 2.6x
REST's). A ModelStreamInfer stream sets up no call per request: 254-335 us per 64-row request in
the same replica (32 streams x 1 request, 4 x 8), REST's range. Hence `optiserve bench
--streaming` and the streamed rows in benchmarks/grpc_vs_rest.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from tests.support.harness import free_port

AIO = '''
import asyncio, grpc
async def main():
    server = grpc.aio.server()
    async def echo(req, ctx):
        work()
        return req
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
'''

SYNC = '''
import grpc
from concurrent.futures import ThreadPoolExecutor
def echo(r, c):
    work()
    return r
server = grpc.server(ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
'''

HTTP = '''
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    work()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
print("ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="asyncio",
            access_log=False, log_level="warning", lifespan="off")
'''


#: every server's preamble: its port and µs of Python per call (``work()``) from argv
PREAMBLE = """import sys, time
WORK = float(sys.argv[2]) / 1e6
def work():
    end = time.perf_counter() + WORK
    while time.perf_counter() < end:
        pass
"""


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def grpc_client(port: int, n: int, payload: bytes, concurrency: int) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/echo.Echo/Echo")
        left = [n]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                assert len(await call(payload)) == len(payload)
        await asyncio.gather(*[worker() for _ in range(concurrency)])


async def http_client(port: int, n: int, payload: bytes, concurrency: int) -> None:
    left = [n]

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
                b"content-length: %d\r\n\r\n" % len(payload))
        while left[0] > 0:
            left[0] -= 1
            writer.write(head + payload)
            status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert len(await reader.readexactly(length)) == len(payload)
        writer.close()
    await asyncio.gather(*[worker() for _ in range(concurrency)])


def measure(kind: str, n: int, payload: bytes, concurrency: int, work_us: float = 0.0) -> dict:
    port = free_port()
    code = {"grpc.aio": AIO, "grpc (threads)": SYNC, "http (uvicorn)": HTTP}[kind]
    proc = subprocess.Popen([sys.executable, "-c", PREAMBLE + code, str(port), str(work_us)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        client = grpc_client if kind.startswith("grpc") else http_client
        for _ in range(50):  # the server's socket is up once a call goes through
            try:
                asyncio.run(client(port, concurrency, payload, concurrency))
                break
            except Exception:
                time.sleep(0.1)
        c0, t0 = cpu_s(proc.pid), time.perf_counter()
        asyncio.run(client(port, n, payload, concurrency))
        c1, t1 = cpu_s(proc.pid), time.perf_counter()
    finally:
        proc.kill()
        proc.wait()
    return {"rps": n / (t1 - t0), "server_cpu_us": 1e6 * (c1 - c0) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--payload", type=int, default=4200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work-us", default="0",
                    help="µs of Python each handler spends per call (comma-separated: one "
                         "measurement each), as a server's own request handling would")
    a = ap.parse_args()
    payload = os.urandom(a.payload)
    kinds = [(k, float(w)) for w in a.work_us.split(",")
             for k in ("grpc.aio", "grpc (threads)", "http (uvicorn)")]
    results: dict[tuple, list[dict]] = {k: [] for k in kinds}
    for r in range(a.rounds):
        for kind, work in (kinds if r % 2 == 0 else kinds[::-1]):
            m = measure(kind, a.requests, payload, a.concurrency, work)
            results[(kind, work)].append(m)
            print(f"round {r + 1} {kind:15} work {work:5.0f} us {m['rps']:8.0f} calls/s, "
                  f"server CPU {m['server_cpu_us']:6.0f} us/call", flush=True)
    print(f"\n{a.rounds} rounds, medians; {a.payload}-byte payloads, {a.concurrency} calls at once")
    for kind, work in kinds:
        rs = results[(kind, work)]
        print(f"  {kind:15} work {work:5.0f} us {statistics.median(m['rps'] for m in rs):8.0f}"
              f" calls/s  server CPU {statistics.median(m['server_cpu_us'] for m in rs):6.0f}"
              " us/call")


if __name__ == "__main__":
    main()
