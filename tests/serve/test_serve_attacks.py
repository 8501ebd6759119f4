"""The server attacked as an outsider and a careless user would (issue 13), over real sockets.

Every case checks the status, the message, that the server still answers a good request
afterwards and, for the memory cases, the server's peak resident memory (VmHWM).

Memory bound: the servers run with ``--memory-budget-bytes`` set to what the default gives in a
1 GiB container (40%). Peak RSS must stay under 1 GiB: the budget bounds what requests add on
top of the idle server (~150 MB: Python, numpy, onnxruntime, starlette), and the remaining
~450 MB covers what the budget does not see (allocator slack, h11 buffers, thread stacks).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import multiprocessing
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers.serve import (
    ServerProcess,
    assert_all_given_back,
    binary_body,
    metric_value,
    metrics_text,
    raw_exchange,
    read_until_closed,
    save_mlp,
    save_slow,
    save_wide,
    start_server,
)

ONE_GIB = 1 << 30
BUDGET = int(ONE_GIB * 0.4)  # what the default budget is in a 1 GiB memory cgroup
TOKEN = "attack-token"
ADMIN_TOKEN = "attack-admin-token"
GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the test server
SLOW_RUN_ITERATIONS = 1_200_000  # about a second per run of the slow model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("attack-repo")
    save_mlp(root / "mlp" / "1", seed=1)
    save_wide(root / "wide" / "1")
    running = start_server(
        root,
        "--memory-budget-bytes",
        str(BUDGET),
        "--header-timeout-s",
        str(TIMEOUT_S),
        "--body-timeout-s",
        str(TIMEOUT_S),
        "--keep-alive-timeout-s",
        str(TIMEOUT_S),
        log_path=tmp_path_factory.mktemp("attack-logs") / "server.log",
        token=TOKEN,
        admin_token=ADMIN_TOKEN,
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client(timeout=120)


def assert_serving(server: ServerProcess) -> None:
    """The server still answers a good request (on a new connection)."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as fresh:
        response = fresh.post("/v2/models/mlp/infer", json=GOOD)
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"]) == 2


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def strict_loads(data: bytes) -> Any:
    """json.loads refusing NaN/Infinity, which are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(data, parse_constant=refuse)


def raw_request(server: ServerProcess, head: str, body: bytes = b"", **kwargs: Any) -> bytes:
    auth = f"Authorization: Bearer {server.token}\r\n" if server.token else ""
    data = head.replace("\r\n\r\n", f"\r\n{auth}\r\n", 1).encode() + body
    return raw_exchange(server.port, data, **kwargs)


def status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, strict_loads(body)


def json_rows(rows: int, width: int = 4, value: bytes = b"0.123456") -> bytes:
    """An mlp-style infer body of ``rows`` rows of ``width`` values, built as bytes."""
    row = b"[" + b",".join([value] * width) + b"]"
    head = json.dumps({"name": "x", "datatype": "FP32", "shape": [rows, width]}).encode()
    return b'{"inputs":[' + head[:-1] + b',"data":[' + b",".join([row] * rows) + b"]}]}"


# --- strict parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["%C2%B2", "1" * 5000, "%EF%BC%91", "0x1", "-1"])
def test_versions_must_be_plain_ascii_numbers(
    version: str, server: ServerProcess, client: httpx.Client
):
    for path in (f"/v2/models/mlp/versions/{version}", f"/v2/models/mlp/versions/{version}/ready"):
        message = error_of(client.get(path), 404)
        assert "has no version" in message and len(message) < 300
    message = error_of(client.post(f"/v2/models/mlp/versions/{version}/infer", json=GOOD), 404)
    assert "its versions are ['1']" in message
    assert_serving(server)


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**40, 2**40], [1] * 40])
@pytest.mark.parametrize("binary", [False, True])
def test_shapes_that_overflow_are_refused(
    shape: list[int], binary: bool, server: ServerProcess, client: httpx.Client
):
    spec: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": shape}
    if binary:
        spec["parameters"] = {"binary_data_size": 0}
        head = json.dumps({"inputs": [spec]}).encode()
        response = client.post(
            "/v2/models/wide/infer",
            content=head,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
    else:
        response = client.post("/v2/models/wide/infer", json={"inputs": [{**spec, "data": []}]})
    message = error_of(response, 400)
    assert "at most 32 dimensions" in message
    assert_serving(server)


def test_classification_of_labels_or_1d_outputs_is_refused(
    server: ServerProcess, client: httpx.Client
):
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 5, 2, 7, 0, 1]}],
        "outputs": [{"name": "label", "parameters": {"classification": 2}}],
    }
    message = error_of(client.post("/v2/models/wide/infer", json=body), 400)
    assert "holds class labels" in message and "ask it of 'scores' instead" in message
    body["outputs"] = [{"name": "scores", "parameters": {"classification": 2}}]
    response = client.post("/v2/models/wide/infer", json=body)
    assert response.status_code == 200, response.text
    ranked = response.json()["outputs"][0]
    assert ranked["shape"] == [2, 2]
    assert ranked["data"] == ["5.000000:1", "2.000000:2", "7.000000:0", "1.000000:2"]
    assert_serving(server)


@pytest.mark.parametrize("length", ["1_2", "+12", "١٢", "12a", "0x0c"])
def test_content_length_must_be_plain_digits(length: str, server: ServerProcess):
    body = b'{"inputs":[]}'
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        "Content-Type: application/json\r\n\r\n"
    )
    raw = raw_exchange(server.port, head.encode("utf-8") + body[:12])
    status, answer = status_and_json(raw)
    assert status == 400 and "malformed HTTP request" in answer["error"]
    assert_serving(server)


@pytest.mark.parametrize("length", ["1_2", "+12", "1 2", "١٢", "-3"])
def test_header_content_length_must_be_plain_digits(
    length: str, server: ServerProcess, client: httpx.Client
):
    content, headers = binary_body([("x", "FP32", np.ones((1, 4), np.float32))])
    headers["Inference-Header-Content-Length"] = length
    response = client.post(
        "/v2/models/mlp/infer",
        content=content,
        headers={k: v.encode() for k, v in headers.items()},  # type: ignore[misc]
    )
    message = error_of(response, 400)
    assert "ASCII digits only" in message
    assert_serving(server)


def test_gzip_with_trailing_data_is_refused(server: ServerProcess, client: httpx.Client):
    packed = gzip.compress(json.dumps(GOOD).encode())
    ok = client.post("/v2/models/mlp/infer", content=packed, headers={"Content-Encoding": "gzip"})
    assert ok.status_code == 200, ok.text
    for trailing in (b"junk", packed):
        response = client.post(
            "/v2/models/mlp/infer",
            content=packed + trailing,
            headers={"Content-Encoding": "gzip"},
        )
        message = error_of(response, 400)
        assert "trailing data" in message
    lying = packed[:-4] + (10).to_bytes(4, "little")  # a trailer shorter than the data
    response = client.post(
        "/v2/models/mlp/infer", content=lying, headers={"Content-Encoding": "gzip"}
    )
    assert "more data than its trailer says" in error_of(response, 400)
    assert_serving(server)


def test_a_50_mb_header_line_is_refused_early(server: ServerProcess):
    before = server.peak_rss()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        chunk = b"a" * (1 << 20)
        try:
            while sent < 50 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = read_until_closed(sock, 5)
    assert sent < 50 << 20, "the server kept reading a 50 MB header line"
    if raw:  # a reset may discard the answer the server wrote before closing
        status, answer = status_and_json(raw)
        assert status == 431 and "request head is longer than" in answer["error"]
    assert "request head is longer than 65536 bytes" in server.log()
    assert server.peak_rss() - before < 32 << 20
    assert_serving(server)


def test_many_bogus_input_names_are_not_echoed(server: ServerProcess, client: httpx.Client):
    inputs = [
        {"name": f"bogus{i:06d}", "datatype": "FP32", "shape": [1], "data": [0]}
        for i in range(100_000)
    ]
    message = error_of(client.post("/v2/models/mlp/infer", json={"inputs": inputs}), 400)
    assert len(message) < 1000, len(message)
    assert "bogus000000" in message and "bogus099999" not in message
    assert "99995 more" in message
    long_name = {"inputs": [{**GOOD["inputs"][0], "name": "n" * 1_000_000}]}
    message = error_of(client.post("/v2/models/mlp/infer", json=long_name), 400)
    assert len(message) < 1000
    assert_serving(server)


def test_responses_are_strict_json(server: ServerProcess, client: httpx.Client):
    body = b'{"id": NaN, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],'
    body += b' "data": [1, 2, 3, 4]}]}'
    response = client.post("/v2/models/mlp/infer", content=body)
    assert response.status_code == 200
    assert strict_loads(response.content)["id"] is None
    for path in ("/v2/nothing", "/v2/models/nothing", "/nbdeploy/identity"):
        response = client.get(path)
        assert response.headers["content-type"] == "application/json"
        assert "error" in strict_loads(response.content)
    assert_serving(server)


# --- connections: timeouts and sizes --------------------------------------------------------


def test_a_slow_request_head_is_cut_off(server: ServerProcess):
    started = time.monotonic()
    raw = raw_exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", wait=15)
    elapsed = time.monotonic() - started
    status, answer = status_and_json(raw)
    assert status == 408 and "request head did not arrive" in answer["error"]
    assert elapsed < TIMEOUT_S + 5
    assert_serving(server)


def test_a_stalled_body_is_cut_off(server: ServerProcess):
    head = (
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    raw = raw_request(server, head, b'{"inputs": [', wait=15)
    elapsed = time.monotonic() - started
    status, answer = status_and_json(raw)
    assert status == 408 and "body stalled" in answer["error"]
    assert elapsed < TIMEOUT_S + 5
    assert_serving(server)


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess):
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        raw = read_until_closed(sock, 15)
        elapsed = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b'{"live":true}')
    assert elapsed < TIMEOUT_S + 5
    assert_serving(server)


def test_head_and_body_share_a_write_but_a_head_request_still_gets_its_head(
    server: ServerProcess,
):
    """Responses are written head and body together; a HEAD response (no body) is not held."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = read_until_closed(sock, 15)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 13" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"live":true}')


