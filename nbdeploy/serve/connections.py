"""HTTP/1.1 connections with limits on every phase, on top of uvicorn's h11 protocol.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with h11, the size of
a request head (``h11_max_incomplete_event_size``), but nothing bounds the time a client takes
to send its head: a client dribbling one header byte a second would hold a connection forever.
This protocol arms a deadline whenever it waits for a head (new connection, or the previous
response sent) and closes the connection with a 408 when it passes. Heads over the size limit
get a 431, other malformed heads a 400; all three as a JSON ``{"error": ...}`` like every
other answer of the server. Body timeouts are the application's (``app._read_body``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 64 << 10
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), with this head deadline."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and JSON protocol errors."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head arrived
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm_head_timer()  # waiting for the next request's head

    def send_400_response(self, msg: str) -> None:
        buffered = len(self.conn.trailing_data[0])
        if buffered > (self.config.h11_max_incomplete_event_size or MAX_HEAD_BYTES):
            self._reply_and_close(
                431,
                f"the request head is longer than {MAX_HEAD_BYTES} bytes (request line and"
                " headers together)",
            )
        else:
            self._reply_and_close(
                400,
                "malformed HTTP request: bad request line, header, Content-Length or chunked"
                " encoding",
            )

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head came, then nothing
            message = f"the request head did not arrive within {self.header_timeout_s:g} s"
            self._reply_and_close(408, message)
        else:
            self.transport.close()

    def _reply_and_close(self, status: int, message: str) -> None:
        """Write a whole response by hand (h11 will not send one before a request parsed)."""
        self.logger.info("closing a connection from %s: %s", _peer(self.client), message)
        body = json.dumps({"error": message}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
