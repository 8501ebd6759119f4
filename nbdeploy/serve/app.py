"""The Starlette application: V2 routes, request limits and error bodies (the data plane
behind them is ``dataplane.ServerState``; the ``/nbdeploy/...`` admin routes are ``admin``).

Models load in the background after the socket is open, so liveness answers at once while
readiness (and every model route) answers 503 until every version is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__
from .admin import admin_routes
from .dataplane import ServerState, maybe_offload
from .errors import ClientError, bad_request
from .model import ModelVersion
from .protocol import HEADER_LENGTH, decode_request, parse_header_length

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


def create_app(state: ServerState) -> Starlette:
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
        state.authorize(request)
        params = request.path_params
        with state.take(params["model"], params.get("version")) as served:
            _check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, state.settings.max_body_bytes)
            header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
            decoded = await maybe_offload(len(body), decode_request, body, header_length)
            content, headers, media_type = await state.infer(
                served, decoded, len(body), routed="version" not in params
            )
        return Response(content, headers=headers, media_type=media_type)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    def _lookup(request: Request) -> ModelVersion:
        params = request.path_params
        return state.lookup(params["model"], params.get("version"))

    routes = [
        Route("/v2", _guarded(server_metadata), methods=["GET"]),
        Route("/v2/health/live", _guarded(live), methods=["GET"]),
        Route("/v2/health/ready", _guarded(ready), methods=["GET"]),
        Route("/v2/models/{model}", _guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", _guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", _guarded(infer), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", _guarded(model_metadata), methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/ready", _guarded(model_ready), methods=["GET"]
        ),
        Route("/v2/models/{model}/versions/{version}/infer", _guarded(infer), methods=["POST"]),
        Route("/metrics", _guarded(metrics), methods=["GET"]),
        *[Route(path, _guarded(handler), methods=[method]) for path, method, handler in admin],
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load(), name="load-models")
        try:
            yield
        finally:
            state.stopping = True
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await state.close()
            log.info("stopped: every queued request was answered")

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _guarded(handler: Handler) -> Handler:
    """Turn client mistakes into their 4xx and anything else into a logged 500, both as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientError as exc:
            return error_response(exc.status, exc.message)
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(
                500, f"internal server error ({type(exc).__name__}: {exc}); see the server log"
            )

    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.url.path}; see GET /v2 and /v2/models/<name>"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
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
        f"unsupported Content-Type {value!r}: send application/json, or application/octet-stream"
        " with an Inference-Header-Content-Length header for binary tensors",
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise bad_request(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise _too_large(limit, f"{size} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit, f"more than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    return _decompress(body, request.headers.get("content-encoding"), limit)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo gzip/deflate Content-Encoding (as tritonclient can send) without exceeding limit."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ClientError(415, f"unsupported Content-Encoding {encoding!r}: use gzip or deflate")
    decompressor = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit, f"more than {limit} bytes once decompressed")
    if not decompressor.eof:
        raise bad_request(f"the {encoding} body is truncated")
    return data


def _too_large(limit: int, given: str) -> ClientError:
    return ClientError(
        413, f"the request body is too large: the limit is {limit} bytes, got {given}"
    )
