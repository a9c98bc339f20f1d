"""A load generator for OIP endpoints: closed loop (N concurrent clients) or open loop (Poisson
arrivals at a fixed rate; latency counted from each request's scheduled time, so a slow server
cannot hide its queueing by slowing the client down)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.protocol import encode_infer_request


@dataclass
class BenchOptions:
    url: str
    model: str
    version: str | None = None
    concurrency: int | None = 8
    rate: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 1.0
    max_requests: int | None = None
    rows_per_request: int = 1
    binary: bool = True
    timeout_s: float = 30.0
    max_outstanding: int = 10_000
    #: http (OIP REST) or grpc (OIP gRPC: ``url`` is host:port)
    protocol: str = "http"
    #: with grpc: ModelStreamInfer, one stream per request in flight (perf_analyzer's
    #: ``--streaming``), not one ModelInfer call per request
    streaming: bool = False


@dataclass
class BenchResult:
    mode: str
    duration_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    throughput_rps: float
    rows_per_s: float
    latency_ms: dict[str, float]
    offered_rate: float | None = None
    concurrency: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


#: files ``--input-file DIR`` sends to an image version, by suffix: their data-URL media type
IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


def load_inputs(path: str | None, metadata: dict, json_body: bool = False
                ) -> list[dict[str, np.ndarray]]:
    """Request inputs: a directory's images (image versions), one text per line (text models),
    ``.npz`` rows, tabular rows (``.csv`` or ``.npy``, single 2-D input models), or the built-in
    sentences / random tensors."""
    inputs = metadata["inputs"]
    if path and Path(path).is_dir():
        return _image_rows(Path(path), metadata, json_body)
    if len(inputs) == 1 and inputs[0]["datatype"] == "BYTES":
        if path:
            texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        else:
            from importlib.resources import files

            data = files("optimizers") / "data" / "minilm_validation.txt"
            texts = [line.strip() for line in data.read_text().splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{path} holds no text lines")
        # a row shaped as the model declares it: [1] for [-1], [1, 1] for [-1, 1] (Triton's
        # text models), or the server refuses every request
        shape = [1] * max(1, len(inputs[0]["shape"]))
        return [{inputs[0]["name"]: np.array([t], dtype=object).reshape(shape)} for t in texts]
    if not path:
        rng = np.random.default_rng(0)
        rows = []
        for _ in range(64):
            row = {}
            for t in inputs:
                # one row where the first dimension is variable (the batch dimension); a model
                # without one (Triton's max_batch_size 0: [3, 5]) gets its shape as declared
                dims = t["shape"] or [-1]
                shape = [1 if _batched(t) else dims[0], *[d if d > 0 else 8 for d in dims[1:]]]
                dt = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64,
                      "INT64": np.int64, "INT32": np.int32}.get(t["datatype"], np.float32)
                row[t["name"]] = rng.standard_normal(shape).astype(dt)
            rows.append(row)
        return rows
    if Path(path).suffix.lower() in (".csv", ".npy"):
        return _table_rows(path, inputs)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    # the file's first axis counts requests: each one's row keeps a batch dimension of 1 for the
    # inputs that have one, and is the input's whole tensor for those that do not
    batched = {t["name"]: _batched(t) for t in inputs}
    return [{k: v[i:i + 1] if batched.get(k, True) else v[i] for k, v in arrays.items()}
            for i in range(n)]


def _batched(spec: dict) -> bool:
    """Whether an input's first dimension is variable, the one rows are stacked on (Triton
    declares a fixed first dimension only for models without batching, max_batch_size 0)."""
    return not spec["shape"] or spec["shape"][0] < 0


def check_rows(metadata: dict, rows: int) -> None:
    """``rows`` per request need every input to have a batch dimension to stack them on."""
    fixed = [t for t in metadata["inputs"] if not _batched(t)]
    if rows > 1 and fixed:
        raise ValueError(f"--rows {rows}: input {fixed[0]['name']!r} of model "
                         f"{metadata.get('name')!r} has no batch dimension (shape "
                         f"{fixed[0]['shape']}): one tensor per request, --rows 1")


def _image_rows(folder: Path, metadata: dict, json_body: bool) -> list[dict[str, np.ndarray]]:
    """One request row per image file of ``folder`` (its encoded bytes, as the server decodes
    them; a base64 data URL when the body is JSON)."""
    import base64

    inputs = metadata["inputs"]
    image = (metadata.get("parameters") or {}).get("image_preprocessing")
    if image is not None:
        name = image["image_input"]
    elif len(inputs) == 1 and inputs[0]["datatype"] == "BYTES":  # gRPC metadata: no parameters
        name = inputs[0]["name"]
    else:
        raise ValueError(f"{folder} is a directory of images; model {metadata.get('name')!r} "
                         f"takes {', '.join(i['name'] for i in inputs)}, not encoded images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    rows = []
    for f in files:
        data = f.read_bytes()
        if json_body:
            data = (f"data:image/{IMAGE_SUFFIXES[f.suffix.lower()]};base64,"
                    + base64.b64encode(data).decode())
        rows.append({name: np.array([data], dtype=object)})
    return rows


def _table_rows(path: str, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
    """One request row per CSV/NPY row, checked against the model's single 2-D input."""
    from optimizers.rows import read_rows

    spec = inputs[0]
    if len(inputs) != 1 or len(spec["shape"]) != 2 or not _batched(spec):
        raise ValueError(f"{path}: CSV/NPY rows fit models with one 2-D input (rows x features);"
                         f" this one takes {', '.join(i['name'] for i in inputs)} "
                         f"{spec['shape']}; use .npz")
    features = spec["shape"][1] if spec["shape"][1] > 0 else None
    rows, _ = read_rows(path, features)
    dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}.get(spec["datatype"])
    if dtype is None:
        raise ValueError(f"{path}: input {spec['name']!r} is {spec['datatype']}; CSV/NPY rows "
                         "are sent as float tensors")
    rows = rows.astype(dtype)
    return [{spec["name"]: rows[i:i + 1]} for i in range(len(rows))]


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def summarize(mode: str, samples: list[float], errors: Counter, elapsed: float, rows: int,
              opts: BenchOptions) -> BenchResult:
    lat = np.asarray(samples) * 1000.0
    pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 95, 99)} if len(lat) else {}
    if len(lat):
        pct.update(mean=float(lat.mean()), max=float(lat.max()))
    ok = len(samples)
    total = ok + sum(errors.values())
    return BenchResult(
        mode=mode, duration_s=elapsed, requests=total, ok=ok, errors=dict(errors),
        throughput_rps=ok / elapsed if elapsed else 0.0,
        rows_per_s=ok * rows / elapsed if elapsed else 0.0, latency_ms=pct,
        offered_rate=opts.rate, concurrency=opts.concurrency if mode == "closed" else None,
    )


