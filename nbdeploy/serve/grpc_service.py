"""V2 over gRPC: ``inference.GRPCInferenceService`` (the Open Inference Protocol's gRPC service,
as tritonclient.grpc, KServe and perf_analyzer speak it) on a second port of the same process.

It runs on uvicorn's event loop (``grpc.aio``) and answers from the same ``ServerState`` as
HTTP, so both share the batchers, the memory budget, ``--max-concurrency``, the deadline and the
metrics. ServerLive, ServerReady and ServerMetadata are open; ModelReady, ModelMetadata and
ModelInfer need the bearer token in the ``authorization`` metadata (``Bearer <token>``), else
UNAUTHENTICATED. Other methods of the service (statistics, shared memory, repository control)
answer UNIMPLEMENTED.

ModelInfer takes tensors as typed ``contents`` or as ``raw_input_contents`` (all inputs one way)
and, like Triton, always answers in ``raw_output_contents``. Errors are gRPC status codes with the
message the HTTP routes would give (``STATUS_CODES`` maps the HTTP status).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from . import __version__
from ._proto import service_pb2 as pb
from .access import LineWriter
from .dataplane import ServerState
from .errors import ClientError, bad_request, quote
from .limits import STRING_BYTES, Reservation, decoded_bytes, output_cost
from .metrics import LATENCY_BUCKETS, Counter, Histogram
from .model import ModelVersion
from .protocol import (
    DATATYPES,
    MAX_DIMS,
    MAX_SHAPE_PRODUCT,
    InferRequest,
    RequestedOutput,
    _object_array,
    _split_bytes,
    _to_binary,
    datatype_of,
)

log = logging.getLogger("nbdeploy.serve")
access_log = logging.getLogger("nbdeploy.serve.access")

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "nbdeploy"
EXTENSIONS = ["classification"]
HEALTH_METHODS = frozenset({"ServerLive", "ServerReady"})
# Calls in progress beyond --max-concurrency before gRPC itself answers RESOURCE_EXHAUSTED.
EXTRA_CALLS = 16

# The HTTP status a ClientError carries, as a gRPC status code.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Which InferTensorContents field carries each datatype (FP16 has none: raw only).
CONTENT_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy type each contents field holds on the wire.
FIELD_DTYPES: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
ALL_FIELDS = (*FIELD_DTYPES, "bytes_contents")

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status code for an HTTP status (other 4xx: INVALID_ARGUMENT, 5xx: INTERNAL)."""
    found = STATUS_CODES.get(status)
    if found is not None:
        return found
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


