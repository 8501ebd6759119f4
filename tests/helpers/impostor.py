"""Real HTTP servers that stand where a deployment's server should be, recording what they get.

``Impostor`` takes the port of a server that died behind the store's back and answers every
request with HTML and cookies, as a hostile process would. ``TokenHolder`` is what a genuine
server may answer too (it proves it holds the token), but with the headers a proxy must not
relay. ``RecordingProxy`` stands in for an ``HTTP_PROXY``. Each records every request line
and header it receives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HTML = b"<html><body><script>document.title = document.cookie</script>owned</body></html>"


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    """A threaded HTTP server on 127.0.0.1 that records requests; subclasses answer them."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.seen.append(Seen(self.command, self.path, list(self.headers.items())))
                status, headers, body = recorder.answer(recorder.seen[-1])
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _any

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, request: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def all_headers(self) -> list[tuple[str, str]]:
        return [h for request in self.seen for h in request.headers]

    def header_values(self, name: str) -> list[str]:
        return [v for request in self.seen for v in request.header(name)]


@dataclass
class Impostor(Recorder):
    """Answers everything with HTML that reads cookies, sets its own, and (``proof``) a
    made-up identity proof on the identity route."""

    proof: str | None = None

    def answer(self, request: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.proof is not None and request.path == "/nbdeploy/identity":
            body = json.dumps({"name": "linear", "proof": self.proof}).encode()
            return 200, [("Content-Type", "application/json")], body
        return (
            200,
            [
                ("Content-Type", "text/html"),
                ("Set-Cookie", "stolen=1; Path=/"),
                ("Set-Cookie", "_xsrf=forged; Path=/"),
            ],
            HTML,
        )


@dataclass
class TokenHolder(Recorder):
    """Proves it holds ``token`` on the identity route, then answers HTML with cookies, a
    header its ``Connection`` header names, and CORS headers: what must not be relayed."""

    token: str = ""
    html: bool = True

    def answer(self, request: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if request.path == "/nbdeploy/identity":
            nonce = request.query["nonce"][0]
            proof = hmac.new(self.token.encode(), nonce.encode(), hashlib.sha256).hexdigest()
            body = json.dumps({"name": "linear", "proof": proof, "admin_proof": None})
            return 200, [("Content-Type", "application/json")], body.encode()
        if not self.html:
            return 200, [("Content-Type", "application/json")], b'{"name": "linear"}'
        return (
            200,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Set-Cookie", "upstream=1; Path=/"),
                ("Connection", "keep-alive, X-Hop-Secret"),
                ("X-Hop-Secret", "must-not-pass"),
                ("X-Kept", "yes"),
                ("Access-Control-Allow-Origin", "https://evil.example"),
                ("Access-Control-Allow-Credentials", "true"),
                ("Content-Security-Policy", "script-src *"),
            ],
            HTML,
        )


@dataclass
class RecordingProxy(Recorder):
    """An HTTP proxy that forwards nothing: any request reaching it is a leak."""

    def answer(self, request: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        return 502, [("Content-Type", "text/plain")], b"recording proxy"


def kill_behind_the_store(pid: int, port: int, timeout: float = 10.0) -> None:
    """SIGKILL a server process (no cleanup, the store still says active) and wait until its
    port is free to bind."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError(f"port {port} still taken {timeout} s after killing pid {pid}")
