"""Closed-loop HTTP load against an endpoint: each worker sends its next request on a reply."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from nbdeploy._errors import BenchmarkError, DeployError
from nbdeploy._tensors import as_feeds, repeat_to_batch
from nbdeploy.bench import BenchmarkReport, BenchmarkResult, machine_info
from nbdeploy.client import encode_request, prove_identity_on_socket

PAYLOADS = ("json", "binary")


def benchmark_endpoint(
    endpoint: Any,
    sample: Any,
    *,
    concurrency: Sequence[int] = (1, 4, 16),
    batch_sizes: Sequence[int] = (1,),
    payloads: Sequence[str] = PAYLOADS,
    duration_s: float = 3.0,
    warmup: int = 5,
) -> BenchmarkReport:
    """Latency percentiles and throughput of ``endpoint`` per payload, batch size and concurrency.

    Request bodies are encoded once up front, so the figures measure the endpoint (and HTTP),
    not the client's encoder. Any failed request is counted and reported in the row's note.
    """
    if not concurrency or any(int(c) < 1 for c in concurrency):
        raise BenchmarkError(
            f"concurrency must be positive integers such as (1, 4, 16); got {concurrency!r}"
        )
    unknown = [p for p in payloads if p not in PAYLOADS]
    if unknown:
        raise BenchmarkError(f"payloads must be among {PAYLOADS}; got {unknown}")
    feeds = as_feeds(endpoint.signature, sample)
    path = f"/v2/models/{endpoint.name}/infer"
    results: list[BenchmarkResult] = []
    for payload in payloads:
        for batch in batch_sizes:
            body, headers = encode_request(
                repeat_to_batch(feeds, int(batch)), binary=payload == "binary"
            )
            for workers in concurrency:
                results.append(
                    _closed_loop(
                        endpoint,
                        path,
                        body,
                        headers,
                        int(workers),
                        int(batch),
                        payload,
                        duration_s,
                        warmup,
                    )
                )
    return BenchmarkReport(results=results, machine=machine_info())


class _VerifiedConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection that opens every socket (the first, and each silent reconnect)
    with the identity challenge, so the endpoint's token only reaches its own server."""

    def __init__(self, host: str, port: int | None, token: str | None, name: str) -> None:
        super().__init__(host, port, timeout=30)
        self._token, self._name = token, name

    def connect(self) -> None:
        super().connect()
        if self._token is None or self.sock is None:
            return
        try:
            prove_identity_on_socket(self.sock, self.host, self.port, self._token, self._name)
        except DeployError as exc:
            self.sock = None
            raise ConnectionRefusedError(str(exc)) from exc


class _Connection:
    """A bare keep-alive HTTP/1.1 connection: the load generator should cost as little CPU as
    possible, since it shares the machine with the server it measures. ``http.client`` reads no
    proxy variables, so requests go straight to the endpoint."""

    def __init__(self, endpoint: Any) -> None:
        parsed = urlsplit(endpoint.url)
        host = parsed.hostname or "127.0.0.1"
        self._conn = _VerifiedConnection(host, parsed.port, endpoint.token, endpoint.name)
        self._headers = dict(endpoint.headers)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        self._conn.request("POST", path, body=body, headers={**self._headers, **headers})
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._conn.close()


def _closed_loop(
    endpoint: Any,
    path: str,
    body: bytes,
    headers: dict[str, str],
    workers: int,
    batch: int,
    payload: str,
    duration_s: float,
    warmup: int,
) -> BenchmarkResult:
    clients = [_Connection(endpoint) for _ in range(workers)]
    latencies: list[list[int]] = [[] for _ in range(workers)]
    failures = [0] * workers
    try:
        for client in clients:
            for _ in range(warmup):
                status = client.post(path, body, headers)
                if status != 200:
                    raise BenchmarkError(
                        f"the endpoint at {endpoint.url} answered HTTP {status} during warm-up"
                    )
    except (OSError, http.client.HTTPException) as exc:
        for client in clients:
            client.close()
        raise BenchmarkError(
            f"the endpoint at {endpoint.url} failed during warm-up: {exc}"
        ) from exc
    start_gate = threading.Barrier(workers + 1)
    deadline = 0.0

    def work(index: int) -> None:
        client = clients[index]
        start_gate.wait()
        while time.perf_counter() < deadline:
            began = time.perf_counter_ns()
            try:
                ok = client.post(path, body, headers) == 200
            except (OSError, http.client.HTTPException):
                ok = False
                client.close()
                client = clients[index] = _Connection(endpoint)
            if ok:
                latencies[index].append(time.perf_counter_ns() - began)
            else:
                failures[index] += 1

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + duration_s
    began = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    times_ms = np.array([t for per in latencies for t in per], dtype=np.float64) / 1e6
    failed = sum(failures)
    target = f"{endpoint.name}:v{endpoint.version} http"
    if times_ms.size == 0:
        return BenchmarkResult(
            target=target,
            engine=f"http-{payload}",
            batch_size=batch,
            concurrency=workers,
            status="failed",
            note=f"{failed} requests failed, none succeeded",
        )
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return BenchmarkResult(
        target=target,
        engine=f"http-{payload}",
        batch_size=batch,
        concurrency=workers,
        runs=int(times_ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(times_ms.mean()),
        throughput=float(times_ms.size * batch / elapsed),
        variant=None,
        note=f"{failed} failed requests" if failed else None,
    )
