"""A real Prometheus, started the way `nbdeploy monitoring up` starts it, scrapes two real
deployments (process runtime) through the file_sd files and per-deployment bearer tokens, and
every PromQL expression of the Grafana dashboard returns data from it.

The expressions are read out of the dashboard JSON written to disk, with Grafana's template
variables substituted, and evaluated on Prometheus' /api/v1/query; undeploying one name must
remove its target from Prometheus within seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy.monitoring import prometheus, targets
from tests.helpers.onnx_models import save_linear

needs_prometheus = pytest.mark.skipif(
    shutil.which(os.environ.get("NBDEPLOY_PROMETHEUS") or "prometheus") is None,
    reason="no prometheus binary (apt-get install prometheus, as scripts/system-packages.sh"
    " does, or set NBDEPLOY_PROMETHEUS)",
)

NAMES = ("mon-a", "mon-b")
SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)


VARIABLES = {
    "$__rate_interval": "1m",
    "${datasource}": "",
    "$deployment": "|".join(NAMES),
    "$version": ".*",
}

REQUIRED_PANELS = {
    "Request rate",
    "Error rate",
    "Latency",
    "Requests in flight",
    "Memory budget in use",
    "Batch size",
    "Queue time",
    "Requests by version",
    "Traffic share by version",
    "Error rate by version",
    "Latency by version",
    "Worst drift score",
    "Drift score by feature",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unsubstituted template variable in {expr}"
    return expr


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


class Load:
    """A few threads sending small infer requests to every endpoint until stopped."""

    def __init__(self, endpoints: list[nbd.Endpoint]) -> None:
        self.endpoints = endpoints
        self.stopping = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]

    def _run(self) -> None:
        while not self.stopping.is_set():
            for endpoint in list(self.endpoints):
                endpoint.predict(SAMPLE)
                self.sent += 1
            time.sleep(0.02)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def monitoring() -> Iterator[prometheus.MonitoringStatus]:
    status = prometheus.up(port=free_port())
    try:
        yield status
    finally:
        prometheus.down()


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[list[nbd.Endpoint]]:
    deployed = [
        nbd.deploy(
            save_linear(tmp_path / f"{name}.onnx", seed=seed), SAMPLE, name=name, runtime="process"
        )
        for seed, name in enumerate(NAMES)
    ]
    try:
        yield deployed
    finally:
        for endpoint in nbd.deployments():
            endpoint.stop()


def query(url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10, trust_env=False)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def scraped(url: str) -> dict[str, dict[str, Any]]:
    """Prometheus' active nbdeploy targets by deployment name."""
    response = httpx.get(f"{url}/api/v1/targets", timeout=10, trust_env=False)
    active = response.json()["data"]["activeTargets"]
    return {t["labels"]["deployment"]: t for t in active if t["labels"].get("job") == "nbdeploy"}


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard, rows' nested panels included."""
    found = []
    for panel in json.loads(path.read_text())["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return found


class GuardedMetrics:
    """A /metrics server that answers 401 unless the request carries its own bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.authorizations: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                given = self.headers.get("Authorization", "")
                owner.authorizations.append(given)
                ok = given == f"Bearer {owner.token}"
                body = b"guarded_up 1\n" if ok else b"missing or wrong token\n"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_down_never_signals_a_process_that_only_reuses_the_recorded_pid() -> None:
    """A pid file naming a live process with another start time is a stranger's: left alone."""
    state = Path(prometheus.status().files["pid"])
    state.write_text(json.dumps({"pid": os.getpid(), "started": "0", "port": 9}))
    assert not prometheus.status().running
    assert prometheus.down() is False
    assert json.loads(state.read_text())["pid"] is None


@pytest.mark.slow
@needs_prometheus
def test_each_target_gets_its_own_bearer_token_from_a_private_file(
    monitoring: prometheus.MonitoringStatus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers that insist on different tokens are both scraped healthy: the one-job-per-
    deployment config hands each its own credentials file (Prometheus cannot relabel tokens)."""
    guarded = {"tok-a": GuardedMetrics("first-token"), "tok-b": GuardedMetrics("second-token")}
    try:
        fakes = [
            targets.Target(name, "process", "http", server.address, server.token)
            for name, server in guarded.items()
        ]
        monkeypatch.setattr(targets, "current", lambda: fakes)
        assert targets.sync() == sorted(guarded)
        url = monitoring.url
        assert url
        wait_for(
            "both token-guarded targets healthy",
            lambda: (
                {n: t["health"] for n, t in scraped(url).items()} == dict.fromkeys(guarded, "up")
            ),
            timeout=30,
        )
        for server in guarded.values():
            assert server.authorizations
            assert set(server.authorizations) == {f"Bearer {server.token}"}
        root = Path(monitoring.files["tokens"])
        assert sorted(p.name for p in root.iterdir()) == sorted(guarded)
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in root.iterdir())
        assert root.stat().st_mode & 0o777 == 0o700
        assert "-token" not in Path(monitoring.files["config"]).read_text()
    finally:
        for server in guarded.values():
            server.close()


@pytest.mark.slow
@needs_prometheus
def test_prometheus_scrapes_deployments_and_every_dashboard_query_returns_data(
    monitoring: prometheus.MonitoringStatus, endpoints: list[nbd.Endpoint]
) -> None:
    url = monitoring.url
    assert monitoring.running and monitoring.started and url
    again = prometheus.up()
    assert again.running and not again.started and again.pid == monitoring.pid

    assert targets.sync() == sorted(NAMES)
    root = Path(monitoring.files["config"]).parent
    for endpoint in endpoints:
        group = json.loads((root / "targets" / f"{endpoint.name}.json").read_text())
        assert group[0]["labels"] == {"deployment": endpoint.name, "runtime": "process"}
        token_file = root / "tokens" / endpoint.name
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text() == endpoint.token

    with Load(endpoints) as load:
        health = wait_for(
            "both deployments scraped with health up (the bearer token accepted)",
            lambda: (
                {n: t["health"] for n, t in scraped(url).items()} == dict.fromkeys(NAMES, "up")
                and scraped(url)
            ),
            timeout=40,
        )
        assert all(t["lastError"] == "" for t in health.values())
        assert prometheus.status().health == dict.fromkeys(NAMES, "up")
        rate = substitute(
            'sum by (deployment) (rate(nbdeploy_http_requests_total{job="nbdeploy",'
            ' deployment=~"$deployment", route=~".*/infer"}[$__rate_interval]))'
        )
        wait_for(
            "a non-zero request rate for both deployments",
            lambda: (
                {
                    r["metric"]["deployment"]
                    for r in query(url, rate)["result"]
                    if float(r["value"][1]) > 0
                }
                == set(NAMES)
            ),
            timeout=40,
        )
        assert load.sent > 0

        dashboard = Path(monitoring.files["grafana"]) / "dashboards" / "nbdeploy.json"
        expressions = dashboard_expressions(dashboard)
        titles = {title for title, _ in expressions}
        assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles
        empty = []
        for title, expr in expressions:
            data = query(url, substitute(expr))
            if not data["result"]:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        for variable in json.loads(dashboard.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            series = query(url, substitute(match.group(1)))["result"]
            assert {s["metric"].get(match.group(2)) for s in series} - {None}, variable["name"]

    nbd.undeploy(NAMES[1])
    assert targets.sync() == [NAMES[0]]
    assert not (root / "targets" / f"{NAMES[1]}.json").exists()
    assert not (root / "tokens" / NAMES[1]).exists()
    wait_for(
        f"{NAMES[1]}'s target to leave Prometheus",
        lambda: set(scraped(url)) == {NAMES[0]},
        timeout=15,
    )

    assert prometheus.down() is True
    assert not prometheus.status().running
    assert prometheus.down() is False
