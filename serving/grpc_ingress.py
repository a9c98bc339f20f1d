"""The gateway replicas' gRPC server: the Open Inference Protocol's ``GRPCInferenceService``
(the servicer ``tritonclient`` generates; no protos of our own) on ``grpc.aio``, beside the
HTTP ingress and over the same :class:`~serving.gateway.Gateway`.

Infer requests become the REST request the gateway serves (:mod:`serving.grpc_codec`), so
decoding, validation, limits, batching, routing and metrics are the REST path's; an error
answers with the gRPC code of its REST status and the same message. What gRPC itself bounds,
from :mod:`serving.settings`:

- a message past the gateway's ``max_body_bytes`` (plus ``grpc_message_overhead_bytes``) is
  refused by gRPC with RESOURCE_EXHAUSTED before it is decoded; one within that slack but past
  ``max_body_bytes`` gets the REST path's 413 message, also RESOURCE_EXHAUSTED. gRPC fixes its
  receive limit when its server starts, so every message is checked again against the limit of
  the config in force: a lowered ``max_body_bytes`` applies at once, and a raised one replaces
  the server by one with the larger limit on the same port (:meth:`GrpcIngress.follow_body_limit`);
- connections past ``grpc_max_connections`` are closed as they are accepted (the client sees
  UNAVAILABLE and may retry), so idle connections cannot crowd out those in use;
- RPCs in progress past ``grpc_max_concurrent_rpcs`` get RESOURCE_EXHAUSTED at once, streams
  per connection past ``grpc_max_concurrent_streams`` wait (HTTP/2 flow control);
- a stream answers at most ``grpc_stream_max_inflight`` requests at once, in order, and reads
  no more until its oldest is answered, so a client that never reads holds only that much;
- a client that cancels, or whose deadline passes, cancels its request (it leaves the batch
  queue, counted ``cancelled`` as a REST disconnect is);
- idle connections close after ``grpc_idle_timeout_s``; keepalive pings faster than
  ``grpc_keepalive_min_interval_s`` cost the client its connection.

Draining follows the HTTP ingress: ``ServerReady`` fails for ``http_drain_accept_s``, then the
server stops accepting and RPCs in flight get ``http_drain_timeout_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .grpc_codec import error_message, infer_response, request_body, status_code
from .protocol.errors import InferenceError, ModelNotFound, PayloadTooLarge
from .settings import settings

log = logging.getLogger("ray.serve.optiserve.grpc")

#: metadata that would change how the gateway reads the body it is handed
_RESERVED = {"content-encoding", "content-type", "content-length",
             "inference-header-content-length"}


def _headers(context) -> dict[str, str]:
    """The call's metadata as the gateway's request headers (the sticky-routing header is
    read from here, as it is from an HTTP header)."""
    out: dict[str, str] = {}
    for k, v in context.invocation_metadata() or ():
        if isinstance(v, str) and k not in _RESERVED and not k.startswith(("grpc-", ":")):
            out[k] = v
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The OIP's gRPC methods over a gateway; the others answer UNIMPLEMENTED (the generated
    base class's behaviour)."""

    def __init__(self, gateway, statistics=None):
        self.gateway = gateway
        self.statistics = statistics
        self.draining = False

    # ---- health and metadata ----------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=not self.draining
                                      and await self.gateway.server_ready())

    async def ServerMetadata(self, request, context):
        doc = self.gateway.server_metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"],
                                         extensions=doc["extensions"])

    async def ModelReady(self, request, context):
        # Triton answers ready=false for a model it does not serve (tritonclient's
        # is_model_ready returns that boolean); REST answers its 4xx
        try:
            vs = self.gateway.version(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        except InferenceError as e:
            await self._abort(context, e)
        return pb.ModelReadyResponse(ready=await self.gateway.version_ready(vs))

    async def ModelMetadata(self, request, context):
        try:
            doc = self.gateway.model_metadata(request.name, request.version or None)
        except InferenceError as e:
            await self._abort(context, e)
        resp = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                        platform=doc["platform"])
        for kind in ("inputs", "outputs"):
            for t in doc[kind]:
                getattr(resp, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def ModelConfig(self, request, context):
        """The subset of Triton's model configuration its clients read."""
        try:
            doc = self.gateway.model_config(request.name, request.version or None)
        except InferenceError as e:
            await self._abort(context, e)
        cfg = mc.ModelConfig(name=doc["name"], platform=doc["platform"],
                             max_batch_size=doc["max_batch_size"])
        for kind in ("input", "output"):
            for t in doc[kind]:
                getattr(cfg, kind).add(name=t["name"], data_type=mc.DataType.Value(t["data_type"]),
                                       dims=t["dims"])
        db = doc["dynamic_batching"]
        cfg.dynamic_batching.max_queue_delay_microseconds = db["max_queue_delay_microseconds"]
        cfg.dynamic_batching.default_queue_policy.max_queue_size = \
            db["default_queue_policy"]["max_queue_size"]
        cfg.version_policy.specific.versions.extend(doc["version_policy"]["specific"]["versions"])
        for k, v in doc.get("parameters", {}).items():
            cfg.parameters[k].string_value = v["string_value"]
        return pb.ModelConfigResponse(config=cfg)

    async def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()
        for m in await self.gateway.repository_index():
            if request.ready and m["state"] != "READY":
                continue
            resp.models.add(name=m["name"], version=m["version"], state=m["state"])
        return resp

    async def ModelStatistics(self, request, context):
        """Triton's counts and durations per version, from what this gateway replica recorded
        (``name`` empty: every served model; ``version`` empty: every served version)."""
        gw = self.gateway
        try:
            if request.name:
                names = [request.name]
                gw.model(request.name)
                if request.version:
                    gw.version(request.name, request.version)
            else:
                names = sorted(gw.models)
        except InferenceError as e:
            await self._abort(context, e)
        resp = pb.ModelStatisticsResponse()
        tallies = self.statistics.versions if self.statistics is not None else {}
        for name in names:
            for v in sorted(gw.models[name].versions):
                if request.version and str(v) != request.version:
                    continue
                st = tallies.get((name, str(v)))
                ms = resp.model_stats.add(name=name, version=str(v))
                if st is None:
                    continue
                ms.last_inference = st.last_inference_ms
                ms.inference_count = st.inference_count
                ms.execution_count = st.execution_count
                s = ms.inference_stats
                s.success.count, s.success.ns = st.success_count, st.success_ns
                s.fail.count, s.fail.ns = st.fail_count, st.fail_ns
                s.queue.count, s.queue.ns = st.queue_count, st.queue_ns
        return resp

    # ---- inference ----------------------------------------------------------------------------
    async def _infer(self, request, headers: dict[str, str]):
        """(response, None) or (None, (code, message, trailing metadata)) for one request,
        through the gateway's REST infer path (counted and timed there)."""
        try:
            body, extra = request_body(request)
            refused = None
        except InferenceError as e:
            body, extra, refused = b"", {}, e

        async def read_body(limit: int) -> bytes:
            # called once the model and version are known, as a REST body is read: a bad
            # request is counted under the version it was for
            if refused is not None:
                raise refused
            if len(body) > limit:
                raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of "
                                      f"{limit} bytes")
            return body

        status, out, out_headers = await self.gateway.handle_infer(
            request.model_name, request.model_version or None, read_body, {**headers, **extra},
            protocol="grpc")
        if status == 200:
            return infer_response(out, out_headers), None
        trailing = tuple((k.lower(), v) for k, v in out_headers.items()
                         if k.lower() == "retry-after")
        return None, (status_code(status), error_message(out), trailing)

    async def ModelInfer(self, request, context):
        resp, err = await self._infer(request, _headers(context))
        if err is not None:
            code, message, trailing = err
            await context.abort(code, message, trailing_metadata=trailing)
        return resp

    async def ModelStreamInfer(self, request_iterator, context):
        """Answers in the order of the requests, up to ``grpc_stream_max_inflight`` of them in
        progress; a bad request's error is one message of the stream, which goes on.
        ``request_iterator`` yields the messages' bytes (see :func:`handlers`)."""
        headers = _headers(context)
        # a slot is taken before a request is read and given back once its answer is written:
        # at most the window's requests are in the gateway or waiting to be written
        window = asyncio.Semaphore(settings().grpc_stream_max_inflight)
        pending: asyncio.Queue = asyncio.Queue()
        failure: list[BaseException] = []

        async def read() -> None:
            messages = aiter(request_iterator)
            try:
                while True:
                    await window.acquire()
                    try:
                        data = await anext(messages)
                    except StopAsyncIteration:
                        break
                    try:
                        request = pb.ModelInferRequest.FromString(data)
                    except DecodeError as e:
                        request = pb.ModelInferRequest()
                        done = asyncio.get_running_loop().create_future()
                        done.set_result((None, (grpc.StatusCode.INVALID_ARGUMENT,
                                                _not_a(pb.ModelInferRequest, e), ())))
                        await pending.put((request, done))
                        continue
                    await pending.put((request, asyncio.ensure_future(
                        self._infer(request, headers))))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the stream broke while reading: answer what was read
                failure.append(e)
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await pending.get()
                if item is None:
                    break
                request, task = item
                resp, err = await task
                if err is None:
                    yield pb.ModelStreamInferResponse(infer_response=resp)
                else:
                    yield pb.ModelStreamInferResponse(
                        error_message=err[1], infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, model_version=request.model_version,
                            id=request.id))
                window.release()
            if failure:
                log.warning("a ModelStreamInfer stream ended reading its requests: %s",
                            failure[0])
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not None:
                    item[1].cancel()  # the client went away: its requests leave the queue

    async def _abort(self, context, e: InferenceError):
        await context.abort(status_code(e.status), str(e),
                            trailing_metadata=tuple((k.lower(), v)
                                                    for k, v in e.headers().items()))


