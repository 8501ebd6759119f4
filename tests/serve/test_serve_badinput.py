"""Every client mistake gets a 4xx ``{"error": ...}`` naming it, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers.serve import (
    LOOKUP_TABLE,
    ServerProcess,
    binary_body,
    decode_response,
    mlp_weights,
    save_lookup,
    save_mlp,
    save_pair,
    save_text,
    start_server,
)

TOKEN = "bad-input-token"
MAX_BODY = 64 * 1024
GOOD_X = [[0.5, -1.0, 2.0, 0.25]]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("badinput-repo")
    save_mlp(root / "mlp" / "1", seed=1)
    save_pair(root / "pair" / "1")
    save_text(root / "text" / "1")
    save_lookup(root / "lookup" / "1")
    return root


def _start(repository: Path, logs: Path, *args: str) -> ServerProcess:
    return start_server(
        repository,
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-queue-delay-ms",
        "50",
        *args,
        log_path=logs / "server.log",
        token=TOKEN,
    )


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    running = _start(repository, tmp_path_factory.mktemp("badinput-logs"))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def merging_server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every run on the model's thread (``--inline-run-us 0``), so concurrent requests to the
    quick lookup model are merged."""
    running = _start(
        repository, tmp_path_factory.mktemp("badinput-merging-logs"), "--inline-run-us", "0"
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


def x_input(**changes: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": GOOD_X, **changes}


def pair_inputs() -> list[dict[str, Any]]:
    return [
        {"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]},
        {"name": "b", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
        {"name": "flag", "datatype": "BOOL", "shape": [1, 3], "data": [True, False, True]},
    ]


def binary_request(header: dict[str, Any], binary: bytes, declared: int | None = None):
    head = json.dumps(header).encode()
    length = len(head) if declared is None else declared
    return head + binary, {"Inference-Header-Content-Length": str(length)}


def bytes_element(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "little") + raw


def text_header(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": shape or [1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


@dataclass
class Case:
    id: str
    status: int
    needle: str
    path: str = "/v2/models/mlp/infer"
    method: str = "POST"
    json: Any = None
    content: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True


def _x_binary(size: int, shape: list[int], data: bytes):
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    return binary_request(header, data)


SIXTEEN_BYTES = np.zeros(4, dtype=np.float32).tobytes()
_short_body, _short_headers = _x_binary(16, [1, 4], SIXTEEN_BYTES[:12])
_long_body, _long_headers = _x_binary(16, [1, 4], SIXTEEN_BYTES + b"\0\0\0\0")
_size_body, _size_headers = _x_binary(12, [1, 4], SIXTEEN_BYTES[:12])
_huge_body, _huge_headers = _x_binary(16, [10**12, 4], SIXTEEN_BYTES)
_good_binary, _good_binary_headers = binary_body([("x", "FP32", np.ones((1, 4), np.float32))])
_no_header_body = json.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 4],
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
).encode()
_cut_prefix = binary_request(text_header(6), bytes_element(b"a") + b"\x01")
_overlong = binary_request(text_header(9), (100).to_bytes(4, "little") + b"abcde")
_not_utf8 = binary_request(text_header(6), bytes_element(b"\xff\xfe"))
_too_few = binary_request(text_header(6, [2]), bytes_element(b"ab"))
_big_payload = json.dumps({"inputs": [x_input(data=[[0.0] * 4] * 5000)]}).encode()
_gzip_bomb = gzip.compress(b" " * (MAX_BODY * 4) + json.dumps({"inputs": [x_input()]}).encode())


def _chunks(total: int, size: int = 8192):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def _no_data_input() -> dict[str, Any]:
    spec = x_input()
    del spec["data"]
    return spec


CASES = [
    Case("unknown model", 404, "unknown model 'nope'", "/v2/models/nope/infer", json={"inputs": [x_input()]}),
    Case("unknown version", 404, "has no version '7'", "/v2/models/mlp/versions/7/infer", json={"inputs": [x_input()]}),
    Case("non-numeric version", 404, "has no version 'latest'", "/v2/models/mlp/versions/latest/infer", json={"inputs": [x_input()]}),
    Case("metadata of unknown model", 404, "unknown model", "/v2/models/nope", "GET"),
    Case("missing input", 400, "missing ['flag']", "/v2/models/pair/infer", json={"inputs": pair_inputs()[:2]}),
    Case("extra input", 400, "unexpected ['y']", json={"inputs": [x_input(), x_input(name="y")]}),
    Case("duplicate input", 400, "'x' appears more than once", json={"inputs": [x_input(), x_input()]}),
    Case("wrong datatype", 400, "expects datatype FP32, the request gives INT64", json={"inputs": [x_input(datatype="INT64", data=[[1, 2, 3, 4]])]}),
    Case("unknown datatype", 400, "datatype 'FP8'", json={"inputs": [x_input(datatype="FP8")]}),
    Case("unsupported BF16", 400, "supported datatypes are", json={"inputs": [x_input(datatype="BF16")]}),
    Case("shape not matching model", 400, "expects shape [-1, 4] (-1 = any size), the request gives [1, 5]", json={"inputs": [x_input(shape=[1, 5], data=[1, 2, 3, 4, 5])]}),
    Case("wrong rank", 400, "the request gives [4]", json={"inputs": [x_input(shape=[4], data=[1, 2, 3, 4])]}),
    Case("element count disagrees with data", 400, '(8 elements) but its "data" holds 4', json={"inputs": [x_input(shape=[2, 4])]}),
    Case("huge shape with little data", 400, 'but its "data" holds 4', json={"inputs": [x_input(shape=[10**12, 4])]}),
    Case("negative dimension", 400, "non-negative integers", json={"inputs": [x_input(shape=[-1, 4])]}),
    Case("shape not a list", 400, '"shape" list', json={"inputs": [x_input(shape="1,4")]}),
    Case("strings for FP32", 400, 'is FP32 but its "data" holds strings', json={"inputs": [x_input(data=[["a", "b", "c", "d"]])]}),
    Case("booleans for FP32", 400, "holds booleans", json={"inputs": [x_input(data=[[True, False, True, True]])]}),
    Case("ragged data", 400, "evenly nested", json={"inputs": [x_input(shape=[2, 2], data=[[1.0, 2.0, 3.0], [4.0]])]}),
    Case("floats for INT64", 400, "INT64 but its \"data\" holds non-integer numbers", "/v2/models/pair/infer", json={"inputs": [*pair_inputs()[:1], {**pair_inputs()[1], "data": [1.5, 2, 3]}, pair_inputs()[2]]}),
    Case("integer out of range", 400, "outside the INT64 range", "/v2/models/pair/infer", json={"inputs": [*pair_inputs()[:1], {**pair_inputs()[1], "data": [2**70, 2, 3]}, pair_inputs()[2]]}),
    Case("numbers for BOOL", 400, "BOOL but its \"data\" holds integers", "/v2/models/pair/infer", json={"inputs": [*pair_inputs()[:2], {**pair_inputs()[2], "data": [1, 0, 1]}]}),
    Case("numbers for BYTES", 400, "must hold strings", "/v2/models/text/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [5]}]}),
    Case("malformed JSON", 400, "not valid JSON", content=b'{"inputs": [', headers={"Content-Type": "application/json"}),
    Case("JSON that is not an object", 400, '"inputs" list', json=[x_input()]),
    Case("no inputs", 400, '"inputs" list', json={"outputs": []}),
    Case("empty inputs", 400, '"inputs" list', json={"inputs": []}),
    Case("input not an object", 400, "inputs[0] must be a JSON object", json={"inputs": ["x"]}),
    Case("input without name", 400, 'inputs[0] needs a "name"', json={"inputs": [{"datatype": "FP32", "shape": [1, 4], "data": GOOD_X}]}),
    Case("input without data", 400, 'neither "data" nor a binary_data_size', json={"inputs": [_no_data_input()]}),
    Case("data and binary size", 400, 'both "data" and a binary_data_size', json={"inputs": [x_input(parameters={"binary_data_size": 16})]}),
    Case("parameters not an object", 400, '"parameters" of the request must be a JSON object', json={"inputs": [x_input()], "parameters": [1]}),
    Case("binary_data_output not a boolean", 400, "must be true or false", json={"inputs": [x_input()], "parameters": {"binary_data_output": "yes"}}),
    Case("HTML content type", 415, "unsupported Content-Type 'text/html'", content=json.dumps({"inputs": [x_input()]}), headers={"Content-Type": "text/html"}),
    Case("multipart content type", 415, "unsupported Content-Type", content=b"--x--", headers={"Content-Type": "multipart/form-data; boundary=x"}),
    Case("unknown output", 400, "has no output 'nope'; its outputs are ['logits', 'probs']", json={"inputs": [x_input()], "outputs": [{"name": "nope"}]}),
    Case("duplicate output", 400, "output 'probs' is requested more than once", json={"inputs": [x_input()], "outputs": [{"name": "probs"}, {"name": "probs"}]}),
    Case("classification of strings", 400, "classification needs a numeric output", "/v2/models/text/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": [{"name": "lower", "parameters": {"classification": 1}}]}),
    Case("binary section shorter than declared", 400, "binary section is shorter than declared: it holds 12 bytes", content=_short_body, headers=_short_headers),
    Case("binary section longer than declared", 400, "binary section is longer than declared: it holds 20 bytes", content=_long_body, headers=_long_headers),
    Case("binary size not matching shape", 400, "which is 16 bytes, but its binary_data_size is 12", content=_size_body, headers=_size_headers),
    Case("binary size of a huge shape", 400, "but its binary_data_size is 16", content=_huge_body, headers=_huge_headers),
    Case("binary without header length", 400, "no Inference-Header-Content-Length header", content=_no_header_body),
    Case("header length beyond the body", 400, "says 100000 bytes of JSON", content=_good_binary, headers={**_good_binary_headers, "Inference-Header-Content-Length": "100000"}),
    Case("header length not a number", 400, "must be an integer", content=_good_binary, headers={**_good_binary_headers, "Inference-Header-Content-Length": "ten"}),
    Case("BYTES cut inside a length prefix", 400, "ends inside a length prefix", "/v2/models/text/infer", content=_cut_prefix[0], headers=_cut_prefix[1]),
    Case("BYTES element longer than its data", 400, "declares 100 bytes but only 5 remain", "/v2/models/text/infer", content=_overlong[0], headers=_overlong[1]),
    Case("BYTES not UTF-8", 400, "not valid UTF-8", "/v2/models/text/infer", content=_not_utf8[0], headers=_not_utf8[1]),
    Case("BYTES element count", 400, "(2 elements) but its binary data holds 1", "/v2/models/text/infer", content=_too_few[0], headers=_too_few[1]),
    Case("body over the limit by Content-Length", 413, f"the limit is {MAX_BODY} bytes, got {len(_big_payload)} bytes", content=_big_payload, headers={"Content-Type": "application/json"}),
    Case("chunked body over the limit", 413, f"got more than {MAX_BODY} bytes", content=lambda: _chunks(MAX_BODY + 5000)),
    Case("gzip body over the limit once decompressed", 413, "once decompressed", content=_gzip_bomb, headers={"Content-Encoding": "gzip"}),
    Case("body that is not gzip", 400, "not valid gzip data", content=b"plain", headers={"Content-Encoding": "gzip"}),
    Case("unknown content encoding", 415, "unsupported Content-Encoding 'br'", content=b"{}", headers={"Content-Encoding": "br"}),
    Case("no token", 401, "needs an 'Authorization: Bearer <token>' header", json={"inputs": [x_input()]}, auth=False),
    Case("wrong token", 401, "not valid", json={"inputs": [x_input()]}, headers={"Authorization": "Bearer nope"}, auth=False),
    Case("GET on infer", 405, "GET is not allowed", method="GET"),
    Case("unknown route", 404, "no route /v2/modelz", "/v2/modelz", "GET"),
    Case("input that onnxruntime refuses", 400, "model 'lookup' cannot run on this input", "/v2/models/lookup/infer", json={"inputs": [{"name": "idx", "datatype": "INT64", "shape": [1, 1], "data": [9]}]}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_request_is_refused_and_the_server_keeps_serving(
    case: Case, server: ServerProcess, client: httpx.Client
):
    headers = {**(server.headers if case.auth else {}), **case.headers}
    content = case.content() if callable(case.content) else case.content
    with httpx.Client(base_url=server.url, timeout=60) as fresh:
        response = fresh.request(
            case.method, case.path, json=case.json, content=content, headers=headers
        )
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert case.needle in body["error"], body["error"]

    good = client.post("/v2/models/mlp/infer", json={"inputs": [x_input()]})
    assert good.status_code == 200, good.text
    weight, bias = mlp_weights(1)
    expected = np.asarray(GOOD_X, dtype=np.float32) @ weight + bias
    np.testing.assert_allclose(decode_response(good)["logits"], expected, rtol=1e-5)


def test_one_bad_request_in_a_merged_batch_fails_alone(merging_server: ServerProcess):
    server = merging_server
    indices = [9 if i % 4 == 3 else i % 5 for i in range(16)]
    barrier = threading.Barrier(len(indices))

    def send(index: int) -> httpx.Response:
        payload = {
            "inputs": [{"name": "idx", "datatype": "INT64", "shape": [1, 1], "data": [index]}]
        }
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
            barrier.wait()
            return c.post("/v2/models/lookup/infer", json=payload)

    # Whether the burst is merged depends on timing (a request may be answered before the next
    # one is read): repeat it until one was, checking every answer.
    for _ in range(10):
        with ThreadPoolExecutor(len(indices)) as pool:
            responses = list(pool.map(send, indices))
        for index, response in zip(indices, responses, strict=True):
            if index >= len(LOOKUP_TABLE):
                assert response.status_code == 400
                assert "cannot run on this input" in response.json()["error"]
            else:
                assert response.status_code == 200, response.text
                row = decode_response(response)["row"]
                np.testing.assert_array_equal(row, LOOKUP_TABLE[[[index]]])
        if "a merged batch of" in server.log():
            break
    assert "a merged batch of" in server.log()


def test_no_request_ever_got_a_500(server: ServerProcess):
    text = httpx.get(f"{server.url}/metrics").text
    assert 'status="500"' not in text
    assert "Traceback" not in server.log()


def test_token_is_compared_exactly(server: ServerProcess):
    near_misses = [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}x"]
    for token in near_misses:
        response = httpx.get(
            f"{server.url}/v2/models/mlp", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token
    ok = httpx.get(f"{server.url}/v2/models/mlp", headers={"authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200
