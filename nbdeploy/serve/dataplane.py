"""The data plane: loaded versions, their batchers, and one inference call from decoded request
to encoded response.

Without a routing file every discovered version is loaded once and unversioned routes use the
default version. With one, a :class:`~nbdeploy.serve.traffic.Router` owns the versions and picks
the one that answers each unversioned request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from starlette.requests import Request

from .batching import Batcher
from .errors import ClientError, busy, clip
from .limits import (
    JSON_VALUE_BYTES,
    STRING_BYTES,
    MemoryBudget,
    Reservation,
    json_values,
    output_cost,
)
from .metrics import Metrics, Readings
from .model import ModelVersion, Repository, RepositoryError, load_repository
from .monitoring import DriftCollector, Observer, RequestLog, Sampler
from .protocol import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    RequestHeader,
    build_request,
    encode_response,
    read_header,
)
from .routing import RoutingError
from .served import Served
from .settings import Settings
from .traffic import Router

log = logging.getLogger("nbdeploy.serve")

Encoded = tuple[bytes, dict[str, str], str]
# Makes a response from (model, request id, outputs wanted, their arrays); see ServerState.infer.
Encoder = Callable[[ModelVersion, Any, list[RequestedOutput], dict[str, np.ndarray]], Any]


class ServerState:
    """Loaded models, their batchers, and whether the server is ready or stopping."""

    def __init__(
        self, settings: Settings, metrics: Metrics, request_log: RequestLog | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sampler = Sampler(metrics)
        self.observer = Observer(metrics, request_log, settings.log_requests)
        metrics.registry.register(DriftCollector(self.all_served))
        self.repository: Repository | None = None
        self.served: dict[tuple[str, int], Served] = {}
        self.router: Router | None = None
        self.stopping = False
        self.failure: str | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self.budget = MemoryBudget(settings.memory_budget_bytes, settings.request_workers)
        self.in_flight = 0
        metrics.registry.register(
            Readings(
                {
                    "nbdeploy_requests_in_flight": (
                        "Infer requests admitted and not yet answered (at most --max-concurrency).",
                        lambda: self.in_flight,
                    ),
                    "nbdeploy_memory_budget_used_bytes": (
                        "Bytes of the memory budget held by the requests in flight and by"
                        " worker threads still running for them.",
                        lambda: self.budget.used,
                    ),
                    "nbdeploy_memory_budget_bytes": (
                        "The memory budget the requests in flight share (--memory-budget-bytes).",
                        lambda: self.budget.total,
                    ),
                }
            )
        )

    @property
    def ready(self) -> bool:
        return self._current_repository() is not None and not self.stopping

    async def load(self) -> None:
        """Load and warm every model off the event loop, then start one batcher per version."""
        started = time.perf_counter()
        try:
            if self.settings.routing_file is not None:
                await self._apply_routing()
            else:
                await self._load_all()
        except (RepositoryError, RoutingError) as exc:
            self._fail(str(exc))
            return
        except Exception as exc:
            log.exception("loading the model repository failed")
            self._fail(f"loading the model repository failed: {exc}")
            return
        repository = self._current_repository()
        assert repository is not None
        log.info(
            "ready: %d model version(s) loaded and warmed up in %.2f s; default versions %s",
            sum(1 for _ in repository),
            time.perf_counter() - started,
            repository.defaults,
        )

    async def _load_all(self) -> None:
        settings = self.settings
        repository = await asyncio.to_thread(
            load_repository, settings.found, settings.threads, settings.default_version
        )
        for model in repository:
            self.served[(model.name, model.version)] = Served(model, self.start_batcher(model))
        self.repository = repository

    async def _apply_routing(self) -> None:
        assert self.settings.routing_file is not None
        router = Router(
            self.settings.routing_file,
            self.settings.repository,
            self.settings.threads,
            self.start_batcher,
            self.settings.state_dir,
        )
        await router.start()
        self.router = router

    def start_batcher(self, model: ModelVersion) -> Batcher:
        """A running batcher for ``model``, configured from the command line."""
        settings = self.settings
        batcher = Batcher(
            model,
            self.metrics,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            enabled=settings.batching,
            inline_s=settings.inline_run_s,
        )
        batcher.start()
        log.info(
            "%s v%d: dynamic batching %s",
            model.name,
            model.version,
            f"on (up to {settings.max_batch_size} rows, {settings.max_queue_delay_ms} ms)"
            if batcher.enabled
            else "off",
        )
        return batcher

    def _fail(self, message: str) -> None:
        log.error("cannot serve: %s", message)
        self.failure = message
        self.on_failure()

    async def close(self) -> None:
        """Stop answering ready and let every batcher finish what is queued."""
        self.stopping = True
        if self.router is not None:
            await self.router.close()
        for served in self.served.values():
            await served.batcher.close()

    def all_served(self) -> Iterable[Served]:
        """Every loaded version (with a routing file: the versions it names right now)."""
        if self.router is not None:
            table = self.router.table
            return list(table.served.values()) if table is not None else []
        return list(self.served.values())

    def model_name(self, request: Request) -> str:
        """The model an admin view is about: ``?model=``, else the only (or routed) one."""
        names = sorted(self.settings.found)
        asked = request.query_params.get("model")
        if asked is None:
            if len(names) == 1:
                return names[0]
            raise ClientError(400, f"this server serves {names}: add ?model=NAME")
        if asked not in names:
            raise ClientError(404, f"no model {clip(repr(asked))}; this server serves {names}")
        return asked

    def _current_repository(self) -> Repository | None:
        return self.router.repository if self.router is not None else self.repository

    def _repository(self) -> Repository:
        repository = self._current_repository()
        if repository is None:
            raise ClientError(503, "the server is still loading its models; retry shortly")
        return repository

    def lookup(self, name: str, version: str | None) -> ModelVersion:
        """The version a route names (unversioned: the default, or the stable one)."""
        return self._repository().lookup(name, version)

    def versions(self, name: str) -> list[int]:
        return self._repository().versions(name)

    def _served(self, model: ModelVersion) -> Served:
        if self.router is not None:
            return self.router.served(model.version)
        return self.served[(model.name, model.version)]

    def batching_parameters(self, model: ModelVersion) -> dict[str, Any]:
        batcher = self._served(model).batcher
        return {
            "version": str(model.version),
            "dynamic_batching": batcher.enabled,
            "max_batch_size": self.settings.max_batch_size if batcher.enabled else 0,
        }

    def take(self, name: str, version: str | None) -> Taken:
        """The version that answers this request, held until the response is ready (``with``);
        with a routing file an unversioned request gets the version the router picks."""
        model = self.lookup(name, version)
        if self.router is not None and version is None:
            return Taken(self.router.pick())
        return Taken(self._served(model))

    def answering(self, served: Served, started: float) -> Answering:
        """Count the request answered inside as an answer of ``served`` (every protocol's
        infer route wraps its work in this): ``ok`` when it ends normally, ``error`` for a 5xx,
        a model that failed to run or a deadline that cancelled it; a client's mistake (any
        other 4xx, a disconnect) is not an answer and is not counted."""
        return Answering(self.metrics, served, started)

    def admit(self) -> Admitted:
        """One infer request in flight, or a 503 when ``--max-concurrency`` are; the memory the
        request reserves is given back when it (and any thread it started) is done."""
        limit = self.settings.max_concurrency
        if self.in_flight >= limit:
            raise busy(
                f"the server is answering {limit} requests, its limit (--max-concurrency);"
                " retry shortly"
            )
        return Admitted(self)

    async def respond(
        self,
        served: Served,
        body: bytes,
        header_length: int | None,
        reservation: Reservation,
        *,
        routed: bool,
    ) -> Encoded:
        """Decode, run and encode one infer request body on ``served``."""
        decoded, wanted, extra = await self.decode(
            served, body, header_length, reservation, routed=routed
        )
        return await self.infer(
            served, decoded, reservation, routed=routed, checked=(wanted, extra)
        )

    async def decode(
        self,
        served: Served,
        body: bytes,
        header_length: int | None,
        reservation: Reservation,
        *,
        routed: bool,
    ) -> tuple[InferRequest, list[RequestedOutput], list[str]]:
        """Parse the request within the memory budget: count the JSON values (bounded by
        ``--max-json-elements``) before parsing, then estimate the whole request from the
        header's shapes before building any tensor. Returns it with the outputs the client
        wants and the extra ones the server needs."""
        text = body if header_length is None else body[:header_length]
        values = await reservation.work(len(text), json_values, text)
        limit = self.settings.max_json_elements
        if values > limit:
            raise ClientError(
                413,
                f"the request's JSON holds up to {values} values, more than this server's limit"
                f" of {limit} (--max-json-elements); send fewer rows per request, or send the"
                " tensors with the binary tensor data extension",
            )
        parsing = len(body) + len(text) + values * JSON_VALUE_BYTES
        reservation.resize(parsing, "parsing this request")
        header = await reservation.work(len(text), read_header, body, header_length)
        model = served.model
        wanted = model.check_outputs(header.outputs, header.binary_output)
        compared = self._extra_outputs(served, wanted, routed)
        reservation.resize(
            parsing + self._estimate(served, header, values, wanted, compared), "this request"
        )
        decoded = await reservation.work(len(body), build_request, header, body)
        return decoded, wanted, compared

    def _extra_outputs(
        self, served: Served, wanted: list[RequestedOutput], routed: bool
    ) -> list[str]:
        """Outputs the client did not ask for but the server needs: to compare versions
        (routed requests with a routing file) and to keep the version's drift profile."""
        needed = list(served.profiled_outputs)
        if routed and self.router is not None:
            needed += self.router.compared_outputs(served)
        names = {out.name for out in wanted}
        return [name for name in dict.fromkeys(needed) if name not in names]

    def _estimate(
        self,
        served: Served,
        header: RequestHeader,
        values: int,
        wanted: list[RequestedOutput],
        compared: list[str],
    ) -> int:
        """Bytes the request's tensors will take: inputs from the header's shapes (JSON ones
        through a 64-bit staging array; all checked through a boolean mask, and copied once more
        when merged into a batch), outputs from the model's shapes and how they are returned.

        A shape that claims more than its data can hold is refused later (400) when the tensor is
        built, so each input counts at most the elements its data can make."""
        inputs = 0
        counts = []
        for head in header.inputs:
            itemsize = 4 if head.datatype == "BYTES" else DATATYPES[head.datatype].itemsize
            if head.binary_size is None:
                count = min(head.elements, values)
            else:
                count = min(head.elements, head.binary_size // itemsize)
            counts.append(count)
            if head.datatype == "BYTES":
                inputs += count * 2 * STRING_BYTES
                continue
            staging = 8 + itemsize if head.binary_size is None else 0
            merged = itemsize if served.batcher.enabled else 0
            inputs += count * (staging + merged + 1)
        first = header.inputs[0].shape
        rows = min(first[0], counts[0]) if first else 1
        infos = {info.name: info for info in served.model.outputs}
        outputs = [
            (infos[out.name].datatype, infos[out.name].shape, out.binary, out.classification)
            for out in wanted
        ]
        outputs += [(infos[name].datatype, infos[name].shape, True, 0) for name in compared]
        return inputs + output_cost(outputs, rows, sum(counts))

    async def infer(
        self,
        served: Served,
        decoded: InferRequest,
        reservation: Reservation,
        *,
        routed: bool,
        encode: Encoder | None = None,
        checked: tuple[list[RequestedOutput], list[str]] | None = None,
    ) -> Any:
        """Check, run and encode one request on ``served``; ``routed`` requests (unversioned,
        with a routing file) are also mirrored to the versions that compare against it.

        ``encode(model, request_id, wanted, results)`` makes the answer (in a worker thread
        for big outputs): a V2 response body unless another protocol (gRPC, V1) gives its own.
        ``checked``: the wanted and extra outputs, when ``decode`` already worked them out.
        """
        started = time.perf_counter()
        model = served.model
        size = sum(array.nbytes for array in decoded.inputs.values())
        feeds = await reservation.work(size, model.check_inputs, decoded.inputs, decoded.datatypes)
        if checked is None:
            wanted = model.check_outputs(decoded.outputs, decoded.binary_output)
            extra = self._extra_outputs(served, wanted, routed)
        else:
            wanted, extra = checked
        names = [out.name for out in wanted]
        names += extra
        try:
            results = await served.batcher.infer(feeds, names)
        except Exception as exc:
            self._record(served, started, error=True)
            if isinstance(exc, ClientError):
                exc.model_failure = True
            raise
        encoded = await reservation.work(
            sum(results[out.name].nbytes for out in wanted),
            encode or self._encode,
            model,
            decoded.id,
            wanted,
            results,
        )
        self._record(served, started, error=False)
        self.observer.submit(served, decoded.inputs, results)
        router = self.router if routed else None
        if router is not None:
            mirroring = router.mirror(served, feeds, decoded.datatypes, results)
            if mirroring is not None:
                reservation.watch(mirroring)
        return encoded

    def _encode(
        self,
        model: ModelVersion,
        request_id: Any,
        wanted: list[RequestedOutput],
        results: dict[str, np.ndarray],
    ) -> Encoded:
        """Worker thread: classification (where asked) and the response body."""
        tensors = [
            (
                out,
                model.classify(out.name, results[out.name], out.classification)
                if out.classification
                else results[out.name],
            )
            for out in wanted
        ]
        return encode_response(
            model.name,
            str(model.version),
            request_id,
            tensors,
            self.settings.max_json_elements,
        )

    def _record(self, served: Served, started: float, *, error: bool) -> None:
        if self.router is not None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.router.record(served, elapsed_ms, error=error, mirrored=False)

    def authorize(self, request: Request) -> None:
        """Require ``Authorization: Bearer <token>`` when the server has a token."""
        self.authorize_header(request.headers.get("authorization"))

    def authorize_header(self, authorization: str | None) -> None:
        """``authorize`` given the Authorization header's value (or None)."""
        check_bearer(authorization, self.settings.token, "this endpoint")

    def admin(self, request: Request) -> None:
        """Require the admin token. Admin routes exist only with an admin token and take it
        instead of the inference token."""
        token = self.settings.admin_token
        if not token:
            raise ClientError(
                404, f"no route {request.url.path}: admin routes are off (no admin token is set)"
            )
        check_bearer(request.headers.get("authorization"), token, "this admin route")

    def admin_router(self, request: Request) -> Router:
        """The router, for an admin request carrying the admin token."""
        self.admin(request)
        if self.settings.routing_file is None:
            raise ClientError(404, "this server was started without --routing")
        if self.router is None:
            raise ClientError(503, "the server is still loading its routing; retry shortly")
        return self.router


class Taken:
    """``with state.take(...) as served``: the version held while the request uses it."""

    __slots__ = ("served",)

    def __init__(self, served: Served) -> None:
        self.served = served

    def __enter__(self) -> Served:
        self.served.acquire()
        return self.served

    def __exit__(self, *exc: object) -> None:
        self.served.release()


class Answering:
    """``with state.answering(served, started)``: counts the answer when the block ends."""

    __slots__ = ("metrics", "served", "started")

    def __init__(self, metrics: Metrics, served: Served, started: float) -> None:
        self.metrics = metrics
        self.served = served
        self.started = started

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, ClientError) and exc.status < 500 and not exc.model_failure:
            return  # the client's mistake, not an answer
        model = self.served.model
        elapsed = time.perf_counter() - self.started
        self.metrics.answered(model.name, model.version, elapsed, error=kind is not None)


class Admitted:
    """``with state.admit() as reservation``: one request in flight and its memory."""

    __slots__ = ("state", "reservation")

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.reservation = state.budget.reservation()

    def __enter__(self) -> Reservation:
        self.state.in_flight += 1
        return self.reservation

    def __exit__(self, *exc: object) -> None:
        self.state.in_flight -= 1
        self.reservation.release()


def check_bearer(authorization: str | None, token: str | None, what: str) -> None:
    """Require ``authorization`` to be ``Bearer <token>`` when there is a token."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ClientError(401, f"{what} needs an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ClientError(401, f"the bearer token is not valid for {what}")
