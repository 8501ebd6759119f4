"""The data plane: loaded versions, their batchers, and one inference call from decoded request
to encoded response.

Without a routing file every discovered version is loaded once and unversioned routes use the
default version. With one, a :class:`~nbdeploy.serve.traffic.Router` owns the versions and picks
the one that answers each unversioned request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.requests import Request

from .batching import Batcher
from .errors import ClientError
from .metrics import Metrics
from .model import ModelVersion, Repository, RepositoryError, load_repository
from .protocol import InferRequest, encode_response
from .routing import RoutingError
from .served import Served
from .settings import Settings
from .traffic import Router

log = logging.getLogger("nbdeploy.serve")

# Bodies bigger than this are decoded and encoded off the event loop.
OFFLOAD_BYTES = 1 << 20

Encoded = tuple[bytes, dict[str, str], str]


class ServerState:
    """Loaded models, their batchers, and whether the server is ready or stopping."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository: Repository | None = None
        self.served: dict[tuple[str, int], Served] = {}
        self.router: Router | None = None
        self.stopping = False
        self.failure: str | None = None
        self.on_failure: Callable[[], None] = lambda: None

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

    @contextlib.contextmanager
    def take(self, name: str, version: str | None) -> Iterator[Served]:
        """The version that answers this request, held until the response is ready; with a
        routing file an unversioned request gets the version the router picks."""
        model = self.lookup(name, version)
        if self.router is not None and version is None:
            served = self.router.pick()
        else:
            served = self._served(model)
        served.acquire()
        try:
            yield served
        finally:
            served.release()

    async def infer(
        self, served: Served, decoded: InferRequest, size: int, *, routed: bool
    ) -> Encoded:
        """Check, run and encode one request on ``served``; ``routed`` requests (unversioned,
        with a routing file) are also mirrored to the versions that compare against it."""
        started = time.perf_counter()
        model = served.model
        feeds = await maybe_offload(size, model.check_inputs, decoded.inputs, decoded.datatypes)
        wanted = model.check_outputs(decoded.outputs, decoded.binary_output)
        names = [out.name for out in wanted]
        router = self.router if routed else None
        if router is not None:
            names += [name for name in router.compared_outputs(served) if name not in names]
        try:
            results = await served.batcher.infer(feeds, names)
        except Exception:
            self._record(served, started, error=True)
            raise
        tensors = [
            (
                out,
                model.classify(out.name, results[out.name], out.classification)
                if out.classification
                else results[out.name],
            )
            for out in wanted
        ]
        encoded = await maybe_offload(
            sum(array.nbytes for _, array in tensors),
            encode_response,
            model.name,
            str(model.version),
            decoded.id,
            tensors,
        )
        self._record(served, started, error=False)
        if router is not None:
            router.mirror(served, feeds, decoded.datatypes, results)
        return encoded

    def _record(self, served: Served, started: float, *, error: bool) -> None:
        if self.router is not None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.router.record(served, elapsed_ms, error=error, mirrored=False)

    def authorize(self, request: Request) -> None:
        """Require ``Authorization: Bearer <token>`` when the server has a token."""
        check_bearer(request, self.settings.token, "this endpoint")

    def admin_router(self, request: Request) -> Router:
        """The router, for an admin request carrying the admin token. Admin routes exist only
        with an admin token and take it instead of the inference token."""
        token = self.settings.admin_token
        if not token:
            raise ClientError(
                404, f"no route {request.url.path}: admin routes are off (no admin token is set)"
            )
        check_bearer(request, token, "this admin route")
        if self.settings.routing_file is None:
            raise ClientError(404, "this server was started without --routing")
        if self.router is None:
            raise ClientError(503, "the server is still loading its routing; retry shortly")
        return self.router


def check_bearer(request: Request, token: str | None, what: str) -> None:
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ClientError(401, f"{what} needs an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ClientError(401, f"the bearer token is not valid for {what}")


async def maybe_offload(size: int, function: Callable[..., Any], *args: Any) -> Any:
    """Run big decode/encode jobs in a thread so the event loop keeps serving other requests."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(function, *args)
    return function(*args)