def _not_a(cls, e: Exception) -> str:
    return f"the message is not a valid {cls.DESCRIPTOR.full_name}: {e}"


#: method -> (request class, response class, streaming) of what this server implements; any
#: other method of the service answers UNIMPLEMENTED (gRPC's own "Method not found!")
METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse, False),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse, False),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse, False),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse, False),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse, False),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse, False),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse, False),
    "ModelStreamInfer": (pb.ModelInferRequest, pb.ModelStreamInferResponse, True),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse, False),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse, False),
}
SERVICE = "inference.GRPCInferenceService"


def handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, as the generated ``add_GRPCInferenceServiceServicer_to_server``
    registers them except for one thing: messages arrive as bytes and are parsed here, so one
    that is not valid protobuf gets INVALID_ARGUMENT (gRPC's own deserializer answers INTERNAL,
    the code of a server fault)."""
    out = {}
    for name, (req_cls, resp_cls, streaming) in METHODS.items():
        fn = getattr(servicer, name)
        if streaming:
            out[name] = grpc.stream_stream_rpc_method_handler(
                fn, response_serializer=resp_cls.SerializeToString)
            continue

        async def unary(data, context, fn=fn, req_cls=req_cls):
            try:
                request = req_cls.FromString(data)
            except DecodeError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _not_a(req_cls, e))
            return await fn(request, context)

        out[name] = grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=resp_cls.SerializeToString)
    return out


class GrpcIngress:
    """The gRPC server of one gateway replica on ``host:port`` (shared by the replicas of a
    machine: gRPC sets SO_REUSEPORT). ``start()`` binds and serves on the running loop,
    ``drain()`` stops it without losing RPCs in flight."""

    def __init__(self, gateway, host: str, port: int, max_body_bytes: int, statistics=None):
        self.host, self.port = host, port
        self.settings = s = settings()
        self.servicer = InferenceServicer(gateway, statistics)
        self.max_message = max_body_bytes + s.grpc_message_overhead_bytes
        self._server: grpc.aio.Server | None = None
        self._drain_task: asyncio.Task | None = None
        #: servers replaced by one with a larger receive limit, finishing their RPCs
        self._retiring: set[asyncio.Task] = set()
        self._replacing = asyncio.Lock()
        self.stopped = False

    def options(self, max_message: int) -> list[tuple[str, int]]:
        """The gRPC server's channel arguments, for a receive limit of ``max_message``."""
        s = self.settings
        return [
            ("grpc.max_receive_message_length", max_message),
            # answers are as large as the outputs asked for; the client sets its own bound
            ("grpc.max_send_message_length", -1),
            ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
            # gRPC core's connection quota: one past it is closed as it is accepted
            ("grpc.max_allowed_incoming_connections", s.grpc_max_connections),
            ("grpc.max_connection_idle_ms", int(s.grpc_idle_timeout_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms",
             int(s.grpc_keepalive_min_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            # the replicas of a machine share the port, and a replacement server binds it
            # beside the one it replaces
            ("grpc.so_reuseport", 1),
        ]

    @property
    def draining(self) -> bool:
        return self.servicer.draining

    async def start(self) -> None:
        async with self._replacing:  # a new limit that comes meanwhile is followed after
            self._server = await self._serve(self.max_message)

    async def follow_body_limit(self, max_body_bytes: int) -> None:
        """Follow a new ``max_body_bytes`` of the gateway's config. A lower one needs nothing
        here (every message is checked against the config in force, RESOURCE_EXHAUSTED past
        it). gRPC cannot change a running server's receive limit, so past it a server with the
        larger one starts on the same port (SO_REUSEPORT) and the old one stops accepting and
        finishes its RPCs (``http_drain_timeout_s``); clients reconnect to the new one."""
        wanted = max_body_bytes + self.settings.grpc_message_overhead_bytes
        if wanted <= self.max_message or self.draining:
            return
        async with self._replacing:
            if wanted <= self.max_message or self._server is None or self.draining:
                return
            try:
                new = await self._serve(wanted)
            except OSError as e:  # the running server stays, with its smaller limit
                log.error("gRPC receive limit not raised to %d bytes: %s", wanted, e)
                return
            old, self._server, self.max_message = self._server, new, wanted
            task = asyncio.get_running_loop().create_task(
                old.stop(self.settings.http_drain_timeout_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.info("gRPC receive limit raised to %d bytes (max_body_bytes %d)", wanted,
                     max_body_bytes)

    async def _serve(self, max_message: int) -> grpc.aio.Server:
        server = grpc.aio.server(options=self.options(max_message),
                                 maximum_concurrent_rpcs=self.settings.grpc_max_concurrent_rpcs)
        methods = handlers(self.servicer)
        # registered as the generated add_GRPCInferenceServiceServicer_to_server does (the
        # registered path skips the per-call lookup of generic handlers)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        server.add_registered_method_handlers(SERVICE, methods)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {address}: {e}") from None
        if not bound:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        log.info("listening for OIP gRPC requests on %s", address)
        return server

    def drain(self, accept_s: float | None = None) -> asyncio.Task:
        """Start draining (once); the task ends when the server has stopped."""
        if self._drain_task is None:
            self.servicer.draining = True  # ServerReady fails from now on
            s = self.settings
            self._drain_task = asyncio.get_running_loop().create_task(
                self._drain(s.http_drain_accept_s if accept_s is None else accept_s))
        return self._drain_task

    async def _drain(self, accept_s: float) -> None:
        if self._server is None:
            return
        if accept_s > 0:
            await asyncio.sleep(accept_s)
        async with self._replacing:  # no replacement starts once the server is stopping
            with contextlib.suppress(Exception):
                await asyncio.gather(self._server.stop(self.settings.http_drain_timeout_s),
                                     *self._retiring)
        self.stopped = True
        log.info("gRPC server on %s:%d drained", self.host, self.port)


__all__ = ["GrpcIngress", "InferenceServicer"]
