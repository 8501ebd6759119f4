"""``<base_url>/nbdeploy/proxy/<name>/<path>``: a deployment's endpoint behind Jupyter's login.

The endpoint binds 127.0.0.1 and wants its bearer token; a user of a remote Jupyter has
neither. This handler authenticates the user the Jupyter way, swaps Jupyter's credentials for
the endpoint's token server-side and streams both bodies through in chunks, with back-pressure
both ways, so a large tensor never sits whole in the Jupyter server's memory.

Whatever listens on the endpoint's port is not trusted until it proves otherwise: every
connection the proxy opens starts with the identity challenge (the server answers an HMAC of
a fresh nonce keyed with the endpoint's token), so a process that took the port of a dead
server gets neither the token nor the request. Nothing of Jupyter's reaches the endpoint
(credential headers, cookies, the ``token`` query parameter), and nothing of the endpoint's
can act on Jupyter's origin: cookies and hop-by-hop headers are dropped, and every answer is
served under ``Content-Security-Policy: sandbox`` with ``nosniff``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.cookiejar
import json
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import h11
import httpcore
import httpx
import tornado.web
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join

from nbdeploy.jupyter.server.handlers import (
    HTTP_CLIENT,
    JsonErrorsMixin,
    check_deployment_name,
    find_endpoint,
    http_error,
)
from nbdeploy.vocabulary import PROXY_PREFIX

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Jupyter's own credentials stay in Jupyter (a Referer can hold its ?token=); the endpoint
# gets its token instead.
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "authorization",
    "cookie",
    "x-xsrftoken",
    "x-csrftoken",
    "referer",
    "forwarded",
    "x-forwarded-for",
}
# Headers through which an answer could act on Jupyter's origin or override the sandbox.
NOT_RELAYED = HOP_BY_HOP | {
    "set-cookie",
    "set-cookie2",
    "clear-site-data",
    "refresh",
    "alt-svc",
    "content-security-policy",
    "content-security-policy-report-only",
    "x-content-type-options",
}
NOT_RELAYED_PREFIXES = ("access-control-",)
JUPYTER_QUERY = frozenset({"token", "_xsrf"})
SANDBOX_POLICY = "sandbox; frame-ancestors 'self'"
PATH_SAFE = "/:@!$&'()*+,;=~"
BODY_QUEUE_CHUNKS = 8

IDENTITY_PATH = "/nbdeploy/identity"
IDENTITY_TIMEOUT_S = 10.0
MAX_IDENTITY_BYTES = 16 * 1024
NAME_EXTENSION = "nbdeploy_name"
"""A request extension naming the deployment a request is for, for the identity error."""
MAX_POOLS = 32


class IdentityError(httpx.TransportError):
    """The process on an endpoint's port could not prove it holds the endpoint's token; it
    was sent nothing. A transport error, so every caller that maps an unreachable endpoint to
    502 does the same for an impostor."""


def connection_named(values: Iterable[str]) -> set[str]:
    """Header names a ``Connection`` header lists: hop-by-hop for this one connection."""
    return {part.strip().lower() for value in values for part in value.split(",") if part.strip()}


def upstream_request_headers(incoming: Any, token_headers: dict[str, str]) -> dict[str, str]:
    """The client's headers minus Jupyter's credentials and hop-by-hop headers, plus the
    endpoint's token."""
    dropped = NOT_FORWARDED | connection_named(incoming.get_list("Connection"))
    headers = {name: value for name, value in incoming.get_all() if name.lower() not in dropped}
    headers["Accept-Encoding"] = "identity"
    headers.update(token_headers)
    return headers


def relayed_response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The endpoint's response headers that may reach the browser on Jupyter's origin."""
    dropped = NOT_RELAYED | connection_named(headers.get_list("connection"))
    return [
        (name, value)
        for name, value in headers.multi_items()
        if name.lower() not in dropped and not name.lower().startswith(NOT_RELAYED_PREFIXES)
    ]


def upstream_query(query: str) -> bytes:
    """The query string without Jupyter's ``token`` and ``_xsrf`` parameters."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k not in JUPYTER_QUERY]).encode()


