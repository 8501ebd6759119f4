"""Admin routes: how the host reads and changes a name's routing (``--routing`` servers
only), and watches the server (its counter series and drift, any server).

They exist only when ``NBDEPLOY_ADMIN_TOKEN`` is set, and take that token instead of the
inference token, so that a client allowed to predict cannot move traffic or read what the
others send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .dataplane import ServerState
from .errors import bad_request
from .monitoring import RING, drift_json
from .protocol import plain_integer

AdminRoute = tuple[str, str, Callable[[Request], Awaitable[Response]]]


def admin_routes(state: ServerState) -> list[AdminRoute]:
    """``(path, method, handler)`` of every admin route."""

    async def routing(request: Request) -> Response:
        router = state.admin_router(request)
        return JSONResponse(router.routing_json())

    async def reload(request: Request) -> Response:
        router = state.admin_router(request)
        return JSONResponse(await router.reload())

    async def stats(request: Request) -> Response:
        router = state.admin_router(request)
        return JSONResponse(router.stats_json())

    async def series(request: Request) -> Response:
        state.admin(request)
        text = request.query_params.get("window", "60")
        window = plain_integer(text)
        if window is None or not 1 <= window <= RING:
            raise bad_request(f"window is a whole number of seconds from 1 to {RING}")
        return JSONResponse(state.sampler.series(state.model_name(request), window))

    async def drift(request: Request) -> Response:
        state.admin(request)
        name = state.model_name(request)
        return JSONResponse(drift_json(state.all_served(), name, state.observer.dropped))

    return [
        ("/nbdeploy/series", "GET", series),
        ("/nbdeploy/drift", "GET", drift),
        ("/nbdeploy/routing", "GET", routing),
        ("/nbdeploy/reload", "POST", reload),
        ("/nbdeploy/stats", "GET", stats),
    ]
