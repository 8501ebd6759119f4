"""Admin routes: how the host reads and changes a name's routing (``--routing`` servers only).

They exist only when ``NBDEPLOY_ADMIN_TOKEN`` is set, and take that token instead of the
inference token, so that a client allowed to predict cannot move traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .dataplane import ServerState

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

    return [
        ("/nbdeploy/routing", "GET", routing),
        ("/nbdeploy/reload", "POST", reload),
        ("/nbdeploy/stats", "GET", stats),
    ]