def checked_path(path: str) -> str:
    """The decoded path below the deployment's prefix, percent-encoded again; 400 for dot
    segments and control characters, which no endpoint route has."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise http_error(400, "the proxied path must not contain '.' or '..' segments")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise http_error(400, "the proxied path must not contain control characters")
    return quote(path, safe=PATH_SAFE)


# ------------------------------------------------------------------------ identity challenge


def identity_proof(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def impostor_message(host: str, port: int | None, name: str | None, reason: str) -> str:
    whose = f"{name}'s" if name else "the deployment's"
    return (
        f"the process on {host}:{port} is not {whose} server (it could not prove it holds the"
        f" deployment's token); nothing was sent to it ({reason})"
    )


async def _identity_answer(
    stream: Any, conn: h11.Connection, answered: list[bool]
) -> tuple[int, bytes]:
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.read(65536, timeout=IDENTITY_TIMEOUT_S)
            answered[0] = answered[0] or bool(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_IDENTITY_BYTES:
                raise ValueError("its identity answer is too long")
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise ValueError("it closed the connection without answering")


def _proof_failure(status: int, body: bytes, token: str, nonce: str) -> str | None:
    if status != 200:
        return f"it answered the identity challenge with HTTP {status}"
    try:
        answer = json.loads(body)
    except ValueError:
        return "its identity answer is not JSON"
    proof = answer.get("proof") if isinstance(answer, dict) else None
    if not isinstance(proof, str) or not hmac.compare_digest(
        proof.encode(), identity_proof(token, nonce).encode()
    ):
        return "its proof does not match the token"
    return None


async def prove_identity(
    stream: Any, host: str, port: int | None, token: str, name: str | None
) -> None:
    """Run the challenge on a connection just opened (an httpcore stream); close it and raise
    IdentityError unless the server proves it holds ``token`` (httpcore's ConnectError when
    nothing answered at all: the endpoint is unreachable, not false)."""
    nonce = secrets.token_hex(16)
    answered = [False]
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_IDENTITY_BYTES)
    headers = [("Host", f"{host}:{port}"), ("Accept", "application/json")]
    request = h11.Request(method="GET", target=f"{IDENTITY_PATH}?nonce={nonce}", headers=headers)
    try:
        await stream.write(
            (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""),
            timeout=IDENTITY_TIMEOUT_S,
        )
        status, body = await _identity_answer(stream, conn, answered)
        reason = _proof_failure(status, body, token, nonce)
    except (httpcore.NetworkError, httpcore.TimeoutException, h11.ProtocolError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
    except ValueError as exc:
        reason = str(exc)
    if reason is None and not (conn.our_state is h11.DONE and conn.their_state is h11.DONE):
        reason = "it closed the connection after the identity challenge"
    if reason is not None:
        await stream.aclose()
        if not answered[0]:
            raise httpcore.ConnectError(f"nothing answered on {host}:{port} ({reason})")
        raise IdentityError(impostor_message(host, port, name, reason))


Trace = Callable[[str, dict[str, Any]], Awaitable[None]]


class VerifyingTransport(httpx.AsyncHTTPTransport):
    """A connection pool for one endpoint token: each connection proves the server's identity
    before the first request (and the token) goes out on it."""

    def __init__(self, token: str) -> None:
        super().__init__(trust_env=False)
        self._token = token

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        token, name = self._token, request.extensions.get(NAME_EXTENSION)
        host, port = request.url.host, request.url.port
        outer: Trace | None = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.complete":
                await prove_identity(info["return_value"], host, port, token, name)
            if outer is not None:
                await outer(event, info)

        request.extensions = {**request.extensions, "trace": trace}
        return await super().handle_async_request(request)


class EndpointTransport(httpx.AsyncBaseTransport):
    """Routes each request to the pool of its bearer token (a connection proven for one token
    never carries another); requests without a token share a pool of their own."""

    def __init__(self) -> None:
        self._pools: OrderedDict[str | None, httpx.AsyncBaseTransport] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization")
        token = None
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise IdentityError("only a bearer token can be sent to an endpoint")
            token = token.strip()
        pool = self._pools.pop(token, None)
        if pool is None:
            pool = VerifyingTransport(token) if token else httpx.AsyncHTTPTransport(trust_env=False)
        self._pools[token] = pool
        if len(self._pools) > MAX_POOLS:
            _, oldest = self._pools.popitem(last=False)
            await oldest.aclose()
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            await pool.aclose()


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Keeps nothing an endpoint sets and sends nothing: one endpoint's cookies (or an
    impostor's) must never be replayed to another."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def upstream_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The client the proxy and the metrics route share: identity-checked connections, no
    cookie jar, no proxy from the environment, no redirects followed."""
    return httpx.AsyncClient(
        transport=EndpointTransport(),
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
    )


# ---------------------------------------------------------------------------------- handler