def grpc_request(model: str, version: str | None, arrays: dict[str, np.ndarray]) -> bytes:
    """A serialized OIP gRPC ModelInferRequest with raw contents (what tritonclient sends)."""
    import struct

    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model, model_version=version or "")
    for name, arr in arrays.items():
        if arr.dtype == object or arr.dtype.kind in "SU":
            dt = "BYTES"
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (
                x.encode() if isinstance(x, str) else bytes(x) for x in arr.ravel()))
        else:
            dt = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
                  np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
                  np.dtype(np.int32): "INT32"}[arr.dtype]
            raw = np.ascontiguousarray(arr).tobytes()
        req.inputs.add(name=name, datatype=dt, shape=list(arr.shape))
        req.raw_input_contents.append(raw)
    return req.SerializeToString()


class _HttpSender:
    def __init__(self, opts: BenchOptions, chunks):
        import aiohttp

        path = f"/v2/models/{opts.model}" + (f"/versions/{opts.version}" if opts.version else "")
        self.url = opts.url.rstrip("/") + path + "/infer"
        self.bodies = [encode_infer_request(c, binary=opts.binary, binary_output=opts.binary)
                       for c in chunks]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=opts.timeout_s))

    async def send(self, i: int):
        import aiohttp

        body, headers = self.bodies[i % len(self.bodies)]
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except asyncio.TimeoutError:
            return "timeout"
        except aiohttp.ClientError as e:
            return f"conn_error:{type(e).__name__}"

    async def close(self):
        await self.session.close()


