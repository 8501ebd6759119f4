"""A small Open Inference Protocol (V2) HTTP client: JSON tensors and the binary extension."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbdeploy._errors import DeployError, InferenceError, InputError
from nbdeploy._types import NUMPY_TO_V2

V2_TO_NUMPY = {
    v2: np.dtype(name) if name != "str" else np.dtype(object) for name, v2 in NUMPY_TO_V2.items()
}
HEADER_LENGTH = "Inference-Header-Content-Length"


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


class V2Client:
    """Keeps one pooled HTTP connection to an endpoint; every call raises a readable error."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str) -> Any:
        response = self._send("GET", path)
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
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
        except httpx.HTTPError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        return self._get("/v2")

    def metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        return self._get(_model_path(model, version))

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
            "POST", _model_path(model, version) + "/infer", content=body, headers=headers
        )
        return decode_response(response.content, response.headers)


def _model_path(model: str, version: int | None) -> str:
    path = f"/v2/models/{model}"
    return path if version is None else f"{path}/versions/{version}"
