"""The fast lane (``nbdeploy/serve/fastlane.py``) answers exactly as the ASGI lane does.

A V2 infer request whose body comes whole with its head is answered by the fast lane; the
same request with its body sent a moment after its head takes the ASGI lane. Every request
below is sent both ways over raw sockets and must get the same status, the same body and the
same headers that matter, good requests and every kind of refusal alike.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from tests.helpers.serve import (
    ServerProcess,
    assert_all_given_back,
    build_repository,
    metric_value,
    metrics_text,
    reference,
    save_slow_mlp,
    start_server,
)

TOKEN = "fast-lane-token"
ROWS = np.arange(8, dtype=np.float32).reshape(2, 4) / 3


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repository(tmp_path_factory.mktemp("fastlane-repo"))
    save_slow_mlp(root / "slow" / "1")
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("fastlane-logs")
    running = start_server(
        repository, "--request-timeout-s", "5", log_path=logs / "server.log", token=TOKEN
    )
    yield running
    running.stop()


def request(
    path: str, body: bytes, headers: dict[str, str] | None = None, *, token: str | None = TOKEN
) -> tuple[bytes, bytes]:
    """The head and body of a POST, with Content-Length and the bearer token by default."""
    fields = {"Host": "127.0.0.1", "Content-Type": "application/json"}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = f"POST {path} HTTP/1.1\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in fields.items() if value is not None)
    return (head + "\r\n").encode(), body


def exchange(port: int, head: bytes, body: bytes, *, split: bool) -> tuple[int, dict, bytes]:
    """Send one request (whole, or its body 50 ms after its head) and read its response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if split:
            sock.sendall(head)
            time.sleep(0.05)
            sock.sendall(body)
        else:
            sock.sendall(head + body)
        return parse_response(read_response(sock.makefile("rb")))


def read_response(reader: BinaryIO) -> bytes:
    """One whole response (head and Content-Length body) from ``sock.makefile("rb")``."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return head
        head += line
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + reader.read(length)


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    """Status, headers (in order, the status line under ``""``) and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {"": lines[0]}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


