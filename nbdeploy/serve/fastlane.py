"""The fast lane: small V2 infer requests answered straight from the connection's protocol.

A V2 infer request whose whole body (at most ``OFFLOAD_BYTES``, no Content-Encoding) arrived
with its head is answered from ``connections`` without the ASGI machinery: no request task, no
scope messages, no Starlette request or response objects, no middleware. It goes through
the very same checks as every other infer request (``app.answer_infer``: the bearer token,
``--max-concurrency``, the memory budget, the content type, body limits, the version the router
picks, validation, metrics and the access log); only the carrier differs.

The request's coroutine is started eagerly, in the protocol's callback, as Python 3.12's eager
tasks do: a request that never has to wait (a quick model with an idle batcher runs inline, see
``batching``) is answered before the callback returns. One that must wait (a batch to fill, a
model on its thread, a big output encoded in a worker) goes on in a task, under the deadline
(``--request-timeout-s``), and is cancelled when its client disconnects, as on the ASGI lane.
Every other request (and a body that needs more than one read) takes the ASGI lane.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
import time
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .app import Call, Headers, answer_infer, decode_content, gone, past_deadline, reserve_declared
from .connections import DISCONNECTED
from .dataplane import Encoded, ServerState
from .errors import ClientError
from .limits import OFFLOAD_BYTES, Reservation

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from .access import AccessLog
    from .connections import GuardedHttpToolsProtocol

log = logging.getLogger("nbdeploy.serve")

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
ROUTES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
# The request headers the infer path reads.
READ_HEADERS = frozenset(
    (
        b"authorization",
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"inference-header-content-length",
        b"transfer-encoding",
    )  # fmt: skip
)
# Status lines as uvicorn writes them (the phrase of ``http.HTTPStatus``, none if it has none).
STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())
    for status in http.HTTPStatus
}


class FastLane:
    """Answers eligible V2 infer requests for ``GuardedHttpToolsProtocol``."""

    def __init__(self, state: ServerState, access: AccessLog) -> None:
        self.state = state
        self.access = access

    def wants(self, scope: dict[str, Any]) -> dict[str, str] | None:
        """The request's headers (lower-case names) if the fast lane takes it, else None."""
        if scope["method"] != "POST" or INFER_PATH.fullmatch(scope["path"]) is None:
            return None
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in READ_HEADERS:
                headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        length = headers.get("content-length", "")
        if (
            not length.isdigit()
            or int(length) > OFFLOAD_BYTES
            or "transfer-encoding" in headers
            or headers.get("content-encoding", "identity").strip().lower() != "identity"
        ):
            return None
        return headers

    def answer(
        self,
        protocol: GuardedHttpToolsProtocol,
        cycle: RequestResponseCycle,
        headers: dict[str, str],
    ) -> asyncio.Task[None] | None:
        """Answer the request now, or return the task that will (the protocol cancels it if
        the client disconnects first)."""
        scope = cycle.scope
        match = INFER_PATH.fullmatch(scope["path"])
        assert match is not None
        name, version = match.groups()
        started = time.perf_counter()
        work = self._answer(Call(name, version, headers, started), bytes(cycle.body), scope)
        try:
            waiting_on = work.send(None)
        except StopIteration as done:
            self._reply(protocol, cycle, done.value, started)
            return None
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            self._reply(protocol, cycle, exc, started)
            return None
        loop = asyncio.get_running_loop()
        scope[DISCONNECTED] = loop.create_future()  # set by the protocol on a disconnect
        task = loop.create_task(self._go_on(protocol, cycle, work, waiting_on, started))
        protocol.tasks.add(task)  # a graceful shutdown waits for it, as for ASGI tasks
        task.add_done_callback(protocol.tasks.discard)
        # A task cancelled before its first step never runs ``_go_on``: closing ``work`` then
        # still ends its ``with`` blocks (the request's slot and memory); once done, a no-op.
        task.add_done_callback(lambda _: work.close())
        return task

    async def _answer(self, call: Call, body: bytes, scope: dict[str, Any]) -> Encoded:
        state = self.state
        state.authorize_header(call.headers.get("authorization"))
        with state.admit() as reservation:
            return await answer_infer(
                state,
                call,
                state.respond,
                _complete_body(body),
                _unless_lost(scope),
                reservation,
            )

    async def _go_on(
        self,
        protocol: GuardedHttpToolsProtocol,
        cycle: RequestResponseCycle,
        work: Coroutine[Any, Any, Encoded],
        waiting_on: Any,
        started: float,
    ) -> None:
        """The rest of a request that had to wait, under what is left of its deadline."""
        seconds = self.state.settings.request_timeout_s
        outcome: Encoded | BaseException
        try:
            async with asyncio.timeout(max(0.0, started + seconds - time.perf_counter())):
                outcome = await _resume(work, waiting_on)
        except TimeoutError:
            outcome = past_deadline(seconds)
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        self._reply(protocol, cycle, outcome, started)

    def _reply(
        self,
        protocol: GuardedHttpToolsProtocol,
        cycle: RequestResponseCycle,
        outcome: Encoded | BaseException,
        started: float,
    ) -> None:
        scope = cycle.scope
        if isinstance(outcome, BaseException):
            status, content, extra, media_type = _error(outcome, scope)
        else:
            status = 200
            content, extra, media_type = outcome
        if not protocol.transport.is_closing():
            protocol.write_response(
                cycle, status, _head(status, content, extra, media_type), content
            )
        route = ROUTES[0] if scope["path"].count("/") == 4 else ROUTES[1]
        self.access.record(scope, route, status, time.perf_counter() - started)


