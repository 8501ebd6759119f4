"""HTTP/1.1 connections with limits on every phase, on top of uvicorn's httptools protocol.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), but nothing bounds the size
of a request head with httptools, nor the time a client takes to send it: a client dribbling
one header byte a second, or sending an endless header line, would hold a connection (and its
memory) forever. This protocol counts the bytes of each request head as they come and answers
a head longer than ``MAX_HEAD_BYTES`` with a 431 (within one read of the limit), and arms a
deadline for each head (from a new connection, or from the first bytes of the next head on a
kept-alive one, which uvicorn's keep-alive timer bounds until then): a 408 when it passes. Malformed heads get a 400; all three as a JSON ``{"error": ...}`` like every
other answer of the server, then the connection is closed. Body timeouts are the application's
(``app._read_body``).

Each request's scope carries ``scope[DISCONNECTED]``, a future done once its client goes away
before the response is sent: the application cancels the request's work with it, without a
task per request watching ``receive()``.

It also writes each response's head and its first body chunk in one ``write`` (one send, one
TCP segment for a small answer) instead of two: one system call and one wake-up of the client
less per request.

With a ``FastLane``, a small V2 infer request is handed to it instead of starting an ASGI task
(``fastlane`` says why and what it checks) once its whole body is in: with its head, or in the
reads that follow within ``BODY_GRACE_S`` (clients such as httpx send the body in a write of
its own, which often arrives in a second read). A body still incomplete then takes the ASGI
lane, which holds what came of it and applies the body timeout.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

    from .fastlane import FastLane

MAX_HEAD_BYTES = 64 << 10
# How long a fast-lane request may wait for the rest of its body before the ASGI lane takes it.
BODY_GRACE_S = 0.02
DISCONNECTED = "nbdeploy.disconnected"
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def guarded_protocol(
    header_timeout_s: float, lane: FastLane | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), with this head deadline
    and fast lane."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "lane": lane},
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline for each request head,
    JSON protocol errors, and a response's head written with its body."""

    header_timeout_s = 10.0
    lane: FastLane | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_bytes = 0  # bytes received since the current head began
        self._heading = False  # inside on_headers_complete
        # A request for the fast lane whose body is still coming: (cycle, app, its headers).
        self._deferred: tuple[RequestResponseCycle, ASGI3Application, dict[str, str]] | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._lane_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        self._deferred = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            lost = cycle.scope.get(DISCONNECTED)
            if lost is not None and not lost.done():
                lost.set_result(None)
            if self._lane_task is not None:
                self._lane_task.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._deferred is not None and self._body_timer is None:  # the body is still coming
            self._body_timer = self.loop.call_later(BODY_GRACE_S, self._to_asgi_lane)
        if not self._awaiting_head or not self._head_bytes or self.transport.is_closing():
            return
        if self._head_bytes > MAX_HEAD_BYTES:
            self._reply_and_close(
                431,
                f"the request head is longer than {MAX_HEAD_BYTES} bytes (request line and"
                " headers together)",
            )
        elif self._head_timer is None:  # part of a head came: it has header_timeout_s to end
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        previous = self.cycle
        self._heading = True
        try:
            super().on_headers_complete()
        finally:
            self._heading = False
        cycle = self.cycle
        deferred = self._deferred
        if cycle is not previous and (deferred is None or deferred[0] is not cycle):
            self._prepare_asgi(cycle)

    def _prepare_asgi(self, cycle: RequestResponseCycle) -> None:
        """What a request on the ASGI lane gets: its disconnect future and a transport that
        writes the response's head with its body."""
        cycle.scope[DISCONNECTED] = self.loop.create_future()  # type: ignore[literal-required]
        cycle.transport = _HeadWithBody(self.transport, cycle)  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        lane = self.lane
        if lane is not None and self._heading and app is self.app and not self.expect_100_continue:
            headers = lane.wants(cycle.scope)
            if headers is not None:
                self._deferred = (cycle, app, headers)
                return
        super()._start_asgi_task(cycle, app)

    def _to_asgi_lane(self) -> None:
        """The rest of a fast-lane request's body did not come in time: the ASGI lane takes
        the request, with the body that came so far."""
        self._body_timer = None
        if self._deferred is None or self.transport.is_closing():
            return
        cycle, app, _ = self._deferred
        self._deferred = None
        self._prepare_asgi(cycle)
        super()._start_asgi_task(cycle, app)

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True  # what comes next belongs to the next request's head
        deferred = self._deferred
        if deferred is not None and deferred[0] is self.cycle:
            self._deferred = None
            self._disarm_body_timer()
            cycle, _, headers = deferred
            assert self.lane is not None
            self._lane_task = self.lane.answer(self, cycle, headers)

    def write_response(
        self, cycle: RequestResponseCycle, status: int, head: list[bytes], content: bytes
    ) -> None:
        """Send a fast-lane response (``head``: its status line and header lines) in one
        write, and end the request as uvicorn's cycle would."""
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(content)
        self.transport.write(b"".join(head))
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self._lane_task = None
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        # uvicorn arms its keep-alive timer: an idle connection is closed after
        # --keep-alive-timeout-s; the head deadline starts with the next head's first bytes.
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self._reply_and_close(
            400,
            "malformed HTTP request: bad request line, header, Content-Length or chunked encoding",
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
        if self._awaiting_head and self._head_bytes:  # part of a head came, then nothing
            message = f"the request head did not arrive within {self.header_timeout_s:g} s"
            self._reply_and_close(408, message)
        else:
            self.transport.close()

    def _reply_and_close(self, status: int, message: str) -> None:
        """Write a whole response by hand (no request was parsed to answer)."""
        self.logger.info("closing a connection from %s: %s", _peer(self.client), message)
        body = json.dumps({"error": message}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


class _HeadWithBody:
    """One request's view of the transport: the response head (the first write once the
    response has started) is held back and written together with what follows it."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_held = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._cycle.response_started and not self._head_held:
            self._head_held = True  # ("100 Continue" is written before the response starts)
            if self._cycle.scope["method"] != "HEAD":  # (no body write follows a HEAD's head)
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
