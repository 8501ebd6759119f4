"""Outermost ASGI layer: one access-log line and the HTTP metrics for every request.

It wraps the whole Starlette app (error handling included), so even a 500 produced by
Starlette's last-resort handler is logged and counted. Routes are labelled by their template
(``/v2/models/{model}/infer``), never the raw path, to keep metric cardinality bounded.

The logged path is the client's text, so it is escaped: a control character (``%0A`` decodes to
a newline) could otherwise forge a log line. Health checks come every few seconds from the
runtime and would bury everything else: they are counted but not logged unless asked for.
Queries are never logged (the identity challenge's nonce, tokens some clients put there).

An access line is written straight to the log handler's stream, in the log's own format, and
flushed within FLUSH_S (or once 64 KiB are waiting), as web servers buffer their access logs
(``LineWriter``): the ``logging`` machinery (a record, two formattings, a size check and a
write per line) cost a fifth of a small request.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import time
from typing import Any

from starlette.routing import Match

from .metrics import Metrics

log = logging.getLogger("nbdeploy.serve.access")

Scope = dict[str, Any]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the server's log lines
HEALTH_PREFIX = "/v2/health/"
FLUSH_S = 0.1  # an access line reaches the file within this (a killed server loses no more)
FLUSH_BYTES = 64 << 10
MAX_LOGGED_PATH = 512


class AccessLog:
    """ASGI middleware logging ``client "METHOD path HTTP/x" status ms`` and recording metrics."""

    def __init__(self, app: Any, metrics: Metrics, *, log_health: bool = False) -> None:
        """``app``: the ASGI app (``app.create_app``), whose ``routes`` label the metrics."""
        self.app = app
        self.metrics = metrics
        self.log_health = log_health
        self.lines = LineWriter(log)

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
            self.record(scope, self._route(scope), status, time.perf_counter() - started)

    def record(self, scope: Scope, route: str, status: int, elapsed: float) -> None:
        """Count and log one answered request (also for requests the fast lane answers)."""
        method = scope["method"]
        self.metrics.observe_request(method, route, status, elapsed)
        path = scope["path"]
        if self.log_health or not path.startswith(HEALTH_PREFIX):
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            version = scope.get("http_version", "1.1")
            self.lines.info(
                f'{peer} "{method} {escape(path)} HTTP/{version}" {status} {elapsed * 1000:.1f}ms'
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


class LogFile(logging.handlers.RotatingFileHandler):
    """The server's rotating log file, which knows its size without asking the stream: a text
    stream's ``tell()`` flushes it, so the size check before each access line would write every
    line at once instead of letting them wait in the buffer (``LineWriter``)."""

    size = 0

    def _open(self) -> Any:
        stream = super()._open()
        self.size = os.fstat(stream.fileno()).st_size
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # checks the size, may roll over, writes and flushes
        if self.stream is not None:
            self.size = self.stream.tell()

    def write_line(self, line: str) -> None:
        """Append ``line`` (buffered), rolling over first if it would reach ``maxBytes``."""
        size = len(line) if line.isascii() else len(line.encode(self.encoding or "utf-8"))
        if self.maxBytes > 0 and self.size + size >= self.maxBytes:  # as shouldRollover()
            self.doRollover()
        self.stream.write(line)
        self.size += size


class LineWriter:
    """INFO lines of one logger, written as its handler's ``Formatter`` would write them
    (``LOG_FORMAT``) but without a ``LogRecord``, and flushed FLUSH_S after the first line
    waiting (or at once past FLUSH_BYTES): many lines leave in one write. When the root
    logger's handler is not the stream handler the server configures, lines go through
    ``logging`` as usual."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._prefix = f" INFO {logger.name}: "
        self._second = -1
        self._stamp = ""
        self._unflushed: logging.StreamHandler[Any] | None = None
        self._waiting_bytes = 0

    def info(self, message: str) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _direct_handler(logger)
        if handler is None:
            logger.info("%s", message)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{self._stamp},{int((now - second) * 1000):03d}{self._prefix}{message}\n"
        handler.acquire()
        try:
            if isinstance(handler, LogFile):
                handler.write_line(line)
            else:
                if isinstance(handler, logging.handlers.RotatingFileHandler) and handler.maxBytes:
                    size = len(line) if line.isascii() else len(line.encode("utf-8"))
                    if handler.stream.tell() + size >= handler.maxBytes:  # as shouldRollover()
                        handler.doRollover()
                handler.stream.write(line)
        finally:
            handler.release()
        self._waiting_bytes += len(line)
        if self._unflushed is None:
            self._unflushed = handler
            try:
                asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no loop to flush later
                self.flush()
        elif self._waiting_bytes > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        handler, self._unflushed = self._unflushed, None
        self._waiting_bytes = 0
        if handler is not None:
            handler.flush()


def _direct_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one stream handler (with the server's format) that ``logger``'s lines reach, if
    that is how logging is configured; else None."""
    if logger.handlers or not logger.propagate or logger.filters:
        return None
    handlers = logging.getLogger().handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        not isinstance(handler, logging.StreamHandler)
        or handler.filters
        or handler.formatter is None
        or handler.formatter._fmt != LOG_FORMAT
        or handler.stream is None
        or handler.level > logging.INFO
    ):
        return None
    return handler


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