@tornado.web.stream_request_body
class ProxyHandler(JsonErrorsMixin, JupyterHandler):
    """Forward any method to the deployment's endpoint and stream the answer back."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    _upstream: asyncio.Future[httpx.Response] | None = None
    _body: asyncio.Queue[bytes | None] | None = None

    async def prepare(self) -> None:
        await super().prepare()
        opening = None if self._finished else self._open_upstream()
        if opening is not None:
            await opening

    @tornado.web.authenticated
    def _open_upstream(self) -> Coroutine[Any, Any, None]:
        """Start the upstream request once the user is known (None after a login redirect)."""
        return self._start_upstream()

    def _upstream_path(self, name: str) -> str:
        """The path to ask the endpoint for, from the validated name and the parsed rest; 400
        for an invalid name or one written percent-encoded (the raw path must spell it)."""
        check_deployment_name(name)
        prefix = url_path_join(self.base_url, PROXY_PREFIX, name)
        raw = self.request.path
        if raw != prefix and not raw.startswith(prefix + "/"):
            raise http_error(
                400, f"write the deployment name {name!r} as is in the proxy path, not encoded"
            )
        return checked_path(self.path_kwargs.get("path") or "/")

    async def _start_upstream(self) -> None:
        """Send the upstream request as soon as the headers are in, so bodies can stream."""
        name = self.path_kwargs["name"]
        path = self._upstream_path(name)
        endpoint = await find_endpoint(name)
        base = httpx.URL(endpoint.url)
        url = httpx.URL(
            scheme=base.scheme,
            host=base.host,
            port=base.port,
            path=path,
            query=upstream_query(self.request.query),
        )
        headers = upstream_request_headers(self.request.headers, endpoint.headers)
        headers["X-Forwarded-For"] = self.request.remote_ip or ""
        content = None
        if self._has_body():
            self._body = asyncio.Queue(maxsize=BODY_QUEUE_CHUNKS)
            content = self._body_chunks()
        client: httpx.AsyncClient = self.settings[HTTP_CLIENT]
        request = client.build_request(
            self.request.method or "GET",
            url,
            headers=headers,
            content=content,
            extensions={NAME_EXTENSION: name},
        )
        self._upstream = asyncio.ensure_future(client.send(request, stream=True))

    def _has_body(self) -> bool:
        headers = self.request.headers
        return "Transfer-Encoding" in headers or int(headers.get("Content-Length") or 0) > 0

    async def _body_chunks(self) -> AsyncIterator[bytes]:
        assert self._body is not None
        while (chunk := await self._body.get()) is not None:
            yield chunk

    async def data_received(self, chunk: bytes) -> None:
        await self._feed(chunk)

    async def _feed(self, item: bytes | None) -> None:
        """Queue a body chunk (None ends the body) for the upstream sender, waiting while the
        queue is full; drop it once the upstream request has finished or failed."""
        if self._body is None or self._upstream is None or self._upstream.done():
            return
        put = asyncio.ensure_future(self._body.put(item))
        await asyncio.wait({put, self._upstream}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    def on_connection_close(self) -> None:
        if self._upstream is not None and not self._upstream.done():
            self._upstream.cancel()
        super().on_connection_close()

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Log refusals by path only: tornado's summary holds the query, and with it the
        Jupyter ``?token=`` the user may have sent."""
        if isinstance(value, tornado.web.HTTPError):
            where = f"{self.request.method} {self.request.path}"
            self.log.warning("%d %s: %s", value.status_code, where, value.get_message())
        else:
            super().log_exception(typ, value, tb)

    def compute_etag(self) -> str | None:
        """The body streams through unseen, so no ETag can be computed from it."""
        return None

    async def _relay(self) -> None:
        assert self._upstream is not None
        await self._feed(None)
        name = self.path_kwargs["name"]
        try:
            response = await self._upstream
        except IdentityError as exc:
            raise http_error(502, str(exc)) from exc
        except httpx.HTTPError as exc:
            raise http_error(502, f"the endpoint of {name} does not answer: {exc}") from exc
        try:
            self.set_status(response.status_code, response.reason_phrase or None)
            self.clear_header("Content-Type")
            seen: set[str] = set()
            for header, value in relayed_response_headers(response.headers):
                key = header.lower()
                if key in seen:
                    self.add_header(header, value)
                else:
                    self.set_header(header, value)
                    seen.add(key)
            if "content-type" not in seen:
                self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Security-Policy", SANDBOX_POLICY)
            self.set_header("X-Content-Type-Options", "nosniff")
            async for chunk in response.aiter_raw():
                self.write(chunk)
                await self.flush()
        finally:
            await response.aclose()
        self.finish()

    @tornado.web.authenticated
    async def get(self, name: str, path: str | None = None) -> None:
        await self._relay()

    head = post = put = patch = delete = options = get
