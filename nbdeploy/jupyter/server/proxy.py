"""``<base_url>/nbdeploy/proxy/<name>/<path>``: a deployment's endpoint behind Jupyter's login.

The endpoint binds 127.0.0.1 and wants its bearer token; a user of a remote Jupyter has
neither. This handler authenticates the user the Jupyter way, swaps Jupyter's credentials for
the endpoint's token server-side and streams both bodies through in chunks, with back-pressure
both ways, so a large tensor never sits whole in the Jupyter server's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
import tornado.web
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join

from nbdeploy.jupyter.server.handlers import (
    HTTP_CLIENT,
    JsonErrorsMixin,
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
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Jupyter's own credentials stay in Jupyter; the endpoint gets its token instead.
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "cookie", "x-xsrftoken"}
BODY_QUEUE_CHUNKS = 8


def upstream_request_headers(incoming: Any, token_headers: dict[str, str]) -> dict[str, str]:
    headers = {
        name: value for name, value in incoming.get_all() if name.lower() not in NOT_FORWARDED
    }
    headers.setdefault("Accept-Encoding", "identity")
    headers.update(token_headers)
    return headers


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

    async def _start_upstream(self) -> None:
        """Send the upstream request as soon as the headers are in, so bodies can stream."""
        name = self.path_kwargs["name"]
        endpoint = await find_endpoint(name)
        prefix = url_path_join(self.base_url, PROXY_PREFIX, name)
        rest = self.request.path[len(prefix) :] or "/"
        url = endpoint.url + rest + (f"?{self.request.query}" if self.request.query else "")
        headers = upstream_request_headers(self.request.headers, endpoint.headers)
        headers["X-Forwarded-For"] = self.request.remote_ip or ""
        content = None
        if self._has_body():
            self._body = asyncio.Queue(maxsize=BODY_QUEUE_CHUNKS)
            content = self._body_chunks()
        client: httpx.AsyncClient = self.settings[HTTP_CLIENT]
        request = client.build_request(self.request.method, url, headers=headers, content=content)
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

    def compute_etag(self) -> str | None:
        """The body streams through unseen, so no ETag can be computed from it."""
        return None

    async def _relay(self) -> None:
        assert self._upstream is not None
        await self._feed(None)
        name = self.path_kwargs["name"]
        try:
            response = await self._upstream
        except httpx.HTTPError as exc:
            raise http_error(502, f"the endpoint of {name} does not answer: {exc}") from exc
        try:
            self.set_status(response.status_code, response.reason_phrase or None)
            seen: set[str] = set()
            for header, value in response.headers.multi_items():
                key = header.lower()
                if key in HOP_BY_HOP:
                    continue
                if key in seen:
                    self.add_header(header, value)
                else:
                    self.set_header(header, value)
                    seen.add(key)
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
