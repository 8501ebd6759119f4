"""The Jupyter proxy attacked: a real Jupyter server with the extension, a real endpoint, and
real HTTP servers standing where the endpoint should be.

Nothing of the user's Jupyter session may reach whatever listens on an endpoint's port, and
nothing that listener answers may act on Jupyter's origin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbdeploy as nbd
from nbdeploy._errors import NbdeployError
from nbdeploy.jupyter.server import proxy
from tests.helpers.impostor import (
    Impostor,
    Recorder,
    RecordingProxy,
    TokenHolder,
    kill_behind_the_store,
)
from tests.helpers.onnx_models import save_linear

NAME = "linear"
SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
REFERER_WITH_TOKEN = "http://jupyter.example/lab?token={token}"


@pytest.fixture
def jp_server_config() -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"nbdeploy.jupyter.server": True}}})


@pytest.fixture
def jp_root_dir(nbdeploy_home: Path) -> Path:
    return nbdeploy_home


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """Proxy variables pointing at a recorder, set before the Jupyter server starts."""
    recorder = RecordingProxy()
    for variable in PROXY_VARIABLES:
        monkeypatch.setenv(variable, recorder.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield recorder
    recorder.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[nbd.Endpoint]:
    ep = nbd.deploy(save_linear(tmp_path / "linear.onnx"), SAMPLE, name=NAME, runtime="process")
    yield ep
    try:
        for running in nbd.deployments():
            running.stop()
    except NbdeployError:
        ep.stop()


@pytest.fixture
def jupyter_token(jp_serverapp: Any) -> str:
    return jp_serverapp.identity_provider.token


def jupyter_credentials(token: str) -> dict[str, Any]:
    """Everything a browser on Jupyter's page may send along: cookies, XSRF, a Referer."""
    return {
        "params": {"token": token, "keep": "1"},
        "headers": {
            "Cookie": f"_xsrf=xsrf-value; username-jupyter=session-{token}",
            "X-XSRFToken": "xsrf-value",
            "Referer": REFERER_WITH_TOKEN.format(token=token),
        },
    }


def assert_no_jupyter_credentials(recorder: Recorder, jupyter_token: str) -> None:
    for request in recorder.seen:
        assert jupyter_token not in request.target
        assert "token" not in request.query and "_xsrf" not in request.query
        for name, value in request.headers:
            assert jupyter_token not in value, (name, value)
            assert name.lower() not in ("cookie", "x-xsrftoken", "referer")
            assert not value.startswith("token ")


def point_proxy_at(monkeypatch: pytest.MonkeyPatch, url: str, token: str) -> None:
    """The deployment the proxy finds listens at ``url`` (the store's record, elsewhere)."""

    async def find_endpoint(name: str) -> Any:
        return SimpleNamespace(
            name=name, url=url, token=token, headers={"Authorization": f"Bearer {token}"}
        )

    monkeypatch.setattr(proxy, "find_endpoint", find_endpoint)


async def fetch_error(jp_fetch, *parts: str, **kwargs: Any) -> tuple[int, dict, Any]:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*parts, **kwargs)
    response = caught.value.response
    return caught.value.code, json.loads(response.body), response.headers