# --- logs and identity ----------------------------------------------------------------------


def test_access_log_cannot_be_forged_and_skips_health(server: ServerProcess, client: httpx.Client):
    forged = "2026-01-01 00:00:00,000 INFO nbdeploy.serve: forged"
    client.get("/v2/models/mlp%0A" + forged.replace(" ", "%20") + "%0D%E2%80%A8x")
    for _ in range(5):
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
    time.sleep(0.2)
    lines = server.log().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert any("/v2/models/mlp%0A2026-01-01" in line and "%0D%u2028x" in line for line in lines)
    assert not any("/v2/health/" in line for line in lines)
    assert_serving(server)


def test_identity_proves_the_tokens_without_revealing_them(
    server: ServerProcess, client: httpx.Client
):
    nonce = secrets.token_hex(16)
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        response = anonymous.get("/nbdeploy/identity", params={"nonce": nonce})
    assert response.status_code == 200
    answer = strict_loads(response.content)
    assert answer == {
        "name": "mlp,wide",
        "proof": hmac.new(TOKEN.encode(), nonce.encode(), hashlib.sha256).hexdigest(),
        "admin_proof": hmac.new(ADMIN_TOKEN.encode(), nonce.encode(), hashlib.sha256).hexdigest(),
    }
    for bad in ("", "abc", "g" * 32, "a" * 129, nonce + "%0A"):
        response = client.get(f"/nbdeploy/identity?nonce={bad}")
        assert "16 to 128 hexadecimal" in error_of(response, 400)
    assert error_of(client.get("/nbdeploy/identity"), 400)
    time.sleep(0.2)
    assert nonce not in server.log()
    assert_serving(server)