def infer_body(rows: np.ndarray = ROWS, **extra: object) -> bytes:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def binary_request(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + rows.astype(np.float32).tobytes(), headers


CASES = {
    "json": request("/v2/models/mlp/infer", infer_body()),
    "versioned": request("/v2/models/mlp/versions/1/infer", infer_body(id="r-1")),
    "binary": request("/v2/models/mlp/infer", *binary_request(ROWS)),
    "no token": request("/v2/models/mlp/infer", infer_body(), token=None),
    "wrong token": request("/v2/models/mlp/infer", infer_body(), token="nope"),
    "unknown model": request("/v2/models/nope/infer", infer_body()),
    "unknown version": request("/v2/models/mlp/versions/9/infer", infer_body()),
    "bad json": request("/v2/models/mlp/infer", b'{"inputs": [}'),
    "wrong shape": request("/v2/models/mlp/infer", infer_body(np.ones((2, 5), np.float32))),
    "wrong type": request("/v2/models/mlp/infer", infer_body().replace(b"FP32", b"INT32")),
    "content type": request(
        "/v2/models/mlp/infer", infer_body(), {"Content-Type": "application/xml"}
    ),
    "header length": request(
        "/v2/models/mlp/infer", infer_body(), {"Inference-Header-Content-Length": "9x"}
    ),
    "unknown output": request("/v2/models/mlp/infer", infer_body(outputs=[{"name": "nope"}])),
    "classification": request(
        "/v2/models/mlp/infer",
        infer_body(outputs=[{"name": "probs", "parameters": {"classification": 2}}]),
    ),
    "slow model": request("/v2/models/slow/infer", infer_body()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_lanes_give_the_same_answer(server: ServerProcess, repository: Path, case: str):
    head, body = CASES[case]
    fast = exchange(server.port, head, body, split=False)
    asgi = exchange(server.port, head, body, split=True)
    assert fast[0] == asgi[0], (fast, asgi)
    assert fast[2] == asgi[2], (fast, asgi)
    for header in ("", "content-type", "content-length", "inference-header-content-length",
                   "www-authenticate", "retry-after"):  # fmt: skip
        assert fast[1].get(header) == asgi[1].get(header), (header, fast[1], asgi[1])
    assert "date" in fast[1]
    # Each took its lane: uvicorn writes its Date header first, the fast lane last.
    assert list(asgi[1])[1] == "date" and list(fast[1])[-1] == "date"
    if case in ("json", "versioned", "slow model"):
        assert fast[0] == 200
        model = "slow" if case == "slow model" else "mlp"
        version = 1 if case != "json" else 2
        expected = reference(repository, model, version, {"x": ROWS})["probs"]
        got = np.array(json.loads(fast[2])["outputs"][-1]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5)
    elif case not in ("binary", "classification"):
        assert fast[0] >= 400 and "error" in json.loads(fast[2])


def test_a_body_written_just_after_its_head_still_takes_the_fast_lane(server: ServerProcess):
    """Clients such as httpx write the body apart from the head, and it often arrives in a
    second read: the fast lane waits a moment for it (``connections.BODY_GRACE_S``) instead of
    handing the request to the ASGI lane. (A body 50 ms late takes the ASGI lane, above.)"""
    head, body = CASES["json"]
    whole = exchange(server.port, head, body, split=False)
    lanes = []
    for half in (False, True):
        for _ in range(15):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                first, rest = (head + body[:20], body[20:]) if half else (head, body)
                sock.sendall(first)
                time.sleep(0.001)
                sock.sendall(rest)
                status, headers, content = parse_response(read_response(sock.makefile("rb")))
            assert (status, content) == (whole[0], whole[2])
            lanes.append("fast" if list(headers)[-1] == "date" else "asgi")
    # A reader stalled for longer than the grace sends one to the ASGI lane, correctly answered.
    assert lanes.count("fast") >= 25, lanes


def test_keep_alive_pipelining_and_connection_close(server: ServerProcess):
    """Two requests in one write are answered in order on the kept-alive connection; a
    request asking to close gets ``connection: close`` and the connection is closed."""
    head, body = CASES["json"]
    closing, _ = request("/v2/models/mlp/infer", infer_body(id="last"), {"Connection": "close"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body + head + body)
        reader = sock.makefile("rb")
        first = parse_response(read_response(reader))
        second = parse_response(read_response(reader))
        sock.sendall(closing + infer_body(id="last"))
        raw = read_response(reader)
        assert reader.read() == b""  # closed by the server
    assert first[0] == second[0] == 200
    assert first[2] == second[2]
    status, headers, content = parse_response(raw)
    assert status == 200 and headers.get("connection") == "close"
    assert json.loads(content)["id"] == "last"


def test_the_fast_lane_is_logged_and_counted(server: ServerProcess):
    before = metric_value(
        metrics_text(server),
        "nbdeploy_http_requests_total",
        method="POST",
        route="/v2/models/{model}/versions/{version}/infer",
        status="200",
    )
    head, body = CASES["versioned"]
    for _ in range(3):
        assert exchange(server.port, head, body, split=False)[0] == 200
    after = metric_value(
        metrics_text(server),
        "nbdeploy_http_requests_total",
        method="POST",
        route="/v2/models/{model}/versions/{version}/infer",
        status="200",
    )
    assert after - before == 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            line
            for line in server.log().splitlines()
            if '"POST /v2/models/mlp/versions/1/infer HTTP/1.1" 200' in line
        ]
        if len(lines) >= 3:
            break
        time.sleep(0.05)
    assert len(lines) >= 3
    stamp, level, logger = lines[-1].split(" ")[1:4]
    assert (level, logger) == ("INFO", "nbdeploy.serve.access:")
    assert time.strptime(lines[-1][:23].split(",")[0], "%Y-%m-%d %H:%M:%S")
    assert len(stamp.split(",")[1]) == 3


def test_a_client_gone_while_its_request_waits_is_not_answered(server: ServerProcess):
    """A request to the slow model waits for its run on the model's thread: its client
    disconnecting cancels it (499 in the log, no answer counted) and the server goes on."""

    def answers() -> float:
        return metric_value(
            metrics_text(server), "nbdeploy_model_requests_total", model="slow", version="1",
            outcome="ok",
        )  # fmt: skip

    before = answers()
    rows = np.ones((30, 4), np.float32)
    head, body = request("/v2/models/slow/infer", infer_body(rows))
    socks = []
    for _ in range(6):  # several, so that some wait in the queue behind the first run
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(head + body)
        socks.append(sock)
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '" 499 ' not in server.log():
        time.sleep(0.05)
    assert '"POST /v2/models/slow/infer HTTP/1.1" 499' in server.log()
    assert answers() - before < 6
    assert_all_given_back(server)
    status, _, content = exchange(server.port, *CASES["slow model"], split=False)
    assert status == 200, content


def test_pipelined_requests_behind_one_that_waits_are_answered_in_order(server: ServerProcess):
    """A request to the slow model waits for its run; the two sent behind it on the same
    connection (one whole, one to the quick model) are answered after it, in order."""
    slow_head, slow_body = request("/v2/models/slow/infer", infer_body(id="first"))
    second_head, second_body = request("/v2/models/slow/infer", infer_body(id="second"))
    third_head, third_body = request("/v2/models/mlp/infer", infer_body(id="third"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(slow_head + slow_body + second_head + second_body + third_head + third_body)
        reader = sock.makefile("rb")
        answers = [parse_response(read_response(reader)) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [json.loads(body)["id"] for _, _, body in answers] == ["first", "second", "third"]
    assert [json.loads(body)["model_name"] for _, _, body in answers] == ["slow", "slow", "mlp"]