async def test_a_process_that_took_a_dead_servers_port_gets_nothing_from_jupyter(
    jp_fetch, jupyter_token: str, endpoint: nbd.Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ("nbdeploy", "proxy", NAME, "v2", "models", NAME)
    assert json.loads((await jp_fetch(*path)).body)["name"] == NAME  # a pooled connection
    port = endpoint.handle.port
    kill_behind_the_store(int(endpoint.handle.ref), port)
    impostor = Impostor(port=port)
    try:
        code, body, headers = await fetch_error(
            jp_fetch, *path, **jupyter_credentials(jupyter_token)
        )
        # 404 when the store already noticed its server is gone; 502 when the proxy's
        # challenge refused the impostor: either way nothing reached it.
        assert code in (404, 502), body
        assert "stolen" not in " ".join(headers.get_list("Set-Cookie"))
        assert impostor.header_values("Authorization") == []
        assert {r.path for r in impostor.seen} <= {"/nbdeploy/identity"}
        assert_no_jupyter_credentials(impostor, jupyter_token)

        point_proxy_at(monkeypatch, impostor.url, str(endpoint.token))
        for method, body_ in (("GET", None), ("POST", '{"inputs": []}')):
            code, body, headers = await fetch_error(
                jp_fetch,
                *path,
                "infer",
                method=method,
                body=body_,
                **jupyter_credentials(jupyter_token),
            )
            assert code == 502
            assert f"127.0.0.1:{port} is not {NAME}'s server" in body["error"]
            assert "nothing was sent to it" in body["error"]
            assert "stolen" not in " ".join(headers.get_list("Set-Cookie"))
        assert {r.path for r in impostor.seen} == {"/nbdeploy/identity"}
        assert impostor.header_values("Authorization") == []
        assert_no_jupyter_credentials(impostor, jupyter_token)
    finally:
        impostor.close()


async def test_what_a_server_answers_cannot_act_on_jupyters_origin(
    proxy_env: RecordingProxy,
    jp_fetch,
    jupyter_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = TokenHolder(token="endpoint-token")
    point_proxy_at(monkeypatch, holder.url, holder.token)
    try:
        credentials = jupyter_credentials(jupyter_token)
        credentials["headers"].update({"Connection": "keep-alive, X-Private", "X-Private": "1"})
        for _ in range(2):
            response = await jp_fetch("nbdeploy", "proxy", NAME, "page", **credentials)
            assert response.code == 200 and response.body == b"<html>" + response.body[6:]
            cookies = " ".join(response.headers.get_list("Set-Cookie"))
            assert "upstream" not in cookies
            assert "X-Hop-Secret" not in response.headers
            assert response.headers["X-Kept"] == "yes"
            assert "sandbox" in response.headers["Content-Security-Policy"].split(";")[0]
            assert "script-src" not in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            # Jupyter's own CORS policy stands; the upstream's never reaches the browser
            assert "evil" not in response.headers.get("Access-Control-Allow-Origin", "")
            assert "Access-Control-Allow-Credentials" not in response.headers

        identity, first, second = holder.seen[0], holder.seen[1], holder.seen[2]
        assert identity.path == "/nbdeploy/identity" and identity.header("Authorization") == []
        assert len(holder.seen) == 3  # one connection, proven once, reused
        for request in (first, second):
            assert request.path == "/page"
            assert request.query == {"keep": ["1"]}
            assert request.header("Authorization") == ["Bearer endpoint-token"]
            assert request.header("X-Private") == []
            assert request.header("Cookie") == []  # no jar replays the upstream's cookie
        assert_no_jupyter_credentials(holder, jupyter_token)
        assert proxy_env.seen == []
    finally:
        holder.close()


async def test_the_genuine_endpoint_is_proxied_sandboxed_and_around_any_env_proxy(
    proxy_env: RecordingProxy, jp_fetch, endpoint: nbd.Endpoint
) -> None:
    response = await jp_fetch("nbdeploy", "proxy", NAME, "v2", "models", NAME)
    assert json.loads(response.body)["name"] == NAME
    assert response.headers["Content-Type"].startswith("application/json")
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    metrics = json.loads((await jp_fetch("nbdeploy", "api", "deployments", NAME, "metrics")).body)
    assert metrics["version"] == endpoint.version
    assert proxy_env.seen == []


@pytest.mark.parametrize(
    "raw",
    [
        "%2e%2e/api/deployments",
        "%2E%2E",
        "lin%65ar/v2",
        "linear%2Fv2/models",
        "%6c%69%6e%65%61%72/v2",
        "Bad%20Name/v2",
        "a%00b/v2",
        "..%2F..%2Fapi/v2",
        "linear/v2/../../api",
        "linear/v2/%2e%2e/models",
        "%ff/v2",
    ],
)
async def test_encoded_and_dotted_names_and_paths_answer_4xx_in_json(
    http_server_client, jp_base_url: str, jp_auth_header: dict, endpoint: nbd.Endpoint, raw: str
) -> None:
    url = f"{jp_base_url.rstrip('/')}/nbdeploy/proxy/{raw}"
    response = await http_server_client.fetch(url, headers=jp_auth_header, raise_error=False)
    assert 400 <= response.code < 500, (response.code, response.body[:200])
    assert "error" in json.loads(response.body)
