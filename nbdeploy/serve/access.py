"""Outermost ASGI layer: one access-log line and the HTTP metrics for every request.

It wraps the whole Starlette app (error handling included), so even a 500 produced by
Starlette's last-resort handler is logged and counted. Routes are labelled by their template
(``/v2/models/{model}/infer``), never the raw path, to keep metric cardinality bounded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Match

from .metrics import Metrics

log = logging.getLogger("nbdeploy.serve.access")

Scope = dict[str, Any]


class AccessLog:
    """ASGI middleware logging ``client "METHOD path HTTP/x" status ms`` and recording metrics."""

    def __init__(self, app: Starlette, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"]
            self.metrics.observe_request(method, self._route(scope), status, elapsed)
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            log.info(
                '%s "%s %s HTTP/%s" %d %.1fms',
                peer,
                method,
                scope["path"],
                scope.get("http_version", "1.1"),
                status,
                elapsed * 1000,
            )

    def _route(self, scope: Scope) -> str:
        for route in self.app.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"
