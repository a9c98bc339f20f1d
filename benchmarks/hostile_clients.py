"""What a hostile client costs everyone else: steady clients' latency with and without attacks,
measured in one run against a live ``optiserve serve`` (rounds interleaved, medians).

Four steady clients send one sentence each, closed loop, for ``--seconds``. Each round measures
them once alone (baseline) and once while one attacker sends, in turn:

- ``rows``: requests of 50,000 short strings and of 2,000 sentences (refused: over max_batch_size)
- ``gzip``: a ~1 MB gzip body that inflates to ~0.8 GiB (refused: 413 past max_body_bytes)
- ``malformed``: bodies with fields of the wrong JSON type, absurd shapes, bad UTF-8
- ``hangup``: requests whose client disconnects before the answer (their rows never run)

It prints, per attack: the steady clients' p50/p99 and errors next to the baseline, the
attacker's status codes, and the gateway replica's peak RSS growth.

    python -m benchmarks.hostile_clients [--repository DIR] [--version V] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


import orjson
import psutil

from serving.config import build_serve_config, gateway_user_config
from tests.support.harness import ServeProcess, gateway_replica
from serving.repository import ModelRepository

ROOT = Path(__file__).resolve().parent.parent

SENTENCE = {"name": "text", "datatype": "BYTES", "shape": [1],
            "data": ["The weather in Lyon is mild today."]}


def post(port: int, body: bytes, headers: dict | None = None, timeout: float = 60) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v2/models/minilm/infer", body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def attacks(port: int) -> dict:
    rows = [orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [50_000],
                                      "data": ["a"] * 50_000}]}),
            orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2000],
                                      "data": ["a short sentence"] * 2000}]})]
    member = gzip.compress(b"\0" * (64 << 20), 9)
    bomb = member * max(1, 900_000 // len(member))
    malformed = [
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"outputs":5}',
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1099511627776,1099511627776],'
        b'"data":["x"]}]}',
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],'
        b'"outputs":[{"name":"embedding","parameters":"yes"}]}',
        b'{"inputs":[{"name":"text","datatype":7,"shape":"1","data":{}}]}',
        b"{" * 2000,
    ]
    hangup_body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [32],
                                            "data": ["a sentence to be thrown away"] * 32}]})

    def hangup() -> str:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v2/models/minilm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  + str(len(hangup_body)).encode() + b"\r\n\r\n" + hangup_body)
        time.sleep(0.05)
        s.close()
        return "hung up"

    return {
        "rows": [lambda b=b: post(port, b) for b in rows],
        "gzip": [lambda: post(port, bomb, {"Content-Encoding": "gzip"})],
        "malformed": [lambda b=b: post(port, b) for b in malformed],
        "hangup": [hangup],
    }


async def steady(port: int, seconds: float, clients: int = 4) -> tuple[list[float], int]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/minilm/infer"
    body = orjson.dumps({"inputs": [SENTENCE]})
    lat, errors = [], 0
    deadline = time.monotonic() + seconds

    async def one(session):
        nonlocal errors
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, data=body) as r:
                await r.read()
                errors += r.status != 200
            lat.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        await asyncio.gather(*[one(s) for _ in range(clients)])
    return lat, errors


def measure(port: int, replica: psutil.Process, seconds: float, attack=None) -> dict:
    stop = threading.Event()
    codes: dict = {}
    base = replica.memory_info().rss
    peak = [base]

    def attacker():
        i = 0
        while not stop.is_set() and i < 400:  # bounded in count and by the round's time
            code = attack[i % len(attack)]()
            codes[code] = codes.get(code, 0) + 1
            i += 1
            time.sleep(0.05)

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], replica.memory_info().rss)
            time.sleep(0.02)

    threads = [threading.Thread(target=sampler)]
    if attack:
        threads.append(threading.Thread(target=attacker))
    for t in threads:
        t.start()
    try:
        lat, errors = asyncio.run(steady(port, seconds))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    lat.sort()
    return {"p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "requests": len(lat), "errors": errors, "attacker": codes,
            "rss_growth_mib": (peak[0] - base) / 2 ** 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", default="model-repository")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--version", type=int, default=None, help="minilm version [newest]")
    args = ap.parse_args()
    repo = ModelRepository(args.repository)
    v = args.version or repo.latest("minilm")
    work = Path(tempfile.mkdtemp(prefix="osv-hostile-"))
    doc = build_serve_config(str(Path(args.repository).resolve()), [("minilm", v)])
    gateway_user_config(doc)["max_body_bytes"] = 1_000_000
    server = ServeProcess(doc, work).start()
    try:
        port = server.port
        replica = gateway_replica(server.proc.pid)
        kinds = attacks(port)
        measure(port, replica, 2.0)  # warm up
        results: dict[str, list[dict]] = {"baseline": [], **{k: [] for k in kinds}}
        for r in range(args.rounds):
            for name in ["baseline", *kinds]:  # interleaved: every attack in every round
                results[name].append(measure(port, replica, args.seconds, kinds.get(name)))
                print(f"round {r + 1} {name}: {json.dumps(results[name][-1])}", flush=True)
        print(f"\nminilm:{v}, 4 steady clients, {args.seconds:g} s per measurement, medians of "
              f"{args.rounds} interleaved rounds")
        base = statistics.median(x["p99_ms"] for x in results["baseline"])
        print(f"{'attack':<10} {'p50 ms':>8} {'p99 ms':>8} {'p99/base':>9} {'errors':>7} "
              f"{'rss MiB':>8}  attacker's statuses")
        for name, rows in results.items():
            p50 = statistics.median(x["p50_ms"] for x in rows)
            p99 = statistics.median(x["p99_ms"] for x in rows)
            codes: dict = {}
            for x in rows:
                for c, n in x["attacker"].items():
                    codes[c] = codes.get(c, 0) + n
            print(f"{name:<10} {p50:8.1f} {p99:8.1f} {p99 / base:9.2f} "
                  f"{sum(x['errors'] for x in rows):7d} "
                  f"{max(x['rss_growth_mib'] for x in rows):8.1f}  {codes or '-'}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
