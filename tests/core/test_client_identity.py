"""The client sends a deployment's token only to the deployment's own server.

A real endpoint (process runtime) is killed behind the store's back and a real HTTP server,
recording everything, takes its port: the client must refuse to talk to it before any token
goes out. The proxy variables of the environment must never see a request for 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy._errors import BenchmarkError, DeployError, NbdeployError
from nbdeploy.bench_http import benchmark_endpoint
from nbdeploy.client import V2Client
from tests.helpers.impostor import (
    Impostor,
    RecordingProxy,
    TokenHolder,
    kill_behind_the_store,
)
from tests.helpers.onnx_models import linear_model, save_linear

NAME = "linear"
SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def expected_output(x: np.ndarray) -> np.ndarray:
    _, weight, bias = linear_model()
    return x @ weight + bias


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[nbd.Endpoint]:
    ep = nbd.deploy(save_linear(tmp_path / "linear.onnx"), SAMPLE, name=NAME, runtime="process")
    yield ep
    try:
        for running in nbd.deployments():
            running.stop()
    except NbdeployError:
        ep.stop()


def assert_no_token_reached(recorder: Impostor, token: str) -> None:
    """Only the identity challenge reached it, and no trace of the token did."""
    assert recorder.seen, "the impostor was never even challenged"
    assert {request.path for request in recorder.seen} == {"/nbdeploy/identity"}
    assert recorder.header_values("Authorization") == []
    for request in recorder.seen:
        assert token not in request.target
        assert all(token not in value for _, value in request.headers)


def test_the_genuine_server_proves_its_identity_and_a_wrong_token_is_refused(
    endpoint: nbd.Endpoint,
) -> None:
    np.testing.assert_allclose(endpoint.predict(SAMPLE), expected_output(SAMPLE), rtol=1e-5)
    assert endpoint.client.ready()
    stranger = V2Client(endpoint.url, token="not-" + str(endpoint.token))
    try:
        with pytest.raises(DeployError, match="could not prove it holds the deployment's token"):
            stranger.metadata(NAME)
        assert not stranger.ready()
    finally:
        stranger.close()


@pytest.mark.parametrize("proof", [None, "0" * 64], ids=["html", "forged-proof"])
def test_a_process_that_took_a_dead_servers_port_gets_no_token(
    endpoint: nbd.Endpoint, proof: str | None
) -> None:
    token = str(endpoint.token)
    endpoint.predict(SAMPLE)  # a pooled connection to the genuine server exists
    kill_behind_the_store(int(endpoint.handle.ref), endpoint.handle.port)
    impostor = Impostor(port=endpoint.handle.port, proof=proof)
    try:
        message = (
            rf"the process on 127\.0\.0\.1:{endpoint.handle.port} is not {NAME}'s server"
            r" \(it could not prove it holds the deployment's token\); nothing was sent to it"
        )
        with pytest.raises(DeployError, match=message):
            endpoint.predict(SAMPLE)
        with pytest.raises(DeployError, match=message):
            endpoint.metadata()
        assert not endpoint.client.ready()
        with pytest.raises(BenchmarkError, match=f"is not {NAME}'s server"):
            benchmark_endpoint(
                endpoint, SAMPLE[:1], concurrency=(1,), payloads=["json"], duration_s=0.2, warmup=1
            )
        assert_no_token_reached(impostor, token)
    finally:
        impostor.close()


def test_a_server_that_proves_the_token_is_sent_it_on_that_connection_only() -> None:
    holder = TokenHolder(token="s3cret", html=False)
    client = V2Client(holder.url, token="s3cret")
    try:
        client.server_metadata()
        client.server_metadata()
        first, *rest = holder.seen
        assert first.path == "/nbdeploy/identity" and first.header("Authorization") == []
        assert len(first.query["nonce"][0]) >= 16
        assert [r.header("Authorization") for r in rest] == [["Bearer s3cret"]] * 2
    finally:
        client.close()
        holder.close()


def test_without_a_token_there_is_nothing_to_prove() -> None:
    holder = TokenHolder(token="unused", html=False)
    client = V2Client(holder.url)
    try:
        client.server_metadata()
        assert [r.path for r in holder.seen] == ["/v2"]
    finally:
        client.close()
        holder.close()


def test_proxy_variables_never_see_a_request_for_the_endpoint(
    endpoint: nbd.Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = RecordingProxy()
    try:
        for variable in PROXY_VARIABLES:
            monkeypatch.setenv(variable, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with httpx.Client() as careless:  # the recorder is a working trap
            careless.get(f"{endpoint.url}/v2/health/live")
        assert len(proxy.seen) == 1
        proxy.seen.clear()

        fresh = nbd.get(NAME)
        np.testing.assert_allclose(fresh.predict(SAMPLE), expected_output(SAMPLE), rtol=1e-5)
        client = V2Client(endpoint.url, token=endpoint.token)
        try:
            assert client.ready()
            assert client.metadata(NAME)["name"] == NAME
        finally:
            client.close()
        benchmark_endpoint(
            fresh, SAMPLE[:1], concurrency=(1,), payloads=["binary"], duration_s=0.2, warmup=1
        )
        assert proxy.seen == []
    finally:
        proxy.close()


def test_a_port_that_accepts_and_hangs_up_is_unreachable_not_an_impostor() -> None:
    """Like Docker's port proxy while its container restarts: nothing answers at all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    received: list[bytes] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                received.append(conn.recv(65536))
            finally:
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    port = listener.getsockname()[1]
    client = V2Client(f"http://127.0.0.1:{port}", token="s3cret")
    try:
        with pytest.raises(DeployError, match=f"cannot reach the endpoint.*127.0.0.1:{port}"):
            client.metadata(NAME)
        assert not client.ready()
        assert received and all(b"s3cret" not in chunk for chunk in received)
        assert all(chunk.startswith(b"GET /nbdeploy/identity?nonce=") for chunk in received)
    finally:
        client.close()
        listener.close()