def _complete_body(body: bytes) -> Any:
    async def read_body(reservation: Reservation, state: ServerState, headers: Headers) -> bytes:
        limit = state.settings.max_body_bytes
        reserve_declared(headers, reservation, limit)
        return decode_content(body, headers, reservation, limit)

    return read_body


def _unless_lost(scope: dict[str, Any]) -> Any:
    """``app._unless_disconnected`` for the fast lane: the protocol cancels the request's task
    when its client goes away (and sets ``scope[DISCONNECTED]``, made when the request had to
    wait); that cancellation becomes a 499 that is not an answer."""

    async def guard(work: Coroutine[Any, Any, Encoded]) -> Encoded:
        try:
            return await work
        except asyncio.CancelledError:
            lost = scope.get(DISCONNECTED)
            if lost is None or not lost.done():
                raise  # the deadline, or the server stopping
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise gone() from None

    return guard


class _Yield:
    """Awaiting it hands ``value`` (what an eagerly started coroutine yielded) to the task."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _resume(work: Coroutine[Any, Any, Encoded], waiting_on: Any) -> Encoded:
    """Drive ``work``, started outside any task and now waiting on ``waiting_on``, to its end
    inside the current task (cancellation is thrown into it where it waits)."""
    while True:
        try:
            sent = await _Yield(waiting_on)
        except BaseException as exc:  # noqa: BLE001 - handed to the coroutine where it waits
            try:
                waiting_on = work.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = work.send(sent)
            except StopIteration as done:
                return done.value


def _error(exc: BaseException, scope: dict[str, Any]) -> tuple[int, bytes, dict[str, str], str]:
    """The JSON error answer ``app._guarded`` gives on the ASGI lane."""
    headers: dict[str, str] = {}
    if isinstance(exc, ClientError):
        status, message = exc.status, exc.message
        headers.update(exc.headers)
    else:
        log.error("unexpected error on %s %s", scope["method"], scope["path"], exc_info=exc)
        status = 500
        message = f"internal server error ({type(exc).__name__}: {exc}); see the server log"
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    content = json.dumps(
        {"error": message}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()
    return status, content, headers, "application/json"


def _head(status: int, content: bytes, extra: dict[str, str], media_type: str) -> list[bytes]:
    lines = [
        STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
        b"content-length: %d\r\ncontent-type: %s\r\n" % (len(content), media_type.encode()),
    ]
    lines += [
        b"%s: %s\r\n" % (key.lower().encode(), value.encode()) for key, value in extra.items()
    ]
    return lines
