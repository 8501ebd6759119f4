"""A small Open Inference Protocol (V2) HTTP client: JSON tensors and the binary extension."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from nbdeploy._errors import DeployError, InferenceError, InputError
from nbdeploy._types import NUMPY_TO_V2

V2_TO_NUMPY = {
    v2: np.dtype(name) if name != "str" else np.dtype(object) for name, v2 in NUMPY_TO_V2.items()
}
HEADER_LENGTH = "Inference-Header-Content-Length"
IDENTITY_PATH = "/nbdeploy/identity"
IDENTITY_TIMEOUT_S = 10.0
MAX_IDENTITY_BYTES = 16 * 1024
NAME_EXTENSION = "nbdeploy_name"
"""A request extension naming the deployment a request is for, for the identity error."""


def v2_datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return NUMPY_TO_V2[array.dtype.name]
    except KeyError:
        raise InputError(f"arrays of dtype {array.dtype} cannot be sent over V2") from None


def encode_bytes(array: np.ndarray) -> bytes:
    """BYTES tensors travel as 4-byte little-endian lengths, each followed by the bytes."""
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def decode_bytes(raw: bytes | memoryview, count: int) -> np.ndarray:
    items, offset = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return np.array(items, dtype=object)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    binary: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request; binary tensors follow the JSON header."""
    header: dict[str, Any] = {"inputs": []}
    if request_id:
        header["id"] = request_id
    chunks: list[bytes] = []
    for name, array in inputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": v2_datatype(array),
        }
        if binary:
            raw = (
                encode_bytes(array)
                if entry["datatype"] == "BYTES"
                else np.ascontiguousarray(array).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif entry["datatype"] == "BYTES":
            entry["data"] = [
                x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)
            ]
        else:
            entry["data"] = array.reshape(-1).tolist()
        header["inputs"].append(entry)
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        header["parameters"] = {"binary_data_output": True}
    head = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def decode_response(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Output arrays by name from a JSON or binary infer response."""
    length = headers.get(HEADER_LENGTH) or headers.get(HEADER_LENGTH.lower())
    head_len = int(length) if length is not None else len(body)
    header = json.loads(body[:head_len])
    view = memoryview(body)
    offset = head_len
    result: dict[str, np.ndarray] = {}
    for out in header.get("outputs", []):
        shape = [int(d) for d in out["shape"]]
        dtype = V2_TO_NUMPY[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = view[offset : offset + size]
            offset += size
            count = int(np.prod(shape)) if shape else 1
            array = (
                decode_bytes(raw, count)
                if out["datatype"] == "BYTES"
                else np.frombuffer(raw, dtype=dtype)
            )
        else:
            array = np.asarray(out["data"], dtype=dtype)
        result[out["name"]] = array.reshape(shape)
    return result


def identity_proof(token: str, nonce: str) -> str:
    """What a server holding ``token`` answers to ``nonce``: hex HMAC-SHA256 of the nonce."""
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def not_the_server(host: str, port: int | None, name: str | None, reason: str) -> DeployError:
    """The error for a process that failed the identity challenge (it was sent no token)."""
    whose = f"{name}'s" if name else "the deployment's"
    return DeployError(
        f"the process on {host}:{port} is not {whose} server (it could not prove it holds the"
        f" deployment's token); nothing was sent to it ({reason})"
    )


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses: no proxy may stand in between."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class IdentityChallenge:
    """One ``GET /nbdeploy/identity?nonce=...`` over a connection just opened, without I/O.

    The challenge travels on the very connection the token will use next, so the process that
    proves it holds the token is the one that receives it: a server that died and left its port
    to another process cannot pass, even within a keep-alive or cache window.
    """

    def __init__(self, host: str, port: int | None) -> None:
        import h11

        self.host, self.port = host, port
        self.nonce = secrets.token_hex(16)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_IDENTITY_BYTES)
        self._status = 0
        self._body = bytearray()
        self._complete = False
        self.answered = False
        """Whether any byte of an answer came back (else the server is unreachable, not false)."""

    def request(self) -> bytes:
        import h11

        authority = self.host if self.port is None else f"{self.host}:{self.port}"
        target = f"{IDENTITY_PATH}?nonce={self.nonce}"
        headers = [("Host", authority), ("Accept", "application/json")]
        head = self._h11.send(h11.Request(method="GET", target=target, headers=headers))
        return (head or b"") + (self._h11.send(h11.EndOfMessage()) or b"")

    def receive(self, data: bytes) -> bool:
        """Feed what the server sent (``b""`` at end of stream); True once the answer is in.

        Raises ValueError for an answer that is not HTTP or is too long to be an identity.
        """
        import h11

        self.answered = self.answered or bool(data)
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ValueError(f"it did not answer in HTTP/1.1: {exc}") from exc
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                self._status = event.status_code
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_IDENTITY_BYTES:
                    raise ValueError("its identity answer is too long")
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
                return True
            elif isinstance(event, h11.ConnectionClosed):
                raise ValueError("it closed the connection without answering")

    @property
    def reusable(self) -> bool:
        """Whether the connection can carry the next request (the server kept it open)."""
        import h11

        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def failure(self, token: str, key: str = "proof") -> str | None:
        """None when the answer proves the server holds ``token``, else why it does not
        (``key``: ``proof`` for the inference token, ``admin_proof`` for the admin token)."""
        if not self._complete:
            return "it did not answer the identity challenge"
        if self._status != 200:
            return f"it answered the identity challenge with HTTP {self._status}"
        try:
            answer = json.loads(bytes(self._body))
        except ValueError:
            return "its identity answer is not JSON"
        proof = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(proof, str) or not hmac.compare_digest(
            proof.encode(), identity_proof(token, self.nonce).encode()
        ):
            return "its proof does not match the token"
        return None


class _Stream(Protocol):
    def read(self, max_bytes: int, timeout: float | None = None) -> bytes: ...
    def write(self, buffer: bytes, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


def prove_identity(
    stream: _Stream,
    host: str,
    port: int | None,
    token: str,
    name: str | None,
    key: str = "proof",
) -> None:
    """Run the identity challenge on ``stream`` (an httpcore network stream, just connected);
    close it and raise the DeployError of :func:`not_the_server` unless the server proves it
    holds ``token``, or httpcore's ConnectError when nothing answered at all (a port that
    accepts and hangs up, like Docker's proxy while a container restarts: unreachable)."""
    import httpcore

    challenge = IdentityChallenge(host, port)
    try:
        stream.write(challenge.request(), timeout=IDENTITY_TIMEOUT_S)
        while not challenge.receive(stream.read(65536, timeout=IDENTITY_TIMEOUT_S)):
            pass
        reason = challenge.failure(token, key)
    except (httpcore.NetworkError, httpcore.TimeoutException, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
    if reason is None and not challenge.reusable:
        reason = "it closed the connection after the identity challenge"
    if reason is not None:
        stream.close()
        if not challenge.answered:
            raise httpcore.ConnectError(f"nothing answered on {host}:{port} ({reason})")
        raise not_the_server(host, port, name, reason)


def prove_identity_on_socket(
    sock: socket.socket,
    host: str,
    port: int | None,
    token: str,
    name: str | None,
    key: str = "proof",
) -> None:
    """:func:`prove_identity` over a connected plain socket (``http.client`` connections);
    nothing answering is a ConnectionError there."""
    import httpcore

    previous = sock.gettimeout()
    sock.settimeout(IDENTITY_TIMEOUT_S)
    try:
        prove_identity(_SocketStream(sock), host, port, token, name, key)
    except httpcore.ConnectError as exc:
        raise ConnectionError(str(exc)) from exc
    finally:
        if sock.fileno() != -1:  # closed when the proof failed
            sock.settimeout(previous)


class _SocketStream:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._sock.sendall(buffer)

    def close(self) -> None:
        self._sock.close()


def _identity_transport(token: str, name: str | None, trust_env: bool) -> Any:
    """An httpx transport that proves the server's identity on every connection it opens,
    before the first request (and its token) goes out on it."""
    import httpx

    class VerifyingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            request.extensions = {
                **request.extensions,
                "trace": _tracer(request, token, name, request.extensions.get("trace")),
            }
            return super().handle_request(request)

    return VerifyingTransport(trust_env=trust_env)


def _tracer(
    request: Any, token: str, name: str | None, outer: Callable[[str, dict[str, Any]], Any] | None
) -> Callable[[str, dict[str, Any]], None]:
    secure = request.url.scheme == "https"
    opened = "connection.start_tls.complete" if secure else "connection.connect_tcp.complete"
    whose = name or request.extensions.get(NAME_EXTENSION)

    def trace(event: str, info: dict[str, Any]) -> None:
        if event == opened:
            prove_identity(info["return_value"], request.url.host, request.url.port, token, whose)
        if outer is not None:
            outer(event, info)

    return trace


class V2Client:
    """Keeps one pooled HTTP connection to an endpoint; every call raises a readable error.

    With a token, every connection is opened with the identity challenge: the token is sent
    only to a process that proves it holds it (see :class:`IdentityChallenge`). Proxy
    variables of the environment are ignored for loopback URLs: a token for 127.0.0.1 must not
    travel through a proxy.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.name = name
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        trust_env = not is_loopback(httpx.URL(self.url).host)
        transport = _identity_transport(token, name, trust_env) if token else None
        self._http = httpx.Client(
            base_url=self.url,
            headers=self.headers,
            timeout=timeout,
            trust_env=trust_env,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, model: str | None = None) -> Any:
        response = self._send("GET", path, model=model)
        return response.json()

    def _send(self, method: str, path: str, *, model: str | None = None, **kwargs: Any) -> Any:
        import httpx

        extensions = {NAME_EXTENSION: self.name or model} if self.name or model else None
        try:
            response = self._http.request(method, path, extensions=extensions, **kwargs)
        except httpx.HTTPError as exc:
            raise DeployError(f"cannot reach the endpoint at {self.url}{path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise InferenceError(response.status_code, message)
        return response

    def ready(self) -> bool:
        import httpx

        try:
            return self._http.get("/v2/health/ready", timeout=2.0).status_code == 200
        except (httpx.HTTPError, DeployError):
            return False

    def server_metadata(self) -> dict[str, Any]:
        return self._get("/v2")

    def metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        return self._get(_model_path(model, version), model)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        version: int | None = None,
    ) -> dict[str, np.ndarray]:
        body, headers = encode_request(inputs, outputs=outputs, binary=binary)
        response = self._send(
            "POST",
            _model_path(model, version) + "/infer",
            model=model,
            content=body,
            headers=headers,
        )
        return decode_response(response.content, response.headers)


def _model_path(model: str, version: int | None) -> str:
    path = f"/v2/models/{model}"
    return path if version is None else f"{path}/versions/{version}"