#: what ``--protocol openai`` sends: text, as the openai client's ``embeddings.create`` does
OPENAI_INPUTS = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}]}


class _OpenAISender(_HttpSender):
    """``POST /v1/embeddings`` as the openai client sends it: JSON, ``input`` a list of the
    request's strings, ``model`` the name (``name:version`` when pinned). Works against any
    OpenAI-compatible embeddings server."""

    def __init__(self, opts: BenchOptions, chunks):
        import aiohttp

        model = opts.model + (f":{opts.version}" if opts.version else "")
        self.url = opts.url.rstrip("/") + "/v1/embeddings"
        headers = {"content-type": "application/json"}
        self.bodies = []
        for c in chunks:
            texts = [x.decode() if isinstance(x, bytes) else str(x)
                     for arr in c.values() for x in arr.ravel()]
            self.bodies.append((json.dumps({"model": model, "input": texts}).encode(), headers))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=opts.timeout_s))


class _GrpcSender:
    """Pre-serialized requests on one HTTP/2 channel (gRPC multiplexes the clients' calls),
    as perf_analyzer -i grpc sends them."""

    def __init__(self, opts: BenchOptions, chunks):
        self.timeout_s = opts.timeout_s
        self.target = opts.url.split("://", 1)[-1]
        self.bodies = [grpc_request(opts.model, opts.version, c) for c in chunks]
        self.channel = self.new_channel()
        self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    def new_channel(self):
        """A channel with a connection of its own (channels to one target otherwise share
        one: gRPC's global subchannel pool)."""
        import grpc

        return grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
            ("grpc.use_local_subchannel_pool", 1)])

    async def send(self, i: int):
        import grpc

        try:
            await self.call(self.bodies[i % len(self.bodies)], timeout=self.timeout_s)
            return 200
        except grpc.aio.AioRpcError as e:
            return "timeout" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else e.code().name

    async def close(self):
        await self.channel.close()


class _GrpcStreamSender(_GrpcSender):
    """ModelStreamInfer, as ``perf_analyzer -i grpc --streaming`` sends it: each request in
    flight has a bidirectional stream of its own, one request at a time on it (a closed loop's
    client keeps reusing one). gRPC sets up and tears down no call per request, which is most of
    a small request's cost on a Python server. An answer that carries ``error_message`` counts
    as ``stream_error`` (a stream's errors have no status code); a stream that breaks or passes
    the timeout is dropped, and the next request opens another.

    A stream holds one of its connection's HTTP/2 streams for as long as it is open, and a
    server caps them per connection (optiserve: ``grpc_max_concurrent_streams``, 100; HTTP/2
    servers commonly 100): past the cap a new stream would wait for one to close, which a
    closed loop never does. So each channel (its own connection) carries at most
    ``STREAMS_PER_CHANNEL`` streams, and more clients open more channels."""

    METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
    STREAMS_PER_CHANNEL = 100

    def __init__(self, opts: BenchOptions, chunks):
        super().__init__(opts, chunks)
        self.channels = [self.channel]
        self.idle: list = []
        #: open stream -> its channel
        self.streams: dict = {}

    def _open(self):
        held = list(self.streams.values())
        channel = next((c for c in self.channels if held.count(c) < self.STREAMS_PER_CHANNEL),
                       None)
        if channel is None:
            channel = self.new_channel()
            self.channels.append(channel)
        call = channel.stream_stream(self.METHOD)()
        self.streams[call] = channel
        return call

    async def send(self, i: int):
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        call = self.idle.pop() if self.idle else self._open()

        async def roundtrip():
            await call.write(self.bodies[i % len(self.bodies)])
            return await call.read()

        try:
            answer = await asyncio.wait_for(roundtrip(), self.timeout_s)
        except TimeoutError:
            self._drop(call)
            return "timeout"
        except grpc.aio.AioRpcError as e:
            self._drop(call)
            return "timeout" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else e.code().name
        if answer is grpc.aio.EOF:  # the server ended the stream
            self._drop(call)
            return "stream_closed"
        self.idle.append(call)
        if pb.ModelStreamInferResponse.FromString(answer).error_message:
            return "stream_error"
        return 200

    def _drop(self, call) -> None:
        call.cancel()
        self.streams.pop(call, None)

    async def close(self):
        for call in self.streams:
            call.cancel()
        for channel in self.channels:
            await channel.close()


