"""The Starlette application: V2 routes, TF Serving / KServe V1 routes (``v1``), request limits
and error bodies (the data plane behind them is ``dataplane.ServerState``; the ``/nbdeploy/...``
admin routes are ``admin``; V2 over gRPC is ``grpc_service``, on its own port).

Models load in the background after the socket is open, so liveness answers at once while
readiness (and every model route) answers 503 until every version is loaded and warmed up.

An infer request is admitted only under ``--max-concurrency`` (else 503 + Retry-After), runs
under a deadline (``--request-timeout-s``, else 504), reserves its memory before reading,
parsing and running (``limits``), and is cancelled when its client disconnects: its queued
work is then dropped. Each answered infer request is counted for the version that answered it
(``ok``, or ``error`` for a 5xx or a model that failed to run; refused 4xx are not answers), and
a background task samples those counters every second for ``/nbdeploy/series``.
``GET /nbdeploy/identity?nonce=HEX`` proves, without revealing them, that
this server holds the deployment's tokens (HMAC-SHA256 of the nonce), so a client can check
who listens on a port before sending it a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from . import __version__, v1
from .admin import admin_routes
from .connections import DISCONNECTED
from .dataplane import Encoded, ServerState
from .errors import ClientError, bad_request, clip, quote
from .limits import Reservation
from .model import ModelVersion
from .protocol import HEADER_LENGTH, parse_header_length, plain_integer

log = logging.getLogger("nbdeploy.serve")

SERVER_NAME = "nbdeploy"
EXTENSIONS = ["binary_tensor_data", "classification"]
# What a JSON or binary infer body may be labelled as. Browsers' fetch() sends text/plain and
# curl -d sends a form type by default; both still carry the JSON we parse.
ACCEPTED_CONTENT_TYPES = {
    "",
    "application/json",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "text/plain",
}

Handler = Callable[[Request], Awaitable[Response]]
# ServerState.respond, or another protocol's: (served, body, header length, reservation, routed).
Respond = Callable[..., Coroutine[Any, Any, Encoded]]
T = TypeVar("T")
NONCE = re.compile(r"[0-9a-fA-F]{16,128}")


def create_app(state: ServerState) -> InferFirst:
    """The ASGI app for ``state`` (wrap it in ``AccessLog`` to log and count requests)."""

    admin = admin_routes(state)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    async def model_metadata(request: Request) -> Response:
        state.authorize(request)
        model = _lookup(request)
        versions = state.versions(model.name)
        return JSONResponse(model.metadata(versions, state.batching_parameters(model)))

    async def model_ready(request: Request) -> Response:
        state.authorize(request)
        model = _lookup(request)
        body = {"name": model.name, "version": str(model.version), "ready": state.ready}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    async def infer(request: Request) -> Response:
        params = request.path_params
        return await _infer(request, params["model"], params.get("version"), state.respond)

    async def v1_model(request: Request) -> Response:
        """TF Serving / KServe V1: GET the model's status, POST ``...:predict``."""
        params = request.path_params
        name, version = params["model"], params.get("version")
        if version is None:
            name, verb = v1.split_target(name)
        else:
            version, verb = v1.split_target(version)
        v1.check_verb(request.method, verb)
        if verb is None:
            state.authorize(request)
            return JSONResponse(v1.version_status(state, name, version))
        return await _infer(request, name, version, functools.partial(v1.respond, state))

    async def v1_metadata(request: Request) -> Response:
        state.authorize(request)
        params = request.path_params
        return JSONResponse(v1.metadata(state, params["model"], params.get("version")))

    async def _infer(
        request: Request, name: str, version: str | None, respond: Respond
    ) -> Response:
        started = time.perf_counter()
        headers = request.headers
        state.authorize_header(headers.get("authorization"))
        with state.admit() as reservation:
            seconds = state.settings.request_timeout_s
            try:
                async with asyncio.timeout(seconds):
                    content, extra, media_type = await answer_infer(
                        state,
                        Call(name, version, headers, started),
                        respond,
                        functools.partial(_read_body, request),
                        functools.partial(_unless_disconnected, request),
                        reservation,
                    )
            except TimeoutError:
                raise past_deadline(seconds) from None
        return Response(content, headers=extra, media_type=media_type)

    async def identity(request: Request) -> Response:
        nonce = request.query_params.get("nonce", "")
        if not NONCE.fullmatch(nonce):
            raise bad_request("identity needs a ?nonce= of 16 to 128 hexadecimal characters")
        settings = state.settings
        return JSONResponse(
            {
                "name": ",".join(sorted(settings.found)),
                "proof": _proof(settings.token, nonce),
                "admin_proof": _proof(settings.admin_token, nonce),
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    def _lookup(request: Request) -> ModelVersion:
        params = request.path_params
        return state.lookup(params["model"], params.get("version"))

    guarded_infer = _guarded(infer)
    routes = [
        Route("/v2", _guarded(server_metadata), methods=["GET"]),
        Route("/v2/health/live", _guarded(live), methods=["GET"]),
        Route("/v2/health/ready", _guarded(ready), methods=["GET"]),
        Route("/v2/models/{model}", _guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", _guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", guarded_infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", _guarded(model_metadata), methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/ready", _guarded(model_ready), methods=["GET"]
        ),
        Route("/v2/models/{model}/versions/{version}/infer", guarded_infer, methods=["POST"]),
        Route("/v1/models/{model}", _guarded(v1_model), methods=["GET", "POST"]),
        Route("/v1/models/{model}/metadata", _guarded(v1_metadata), methods=["GET"]),
        Route("/v1/models/{model}/versions/{version}", _guarded(v1_model), methods=["GET", "POST"]),
        Route(
            "/v1/models/{model}/versions/{version}/metadata", _guarded(v1_metadata), methods=["GET"]
        ),
        Route("/metrics", _guarded(metrics), methods=["GET"]),
        Route("/nbdeploy/identity", _guarded(identity), methods=["GET"]),
        *[Route(path, _guarded(handler), methods=[method]) for path, method, handler in admin],
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load(), name="load-models")
        sampling = asyncio.create_task(state.sampler.run(), name="sample-counters")
        state.observer.start()
        try:
            yield
        finally:
            state.stopping = True
            sampling.cancel()
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await state.close()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            await asyncio.to_thread(state.observer.stop)
            log.info("stopped: every queued request was answered")

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    return InferFirst(app, [route for route in routes if route.endpoint is guarded_infer])


class InferFirst:
    """The Starlette app, with V2 infer requests handed straight to their route's endpoint:
    the hot path skips Starlette's middleware, router and wrappers (the endpoint turns every
    error into its JSON answer itself, see ``_guarded``)."""

    def __init__(self, app: Starlette, fast: list[Route]) -> None:
        self.app = app
        self.routes = app.routes
        self._fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self._fast:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.app
                    scope["route"] = route
                    response = await route.endpoint(Request(scope, receive, send))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class Headers(Protocol):
    def get(self, key: str, default: None = None, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One infer request, whichever lane carries it: the model asked for and its headers
    (lower-case names; Starlette's ``Headers`` or the fast lane's dict)."""

    name: str
    version: str | None
    headers: Headers
    started: float


async def answer_infer(
    state: ServerState,
    call: Call,
    respond: Respond,
    read_body: Callable[[Reservation, ServerState, Headers], Awaitable[bytes]],
    guard: Callable[[Coroutine[Any, Any, Encoded]], Awaitable[Encoded]],
    reservation: Reservation,
) -> Encoded:
    """Everything an admitted infer request goes through on any lane (Starlette's route or
    ``fastlane``): the version that answers, its accounting, the content type, the body
    within its limits, then ``respond`` under ``guard`` (which drops it on disconnect)."""
    headers = call.headers
    with state.take(call.name, call.version) as served, state.answering(served, call.started):
        _check_content_type(headers.get("content-type"))
        body = await read_body(reservation, state, headers)
        length = parse_header_length(headers.get(HEADER_LENGTH), len(body))
        work = respond(served, body, length, reservation, routed=call.version is None)
        return await guard(work)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _proof(token: str | None, nonce: str) -> str | None:
    """HMAC-SHA256 of the nonce (its ASCII text) keyed with ``token``: only its holder can
    answer, and the answer reveals nothing about the token."""
    if not token:
        return None
    return hmac.new(token.encode(), nonce.encode("ascii"), hashlib.sha256).hexdigest()


def past_deadline(seconds: float) -> ClientError:
    """The 504 of a request past its deadline (worker threads still running keep their
    memory reserved until they end)."""
    return ClientError(
        504,
        f"the request was not answered within {seconds:g} s (--request-timeout-s); send"
        " fewer rows per request or retry later",
    )


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first: a cancelled request's
    queued batch item is dropped (the batcher skips it) instead of run for nobody.

    Under nbdeploy's protocol (``connections``) the scope holds a future done on disconnect,
    and ``work`` runs in this task; elsewhere a second task watches ``receive()``."""
    lost: asyncio.Future[None] | None = request.scope.get(DISCONNECTED)
    if lost is None:
        return await _watching_receive(request, work)
    if lost.done():
        work.close()
        raise gone()
    task = asyncio.current_task()
    assert task is not None
    working = True

    def cancel(_: asyncio.Future[None]) -> None:
        if working:  # (a callback already scheduled when the work ended does nothing)
            task.cancel()

    lost.add_done_callback(cancel)
    try:
        return await work
    except asyncio.CancelledError:
        if not lost.done():
            raise  # the deadline, or the server stopping
        task.uncancel()
        raise gone() from None
    finally:
        working = False
        lost.remove_done_callback(cancel)


def gone() -> ClientError:
    return ClientError(499, "the client disconnected; its request was dropped")


async def _watching_receive(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise gone()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _guarded(handler: Handler) -> Handler:
    """Turn client mistakes into their 4xx and anything else into a logged 500, both as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(
                500, f"internal server error ({type(exc).__name__}: {exc}); see the server log"
            )

    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {clip(request.url.path)}; see GET /v2 and /v2/models/<name>"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {clip(request.url.path)}"
    else:
        message = str(exc.detail)
    response = error_response(exc.status_code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _check_content_type(value: str | None) -> None:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type in ACCEPTED_CONTENT_TYPES or media_type.endswith("+json"):
        return
    raise ClientError(
        415,
        f"unsupported Content-Type {quote(value)}: send application/json, or application/octet-stream"
        " with an Inference-Header-Content-Length header for binary tensors",
    )


async def _read_body(
    request: Request, reservation: Reservation, state: ServerState, headers: Headers
) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``--max-body-bytes``, and
    with 408 when no data comes for ``body_timeout_s``. Its memory is reserved first (twice:
    the chunks, then the joined body), from Content-Length or as the chunks come."""
    settings = state.settings
    limit = settings.max_body_bytes
    reserve_declared(headers, reservation, limit)
    chunks: list[bytes] = []
    received = 0
    wait = settings.body_timeout_s
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(wait) as deadline:
            while True:
                message = await request.receive()
                if message["type"] != "http.request":
                    raise gone()
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit, f"more than {limit} bytes")
                if 2 * received > reservation.held:
                    reservation.resize(2 * received, "this request's body")
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                deadline.reschedule(loop.time() + wait)
    except TimeoutError:
        raise ClientError(408, f"the request body stalled: no data for {wait:g} s") from None
    body = b"".join(chunks)
    chunks.clear()
    return decode_content(body, headers, reservation, limit)


def reserve_declared(headers: Headers, reservation: Reservation, limit: int) -> int | None:
    """Check the Content-Length header (400 when malformed, 413 over ``limit``) and reserve
    twice its bytes; the declared size, if any."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    size = plain_integer(declared)
    if size is None:
        raise bad_request(f"invalid Content-Length header {quote(declared)}")
    if size > limit:
        raise _too_large(limit, f"{size} bytes")
    reservation.resize(2 * size, "this request's body")
    return size


def decode_content(body: bytes, headers: Headers, reservation: Reservation, limit: int) -> bytes:
    """Undo the body's Content-Encoding (gzip or deflate), within ``limit`` and the budget."""
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ClientError(
            415, f"unsupported Content-Encoding {quote(encoding)}: use gzip or deflate"
        )
    size = _inflated_size(body, encoding, limit)
    reservation.resize(len(body) + size, "decompressing this request's body")
    return _decompress(body, encoding, size, limit)


def _inflated_size(body: bytes, encoding: str, limit: int) -> int:
    """How long the decompressed body may be: what a gzip trailer says (zlib checks it), at
    most ``limit``; a deflate stream does not say, so ``limit``."""
    if encoding == "gzip" and len(body) >= 18:
        return min(int.from_bytes(body[-4:], "little"), limit)
    return limit


def _decompress(body: bytes, encoding: str, size: int, limit: int) -> bytes:
    """Undo gzip/deflate Content-Encoding (as tritonclient can send) into at most ``size``
    bytes, refusing more than ``limit`` (413) and trailing data after the stream (400)."""
    decompressor = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, size + 1)
    except zlib.error as exc:
        raise bad_request(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > size or decompressor.unconsumed_tail:
        if size < limit:
            raise bad_request(f"the {encoding} body holds more data than its trailer says")
        raise _too_large(limit, f"more than {limit} bytes once decompressed")
    if not decompressor.eof:
        raise bad_request(f"the {encoding} body is truncated")
    if decompressor.unused_data:
        raise bad_request(
            f"the {encoding} body has {len(decompressor.unused_data)} bytes of trailing data"
            f" after the end of its {encoding} stream"
        )
    return data


def _too_large(limit: int, given: str) -> ClientError:
    return ClientError(
        413, f"the request body is too large: the limit is {limit} bytes, got {given}"
    )