def test_log_rotates_by_size_and_health_is_logged_on_request(tmp_path: Path):
    root = tmp_path / "repo"
    save_mlp(root / "mlp" / "1", seed=1)
    log_path = tmp_path / "logs" / "server.log"
    server = start_server(root, "--log-max-bytes", "4096", "--log-health", log_path=log_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(200):
                assert client.get("/v2/health/live").status_code == 200
            nonce = "ab" * 8
            answer = client.get("/nbdeploy/identity", params={"nonce": nonce}).json()
            assert answer == {"name": "mlp", "proof": None, "admin_proof": None}
        time.sleep(0.2)
        rotated = sorted(p.name for p in log_path.parent.iterdir())
        assert rotated == ["server.log", "server.log.1", "server.log.2", "server.log.3"]
        assert all(p.stat().st_size <= 4096 for p in log_path.parent.iterdir())
        assert "/v2/health/live" in log_path.read_text()
        assert_serving(server)
    finally:
        assert server.stop() == 0


# --- memory ----------------------------------------------------------------------------------


def test_a_60_mb_json_body_is_refused_before_parsing(server: ServerProcess, client: httpx.Client):
    body = json_rows(1_600_000)
    assert len(body) > 60_000_000
    message = error_of(client.post("/v2/models/mlp/infer", content=body), 413)
    assert "--max-json-elements" in message and "binary tensor data extension" in message
    assert server.peak_rss() < ONE_GIB
    assert_serving(server)


def test_a_24_mb_json_body_is_refused_by_the_memory_budget(
    server: ServerProcess, client: httpx.Client
):
    body = json_rows(640_000)
    assert len(body) > 24_000_000
    message = error_of(client.post("/v2/models/mlp/infer", content=body), 413)
    assert f"memory budget is {BUDGET / (1 << 20):.1f} MiB" in message
    assert metric_value(metrics_text(server), "nbdeploy_memory_budget_bytes") == BUDGET
    assert "smaller batches" in message and "binary tensor data extension" in message
    assert server.peak_rss() < ONE_GIB
    assert_serving(server)


def wide_binary(floats: int, **output: Any) -> tuple[bytes, dict[str, str]]:
    x = np.full((1, floats), 0.5, dtype=np.float32)
    x[0, 7] = 2.0
    outputs = [{"name": "scores", "parameters": {"binary_data": True, **output}}]
    return binary_body([("x", "FP32", x)], outputs=outputs)


def test_a_62_mb_binary_body_with_classification(server: ServerProcess, client: httpx.Client):
    content, headers = wide_binary(62_000_000 // 4, classification=3)
    response = client.post("/v2/models/wide/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert b"2.000000:7" in response.content
    peak = server.peak_rss()
    assert peak < ONE_GIB, peak
    print(f"\n62 MB binary + classification: 200; server peak RSS {peak >> 20} MiB")
    # ranking millions of classes into strings would not fit: refused before running
    content, headers = wide_binary(62_000_000 // 4, classification=5_000_000)
    message = error_of(client.post("/v2/models/wide/infer", content=content, headers=headers), 413)
    assert "would need about" in message and "--memory-budget-bytes" in message
    assert server.peak_rss() < ONE_GIB
    assert_serving(server)


def test_the_largest_body_is_answered_within_a_1_gib_budget(
    server: ServerProcess, client: httpx.Client
):
    content, headers = wide_binary((64 << 20) // 4 - 64)
    assert len(content) <= 64 << 20
    response = client.post("/v2/models/wide/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) > 60 << 20
    peak = server.peak_rss()
    assert peak < ONE_GIB, peak
    print(f"\nlargest accepted: {len(content)} bytes binary; server peak RSS {peak >> 20} MiB")
    assert_serving(server)


FloodJob = tuple[str, bytes, dict[str, str]]  # model, body, headers


def flood_jobs(json_model: str = "mlp", wide_model: str = "wide") -> list[FloodJob]:
    """The flood of the memory tests (and of ``benchmarks/bench_flood.py``), sent 6 at a time:
    12 JSON bodies of 24 MB (parsed, then refused by the budget), 12 of 4.6 MB (answered when
    the budget has room) and 4 binary bodies of 40 MB with classification. Repeated requests
    are the same tuple."""
    classify, headers = wide_binary(40_000_000 // 4, classification=3)
    return (
        [(json_model, json_rows(640_000), {})] * 12
        + [(json_model, json_rows(120_000), {})] * 12
        + [(wide_model, classify, headers)] * 4
    )


def health_probe(url: str, stop: Any, worst: Any) -> None:
    """In its own process (so the test's threads do not delay it): the worst latency of
    /v2/health/live, polled every 20 ms until ``stop`` is set."""
    with httpx.Client(base_url=url, timeout=30) as probe:
        while not stop.is_set():
            started = time.perf_counter()
            assert probe.get("/v2/health/live").status_code == 200
            worst.value = max(worst.value, time.perf_counter() - started)
            time.sleep(0.02)


def test_a_flood_of_big_requests_keeps_memory_bounded_and_health_fast(
    server: ServerProcess,
):
    jobs = flood_jobs()
    spawn = multiprocessing.get_context("spawn")
    stop, worst = spawn.Event(), spawn.Value("d", 0.0)
    probe = spawn.Process(target=health_probe, args=(server.url, stop, worst))
    probe.start()

    def send(job: FloodJob) -> tuple[int, str]:
        model, content, headers = job
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as one:
            response = one.post(f"/v2/models/{model}/infer", content=content, headers=headers)
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
        return response.status_code, response.text[:300]

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(send, jobs))
    finally:
        stop.set()
        probe.join(30)
    assert probe.exitcode == 0
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 413, 503}, results
    assert 503 in statuses, results  # the budget was full: retry later, not out of memory
    peak = server.peak_rss()
    assert peak < ONE_GIB, peak
    print(
        f"\nflood statuses {sorted(statuses)}; peak RSS {peak >> 20} MiB;"
        f" worst health {worst.value:.3f} s"
    )
    assert worst.value < 1.0
    # Which flood requests found room depends on how they overlapped; afterwards the whole
    # budget is free again, and what was refused as busy is answered when sent alone.
    assert_all_given_back(server)
    too_big = jobs[0]  # refused as busy or, alone, as too large for the budget
    busy = {
        id(job): job
        for job, status in zip(jobs, statuses, strict=True)
        if status == 503 and job is not too_big
    }
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as one:
        for model, content, headers in busy.values():
            response = one.post(f"/v2/models/{model}/infer", content=content, headers=headers)
            assert response.status_code == 200, response.text[:300]
    assert_serving(server)


# --- concurrency, deadlines, disconnected clients --------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slow-repo")
    save_slow(root / "slow" / "1", iterations=SLOW_RUN_ITERATIONS)
    save_mlp(root / "mlp" / "1", seed=1)
    running = start_server(
        root,
        "--max-concurrency",
        "3",
        "--request-timeout-s",
        "2.5",
        "--no-batching",
        log_path=tmp_path_factory.mktemp("slow-logs") / "server.log",
    )
    yield running
    assert running.stop() == 0, running.log()


SLOW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def slow_runs(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric_value(text, "nbdeploy_inference_duration_seconds_count", model="slow")


def test_concurrency_limit_and_deadline(slow_server: ServerProcess):
    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=slow_server.url, timeout=60) as one:
            return one.post("/v2/models/slow/infer", json=SLOW)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    by_status: dict[int, list[httpx.Response]] = {}
    for response in responses:
        by_status.setdefault(response.status_code, []).append(response)
    assert set(by_status) <= {200, 503, 504}, {s: r[0].text for s, r in by_status.items()}
    assert 503 in by_status and 504 in by_status and 200 in by_status, sorted(by_status)
    for response in by_status[503]:
        assert response.headers["retry-after"] == "1"
        assert "--max-concurrency" in response.json()["error"]
    for response in by_status[504]:
        assert "--request-timeout-s" in response.json()["error"]
    time.sleep(3)  # the run still going when its request timed out ends
    # a request that timed out while queued was dropped: only the one running at its
    # deadline ran without being answered
    answered = len(by_status[200])
    assert answered <= slow_runs(slow_server) <= answered + 1
    assert_all_given_back(slow_server)
    assert_serving(slow_server)


def test_work_of_disconnected_clients_is_dropped(slow_server: ServerProcess):
    before = slow_runs(slow_server)
    body = json.dumps(SLOW).encode()
    head = (
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    first = socket.create_connection(("127.0.0.1", slow_server.port), timeout=30)
    first.sendall(head + body)
    time.sleep(0.2)
    for _ in range(2):  # queued behind the first, then their clients leave
        with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as gone:
            gone.sendall(head + body)
            time.sleep(0.2)
    with first:
        raw = read_until_closed(first, 1.5 + TIMEOUT_S * 3)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    time.sleep(2.5)
    assert slow_runs(slow_server) == before + 1
    assert "499" in slow_server.log()
    assert_all_given_back(slow_server)
    assert_serving(slow_server)


def test_server_flags_are_checked(tmp_path: Path):
    import subprocess
    import sys

    for flag in (
        "--max-concurrency",
        "--memory-budget-bytes",
        "--request-timeout-s",
        "--request-workers",
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "nbdeploy.serve",
                "--model-repository",
                str(tmp_path),
                flag,
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and flag in result.stderr

    missing = tmp_path / "no-such-dir"
    result = subprocess.run(
        [sys.executable, "-m", "nbdeploy.serve", "--model-repository", str(tmp_path)]
        + ["--state-dir", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--state-dir {missing} must be a directory this server can write" in result.stderr


def test_default_budget_follows_the_memory_given():
    from nbdeploy.serve.limits import BUDGET_CAP, BUDGET_SHARE, default_budget

    budget = default_budget()
    assert 0 < budget <= BUDGET_CAP
    assert int(ONE_GIB * BUDGET_SHARE) == BUDGET


# --- the same attacks on a real 1 GiB container ------------------------------------------


def docker_ready() -> bool:
    from nbdeploy.runtimes import docker_available

    return docker_available()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not docker_ready(), reason="no Docker engine answers")
def test_a_1_gib_container_survives_the_audits_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import nbdeploy as nbd
    from nbdeploy.runtimes.docker import DockerRuntime

    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    path = save_wide(tmp_path / "wide" / "1") / "model.onnx"
    ep = nbd.deploy(path, name="flood", runtime="docker", memory="1g")
    try:
        container = DockerRuntime().container(ep.handle)
        infer = f"{ep.url}/v2/models/flood/infer"
        with httpx.Client(headers=ep.headers, timeout=300) as client:
            sixty = client.post(infer, content=json_rows(1_600_000))
            assert "--max-json-elements" in error_of(sixty, 413)
            content, headers = wide_binary(62_000_000 // 4, classification=3)
            classified = client.post(infer, content=content, headers=headers)
            assert classified.status_code in (200, 413), classified.text[:300]
            largest = 0
            for size in (64 << 20, 48 << 20, 32 << 20, 16 << 20):
                content, headers = wide_binary(size // 4 - 64)
                response = client.post(infer, content=content, headers=headers)
                assert response.status_code in (200, 413), response.text[:300]
                if response.status_code == 200:
                    largest = len(content)
                    break
            assert largest > 0

        jobs = flood_jobs("flood", "flood")
        spawn = multiprocessing.get_context("spawn")
        stop, worst = spawn.Event(), spawn.Value("d", 0.0)
        probe = spawn.Process(target=health_probe, args=(ep.url, stop, worst))
        probe.start()

        def send(job: FloodJob) -> int:
            _, body, extra = job
            with httpx.Client(headers=ep.headers, timeout=300) as one:
                return one.post(infer, content=body, headers=extra).status_code

        try:
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(send, jobs))
        finally:
            stop.set()
            probe.join(30)
        assert probe.exitcode == 0
        assert set(statuses) <= {200, 413, 503}, statuses
        # Which flood requests got the budget depends on timing (all may have met a busy
        # server); once the flood is over, one of them alone is answered.
        assert send(jobs[12]) == 200
        container.reload()
        state = container.attrs["State"]
        assert state["OOMKilled"] is False and container.attrs["RestartCount"] == 0, state
        peak = container.stats(stream=False)["memory_stats"].get("max_usage", 0)
        print(
            f"\n1 GiB container: largest accepted {largest} bytes; 62 MB classification"
            f" {classified.status_code}; flood {sorted(statuses)}; cgroup peak"
            f" {peak >> 20} MiB; worst health {worst.value:.3f} s"
        )
        assert peak < ONE_GIB
        assert worst.value < 1.0
        assert_serving_model(ep.url, ep.headers)
    finally:
        nbd.undeploy("flood")


def assert_serving_model(url: str, headers: dict[str, str]) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 5, 2]}]}
    response = httpx.post(f"{url}/v2/models/flood/infer", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