async def run_bench(opts: BenchOptions, inputs: list[dict[str, np.ndarray]],
                    on_progress=lambda done_s, ok, err: None) -> BenchResult:
    k = opts.rows_per_request
    chunks = [_stack([inputs[(i + j) % len(inputs)] for j in range(k)])
              for i in range(0, max(len(inputs), k), k)]
    senders = {"http": _HttpSender, "grpc": _GrpcSender, "openai": _OpenAISender}
    if opts.protocol not in senders:
        raise ValueError(f"protocol must be http, grpc or openai, got {opts.protocol!r}")
    if opts.streaming:
        if opts.protocol != "grpc":
            raise ValueError("streaming is gRPC's ModelStreamInfer: use it with protocol grpc")
        senders["grpc"] = _GrpcStreamSender
    sender = senders[opts.protocol](opts, chunks)
    samples: list[float] = []
    errors: Counter = Counter()
    counter = 0
    try:
        t_start = time.perf_counter()
        t_measure = t_start + opts.warmup_s
        t_end = t_measure + opts.duration_s

        async def one(i: int, t_sched: float) -> None:
            status = await sender.send(i)
            now = time.perf_counter()
            if t_sched < t_measure or now > t_end + opts.timeout_s:
                return
            if status == 200:
                samples.append(now - t_sched)
            else:
                errors[str(status)] += 1

        def next_body() -> int:
            nonlocal counter
            counter += 1
            return counter

        def budget_left() -> bool:
            return opts.max_requests is None or counter < opts.max_requests

        async def reporter():
            while True:
                await asyncio.sleep(0.25)
                on_progress(max(0.0, time.perf_counter() - t_measure), len(samples),
                            sum(errors.values()))

        rep = asyncio.create_task(reporter())
        try:
            if opts.rate:
                mode = "open"
                rng = random.Random(1)
                pending: set[asyncio.Task] = set()
                t_next = time.perf_counter()
                while t_next < t_end and budget_left():
                    delay = t_next - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if len(pending) >= opts.max_outstanding:
                        errors["client_overflow"] += 1
                    else:
                        task = asyncio.create_task(one(next_body(), t_next))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    t_next += rng.expovariate(opts.rate)
                if pending:
                    await asyncio.wait(pending, timeout=opts.timeout_s)
            else:
                mode = "closed"

                async def worker():
                    while time.perf_counter() < t_end and budget_left():
                        await one(next_body(), time.perf_counter())

                await asyncio.gather(*[worker() for _ in range(opts.concurrency or 1)])
        finally:
            rep.cancel()
        elapsed = min(time.perf_counter(), t_end) - t_measure
    finally:
        await sender.close()
    return summarize(mode, samples, errors, max(elapsed, 1e-9), k, opts)


def fetch_metadata(url: str, model: str, version: str | None = None,
                   protocol: str = "http") -> dict:
    """The model's OIP metadata (its inputs shape the requests), over the protocol benched
    (OpenAI's embeddings API has none: text is sent)."""
    if protocol == "openai":
        return OPENAI_INPUTS
    if protocol == "grpc":
        import tritonclient.grpc as tg
        from tritonclient.utils import InferenceServerException

        try:
            meta = tg.InferenceServerClient(url.split("://", 1)[-1]).get_model_metadata(
                model, version or "", as_json=True, client_timeout=10)
        except InferenceServerException as e:
            raise RuntimeError(f"{url} answered {e.status()}: {e.message()}") from None
        for t in meta["inputs"]:  # int64 dimensions come as strings in protobuf's JSON
            t["shape"] = [int(d) for d in t["shape"]]
        return meta
    import urllib.error
    import urllib.request

    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}{path} answered {e.code}: {e.read().decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
