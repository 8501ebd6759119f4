"""Outermost ASGI layer: one access-log line and the HTTP metrics for every request.

It wraps the whole Starlette app (error handling included), so even a 500 produced by
Starlette's last-resort handler is logged and counted. Routes are labelled by their template
(``/v2/models/{model}/infer``), never the raw path, to keep metric cardinality bounded.

The logged path is the client's text, so it is escaped: a control character (``%0A`` decodes to
a newline) could otherwise forge a log line. Health checks come every few seconds from the
runtime and would bury everything else: they are counted but not logged unless asked for.
Queries are never logged (the identity challenge's nonce, tokens some clients put there).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Match

from .metrics import Metrics

log = logging.getLogger("nbdeploy.serve.access")

Scope = dict[str, Any]
HEALTH_PREFIX = "/v2/health/"
MAX_LOGGED_PATH = 512


class AccessLog:
    """ASGI middleware logging ``client "METHOD path HTTP/x" status ms`` and recording metrics."""

    def __init__(self, app: Any, metrics: Metrics, *, log_health: bool = False) -> None:
        """``app``: the ASGI app (``app.create_app``), whose ``routes`` label the metrics."""
        self.app = app
        self.metrics = metrics
        self.log_health = log_health

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
            if self.log_health or not scope["path"].startswith(HEALTH_PREFIX):
                client = scope.get("client")
                log.info(
                    '%s "%s %s HTTP/%s" %d %.1fms',
                    f"{client[0]}:{client[1]}" if client else "-",
                    method,
                    escape(scope["path"]),
                    scope.get("http_version", "1.1"),
                    status,
                    elapsed * 1000,
                )

    def _route(self, scope: Scope) -> str:
        matched = scope.get("route")  # the route Starlette's router picked, if any
        if matched is not None:
            return getattr(matched, "path", "other")
        for route in self.app.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"


def escape(text: str) -> str:
    """``text`` with every non-printable character (newlines, escapes, Unicode line separators)
    and quote written as ``%XX``/``%uXXXX``, cut to MAX_LOGGED_PATH characters."""
    if len(text) > MAX_LOGGED_PATH:
        text = text[:MAX_LOGGED_PATH] + "..."
    if text.isprintable() and '"' not in text:
        return text
    return "".join(char if char.isprintable() and char != '"' else _percent(char) for char in text)


def _percent(char: str) -> str:
    code = ord(char)
    return f"%{code:02X}" if code < 0x100 else f"%u{code:04X}"