class GrpcServer:
    """The gRPC service of one server process, bound to ``host:port`` (0: any free port)."""

    def __init__(
        self, state: ServerState, host: str, port: int, *, log_health: bool = False
    ) -> None:
        self.state = state
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.host = host
        self.port = port
        self.log_health = log_health
        self.server: grpc.aio.Server | None = None
        self.lines = LineWriter(access_log)
        registry = state.metrics.registry
        self.requests = Counter(
            "nbdeploy_grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "nbdeploy_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to sending its response.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def start(self) -> int:
        """Listen and answer; the port bound. OSError when the address cannot be bound."""
        options = [
            # Without this, a second server on the same port would bind it silently.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.state.settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        # A call's message is read before the handler admits it (--max-concurrency): bound
        # how many can be read at once, leaving room for health and metadata calls.
        concurrency = self.state.settings.max_concurrency + EXTRA_CALLS
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=concurrency)
        server.add_generic_rpc_handlers((self._handlers(),))
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for gRPC on {self.address}: {exc} (address already in use,"
                " or not available)"
            ) from None
        if not port:  # older grpcio report a failed bind as port 0
            raise OSError(f"cannot listen for gRPC on {self.address}: address already in use")
        await server.start()
        self.server = server
        self.port = port
        log.info("listening for gRPC (V2) on %s:%d", self.host, port)
        return port

    async def stop(self, grace: float) -> None:
        """Refuse new calls and give the ones in flight ``grace`` seconds to finish."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Handler, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._guarded(name, handler),
                    request_deserializer=request_type.FromString,
                    response_serializer=_serialize,
                )
                for name, (handler, request_type) in methods.items()
            },
        )

    def _guarded(self, method: str, handler: Handler) -> Handler:
        """Client mistakes as their status code, anything else as a logged INTERNAL; every call
        counted, and logged (health calls only with ``log_health``)."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.INTERNAL
            try:
                response = await handler(request, context)
                code = grpc.StatusCode.OK
                return response
            except ClientError as exc:
                code = grpc_code(exc.status)
                if exc.headers:
                    context.set_trailing_metadata(
                        tuple((key.lower(), value) for key, value in exc.headers.items())
                    )
                await context.abort(code, exc.message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("unexpected error on gRPC %s", method)
                await context.abort(
                    code,
                    f"internal server error ({type(exc).__name__}: {exc}); see the server log",
                )
            finally:
                elapsed = time.perf_counter() - started
                self.requests.labels(method, code.name).inc()
                self.latency.labels(method).observe(elapsed)
                if self.log_health or method not in HEALTH_METHODS:
                    self.lines.info(
                        f'{context.peer()} "gRPC {method}" {code.name} {elapsed * 1000:.1f}ms'
                    )

        return call

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Require ``authorization: Bearer <token>`` metadata when the server has a token."""
        token = self.state.settings.token
        if not token:
            return
        given = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, secret = given.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise ClientError(
                401, "this endpoint needs an 'authorization: Bearer <token>' metadata entry"
            )
        if not hmac.compare_digest(secret.strip().encode(), token.encode()):
            raise ClientError(401, "the bearer token is not valid for this endpoint")

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        try:
            self.state.lookup(request.name, request.version or None)
        except ClientError as exc:
            if exc.status != 503:
                raise
            return pb.ModelReadyResponse(ready=False)  # still loading
        return pb.ModelReadyResponse(ready=self.state.ready)

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        state = self.state
        model = state.lookup(request.name, request.version or None)
        meta = model.metadata(state.versions(model.name), state.batching_parameters(model))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**info) for info in meta["inputs"]],
            outputs=[tensor(**info) for info in meta["outputs"]],
        )

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        self._authorize(context)
        state = self.state
        with state.admit() as reservation:
            async with _deadline(state.settings.request_timeout_s):
                return await self._infer(request, reservation, started)

    async def _infer(self, request: Any, reservation: Reservation, started: float) -> Any:
        state = self.state
        version = request.model_version or None
        with (
            state.take(request.model_name, version) as served,
            state.answering(served, started),
        ):
            model = served.model
            size = request.ByteSize()
            reservation.resize(size + _input_bound(request), "decoding this request")
            decoded = await reservation.work(size, decode_request, request)
            wanted = model.check_outputs(decoded.outputs, True)
            reservation.resize(
                size + _estimate(model, decoded, wanted, served.batcher.enabled), "this request"
            )
            return await state.infer(
                served, decoded, reservation, routed=version is None, encode=encode_response
            )


def decode_request(request: Any) -> InferRequest:
    """The tensors of a ModelInferRequest: raw inputs viewed in place, typed contents converted
    to the input's datatype; a 400 naming the first thing that does not add up."""
    if not request.inputs:
        raise bad_request("the request needs at least one input tensor")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs: give"
            " every input there, in order, or none (typed contents)"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype, shape = _input_head(tensor, index)
        if name in inputs:
            raise bad_request(f"input {quote(name)} appears more than once in the request")
        if raw:
            if _has_contents(tensor.contents):
                raise bad_request(
                    f"input {quote(name)} has typed contents but the request uses"
                    " raw_input_contents: send every input one way"
                )
            inputs[name] = _from_raw(name, datatype, shape, raw[index])
        else:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
        datatypes[name] = datatype
    return InferRequest(
        id=request.id or None,
        inputs=inputs,
        datatypes=datatypes,
        outputs=_requested_outputs(request.outputs),
        binary_output=True,
    )


def encode_response(
    model: ModelVersion,
    request_id: Any,
    wanted: list[RequestedOutput],
    results: dict[str, np.ndarray],
) -> Any:
    """A ModelInferResponse with every output in ``raw_output_contents``, as Triton answers."""
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id or ""
    )
    for out in wanted:
        array = results[out.name]
        if out.classification:
            array = model.classify(out.name, array, out.classification)
        datatype = datatype_of(array)
        response.outputs.add(name=out.name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(bytes(_to_binary(array, datatype)))
    return response


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _input_head(tensor: Any, index: int) -> tuple[str, str, tuple[int, ...]]:
    name = tensor.name
    if not name:
        raise bad_request(f"inputs[{index}] needs a name")
    datatype = tensor.datatype
    if datatype not in DATATYPES:
        raise bad_request(
            f"input {quote(name)} has datatype {quote(datatype)}; supported datatypes are"
            f" {', '.join(DATATYPES)}"
        )
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise bad_request(f"input {quote(name)} has shape {list(shape)}: dimensions must be >= 0")
    if len(shape) > MAX_DIMS or math.prod(d for d in shape if d) > MAX_SHAPE_PRODUCT:
        raise bad_request(
            f"input {quote(name)} has shape {quote(list(shape))}: at most {MAX_DIMS} dimensions"
            " whose non-zero sizes multiply to at most 2**56"
        )
    return name, datatype, shape


def _has_contents(contents: Any) -> bool:
    return any(len(getattr(contents, field)) for field in ALL_FIELDS)


def _from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = _split_bytes(name, raw, 0, len(raw))
        if len(elements) != count:
            raise bad_request(
                f"input {quote(name)} has shape {list(shape)} ({count} elements) but its raw"
                f" contents hold {len(elements)} BYTES elements"
            )
        return _object_array(elements, shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise bad_request(
            f"input {quote(name)} has shape {list(shape)} of {datatype}, which is"
            f" {count * dtype.itemsize} bytes, but its raw contents hold {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = CONTENT_FIELDS.get(datatype)
    if field is None:
        raise bad_request(
            f"input {quote(name)} is {datatype}, which has no typed contents field: send it in"
            " raw_input_contents"
        )
    elsewhere = [other for other in ALL_FIELDS if other != field and len(getattr(contents, other))]
    if elsewhere:
        raise bad_request(
            f"input {quote(name)} is {datatype}, which goes in contents.{field}, but the request"
            f" fills contents.{elsewhere[0]}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise bad_request(
            f"input {quote(name)} has shape {list(shape)} ({count} elements) but"
            f" contents.{field} holds {len(values)}"
        )
    if datatype == "BYTES":
        try:
            return _object_array([value.decode("utf-8") for value in values], shape)
        except UnicodeDecodeError:
            raise bad_request(
                f"a BYTES element of input {quote(name)} is not valid UTF-8"
            ) from None
    array = np.fromiter(values, dtype=FIELD_DTYPES[field], count=count)
    target = DATATYPES[datatype]
    if target != array.dtype and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise bad_request(
                f"input {quote(name)} holds values outside the {datatype} range"
                f" [{info.min}, {info.max}]"
            )
    return array.astype(target, copy=False).reshape(shape)


def _requested_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if not outputs:
        return None
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in outputs:
        name = output.name
        if name in seen:
            raise bad_request(f"output {quote(name)} is requested more than once")
        seen.add(name)
        classes = 0
        if "classification" in output.parameters:
            parameter = output.parameters["classification"]
            if parameter.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
                raise bad_request(
                    f"the classification parameter of output {quote(name)} must be an integer"
                )
            classes = parameter.int64_param or parameter.uint64_param
            if classes < 0:
                raise bad_request(
                    f"classification of output {quote(name)} must be a non-negative integer,"
                    f" got {classes}"
                )
        requested.append(RequestedOutput(name, True, classes))
    return requested


def _input_bound(request: Any) -> int:
    """Bytes the decoded inputs may take beyond the message: typed contents become new arrays,
    BYTES elements Python strings (raw numeric inputs are viewed in place)."""
    total = 0
    raw = request.raw_input_contents
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype == "BYTES":
            given = len(raw[index]) // 4 if raw and index < len(raw) else _content_count(tensor)
            total += given * STRING_BYTES
        elif not raw:
            dtype = DATATYPES.get(tensor.datatype, np.dtype(np.float64))
            total += _content_count(tensor) * (8 + dtype.itemsize)
    return total


def _content_count(tensor: Any) -> int:
    return sum(len(getattr(tensor.contents, field)) for field in ALL_FIELDS)


def _estimate(
    model: ModelVersion, decoded: InferRequest, wanted: list[RequestedOutput], batching: bool
) -> int:
    """Bytes the request holds once decoded: its inputs (copied once more when merged into a
    batch) and its outputs, as arrays and as the response's raw contents."""
    arrays = list(decoded.inputs.values())
    inputs = decoded_bytes(arrays) * (2 if batching else 1)
    first = arrays[0].shape
    rows = first[0] if first else 1
    infos = {info.name: info for info in model.outputs}
    outputs = [
        (infos[out.name].datatype, infos[out.name].shape, True, out.classification)
        for out in wanted
    ]
    return inputs + output_cost(outputs, rows, sum(array.size for array in arrays))


@contextlib.asynccontextmanager
async def _deadline(seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise ClientError(
            504,
            f"the request was not answered within {seconds:g} s (--request-timeout-s); send"
            " fewer rows per request or retry later",
        ) from None
