"""The Jupyter server extension against real deployments (process runtime) via pytest-jupyter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbdeploy as nbd
from nbdeploy.client import HEADER_LENGTH, decode_response, encode_request
from nbdeploy.demo import write_demo
from nbdeploy.endpoint import benchmark_latency
from nbdeploy.jupyter.server import metrics as metrics_summary
from tests.helpers.onnx_models import linear_model, save_linear

NAME = "linear"
SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def jp_server_config() -> Config:
    extensions = {"nbdeploy.jupyter.server": True, "voila.server_extension": True}
    return Config({"ServerApp": {"jpserver_extensions": extensions}})


@pytest.fixture
def jp_root_dir(nbdeploy_home: Path) -> Path:
    """Jupyter serves NBDEPLOY_HOME, so Voila's extension can render the demo notebooks."""
    return nbdeploy_home


@pytest.fixture
def onnx_path(tmp_path: Path) -> Path:
    return save_linear(tmp_path / "linear.onnx")


@pytest.fixture
def stop_all(nbdeploy_home: Path) -> Iterator[None]:
    """Stop whatever a test left running, so no server outlives it."""
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()


def deploy(model: object) -> nbd.Endpoint:
    return nbd.deploy(model, SAMPLE, name=NAME, runtime="process")


def expected_output(x: np.ndarray) -> np.ndarray:
    _, weight, bias = linear_model()
    return x @ weight + bias


async def fetch_json(jp_fetch, *parts: str, **kwargs) -> dict:
    response = await jp_fetch(*parts, **kwargs)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def fetch_error(jp_fetch, *parts: str, **kwargs) -> tuple[int, dict]:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*parts, **kwargs)
    return caught.value.code, json.loads(caught.value.response.body)


def infer_body(x: np.ndarray) -> str:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )


async def test_list_and_detail_show_the_deployment_and_its_benchmark(
    jp_fetch, onnx_path: Path, stop_all: None
) -> None:
    artifact = nbd.export(onnx_path, None, name=NAME)
    report = nbd.benchmark([artifact], SAMPLE, batch_sizes=(1, 2), baseline=False)
    artifact.benchmark = report.to_dict()
    endpoint = deploy(artifact)

    listing = await fetch_json(jp_fetch, "nbdeploy", "api", "deployments")
    (row,) = listing["deployments"]
    measured = next(
        r for r in report.to_dict()["results"] if r["batch_size"] == 1 and r["status"] == "ok"
    )
    assert row["name"] == NAME
    assert row["version"] == endpoint.version == 1
    assert row["runtime"] == "process"
    assert row["status"] == "running"
    assert row["url"] == endpoint.url
    assert row["created_at"] == endpoint.created_at
    assert row["proxy_path"] == f"nbdeploy/proxy/{NAME}/"
    assert row["p50_ms"] == measured["p50_ms"]
    assert row["p99_ms"] == measured["p99_ms"]
    assert row["latency_source"] == "in-process"
    assert row["demo_url"] is None

    http = nbd.benchmark(endpoint, SAMPLE, concurrency=(1, 2), payloads=["json"], duration_s=0.3)
    over_http = next(r for r in http.results if r.concurrency == 1 and r.batch_size == 1)
    (row,) = (await fetch_json(jp_fetch, "nbdeploy", "api", "deployments"))["deployments"]
    assert row["latency_source"] == "endpoint"
    assert (row["p50_ms"], row["p99_ms"]) == (over_http.p50_ms, over_http.p99_ms)

    write_demo(NAME)
    (row,) = (await fetch_json(jp_fetch, "nbdeploy", "api", "deployments"))["deployments"]
    assert row["demo_url"] == f"voila/render/demos/{NAME}.ipynb"

    detail = await fetch_json(jp_fetch, "nbdeploy", "api", "deployments", NAME)
    assert detail["signature"]["inputs"][0]["name"] == "input"
    assert detail["signature"]["inputs"][0]["shape"] == [-1, 4]
    assert detail["model"]["variant"] == "fp32"
    assert detail["model"]["onnx_sha256"] == nbd.models()[0]["sha256"]
    assert [(v["version"], v["serving"]) for v in detail["registered"]] == [(1, True)]


async def test_empty_listing_and_error_statuses(
    jp_fetch, jp_base_url: str, onnx_path: Path, stop_all: None
) -> None:
    assert await fetch_json(jp_fetch, "nbdeploy", "api", "deployments") == {"deployments": []}

    code, body = await fetch_error(jp_fetch, "nbdeploy", "api", "deployments", "nope")
    assert code == 404 and "'nope'" in body["error"]
    code, body = await fetch_error(jp_fetch, "nbdeploy", "api", "deployments", "Bad Name")
    assert code == 400 and "invalid model name" in body["error"]
    code, body = await fetch_error(
        jp_fetch, "nbdeploy", "api", "deployments", "nope", "stop", method="POST", body=""
    )
    assert code == 404 and "nope" in body["error"]
    code, body = await fetch_error(jp_fetch, "nbdeploy", "api", "no-such-route")
    assert code == 404 and "no-such-route" in body["error"]
    code, body = await fetch_error(jp_fetch, "nbdeploy", "proxy", "nope", "v2")
    assert code == 404 and "nope" in body["error"]

    deploy(onnx_path)
    logs = ("nbdeploy", "api", "deployments", NAME, "logs")
    code, body = await fetch_error(jp_fetch, *logs, params={"tail": "many"})
    assert code == 400 and "tail" in body["error"]
    code, body = await fetch_error(jp_fetch, *logs, params={"tail": "0"})
    assert code == 400

    rollback = ("nbdeploy", "api", "deployments", NAME, "rollback")
    code, body = await fetch_error(jp_fetch, *rollback, method="POST", body="{not json")
    assert code == 400 and "JSON" in body["error"]
    code, body = await fetch_error(jp_fetch, *rollback, method="POST", body='{"version": "2"}')
    assert code == 400 and "positive integer" in body["error"]
    code, body = await fetch_error(jp_fetch, *rollback, method="POST", body="[1]")
    assert code == 400
    code, body = await fetch_error(jp_fetch, *rollback, method="POST", body="")
    assert code == 409 and "no earlier version" in body["error"]
    code, body = await fetch_error(jp_fetch, *rollback, method="POST", body='{"version": 7}')
    assert code == 404 and "no version 7" in body["error"]

    anonymous = {"Authorization": "token not-the-token"}
    code, body = await fetch_error(jp_fetch, "nbdeploy", "api", "deployments", headers=anonymous)
    assert code == 403 and "error" in body
    proxy_infer = ("nbdeploy", "proxy", NAME, "v2", "models", NAME, "infer")
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*proxy_infer, method="POST", body=infer_body(SAMPLE), headers=anonymous)
    assert caught.value.code == 403
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("nbdeploy", "proxy", NAME, "v2", headers=anonymous, follow_redirects=False)
    assert caught.value.code == 302
    assert "/login" in caught.value.response.headers["Location"]


async def test_proxy_infers_and_metrics_and_logs_see_it(
    jp_fetch, onnx_path: Path, stop_all: None
) -> None:
    endpoint = deploy(onnx_path)
    proxy = ("nbdeploy", "proxy", NAME)

    metadata = json.loads((await jp_fetch(*proxy, "v2", "models", NAME)).body)
    assert metadata["name"] == NAME
    assert metadata["inputs"][0]["name"] == "input"

    response = await jp_fetch(
        *proxy, "v2", "models", NAME, "infer", method="POST", body=infer_body(SAMPLE)
    )
    output = json.loads(response.body)["outputs"][0]
    result = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(result, expected_output(SAMPLE), rtol=1e-5, atol=1e-5)

    chunked = infer_body(SAMPLE + 1).encode()

    async def produce(write) -> None:
        for start in range(0, len(chunked), 100):
            await write(chunked[start : start + 100])

    response = await jp_fetch(
        *proxy, "v2", "models", NAME, "infer", method="POST", body_producer=produce
    )
    output = json.loads(response.body)["outputs"][0]
    np.testing.assert_allclose(
        np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]),
        expected_output(SAMPLE + 1),
        rtol=1e-5,
        atol=1e-5,
    )

    large = np.random.default_rng(1).standard_normal((60_000, 4)).astype(np.float32)
    body, headers = encode_request({"input": large}, binary=True)
    assert len(body) > 512 * 1024
    response = await jp_fetch(
        *proxy, "v2", "models", NAME, "infer", method="POST", body=body, headers=headers
    )
    assert HEADER_LENGTH in response.headers
    decoded = decode_response(response.body, response.headers)
    np.testing.assert_allclose(decoded["output"], expected_output(large), rtol=1e-4, atol=1e-4)

    code, body = await fetch_error(
        jp_fetch, *proxy, "v2", "models", "other", "infer", method="POST", body=infer_body(SAMPLE)
    )
    assert code == 404 and "other" in body["error"]

    summary = await fetch_json(jp_fetch, "nbdeploy", "api", "deployments", NAME, "metrics")
    assert summary["version"] == endpoint.version
    assert summary["requests"]["infer_by_status"] == {"200": 3, "404": 1}
    assert summary["latency_ms"]["count"] == 4
    assert summary["latency_ms"]["p50"] > 0
    assert summary["batch_size"]["count"] >= 2
    assert summary["batch_size"]["p99"] >= 2

    logs = await fetch_json(
        jp_fetch, "nbdeploy", "api", "deployments", NAME, "logs", params={"tail": "50"}
    )
    assert logs["tail"] == 50
    assert f"POST /v2/models/{NAME}/infer" in logs["logs"]


async def test_rollback_and_stop_through_the_api(
    jp_fetch, onnx_path: Path, tmp_path: Path, stop_all: None
) -> None:
    deploy(onnx_path)
    deploy(save_linear(tmp_path / "second.onnx", seed=1))
    base = ("nbdeploy", "api", "deployments", NAME)

    row = await fetch_json(jp_fetch, *base, "rollback", method="POST", body="")
    assert (row["version"], row["status"]) == (1, "running")
    assert nbd.get(NAME).version == 1
    row = await fetch_json(jp_fetch, *base, "rollback", method="POST", body='{"version": 2}')
    assert row["version"] == 2
    detail = await fetch_json(jp_fetch, *base)
    assert {v["version"]: v["serving"] for v in detail["registered"]} == {1: False, 2: True}

    stopped = await fetch_json(jp_fetch, *base, "stop", method="POST", body="")
    assert stopped == {"name": NAME, "stopped_versions": [2]}
    assert nbd.deployments() == []
    assert await fetch_json(jp_fetch, "nbdeploy", "api", "deployments") == {"deployments": []}
    code, _ = await fetch_error(jp_fetch, *base, "stop", method="POST", body="")
    assert code == 404


def test_metrics_summary_estimates_quantiles_from_buckets() -> None:
    text = "\n".join(
        [
            "# TYPE nbdeploy_http_requests_total counter",
            'nbdeploy_http_requests_total{method="POST",route="/v2/models/{model}/infer",status="200"} 8',
            'nbdeploy_http_requests_total{method="POST",route="/v2/models/{model}/infer",status="400"} 2',
            'nbdeploy_http_requests_total{method="GET",route="/v2/health/ready",status="200"} 5',
            "# TYPE nbdeploy_http_request_duration_seconds histogram",
            'nbdeploy_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/v2/models/{model}/infer"} 0',
            'nbdeploy_http_request_duration_seconds_bucket{le="0.002",method="POST",route="/v2/models/{model}/infer"} 5',
            'nbdeploy_http_request_duration_seconds_bucket{le="0.004",method="POST",route="/v2/models/{model}/infer"} 10',
            'nbdeploy_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v2/models/{model}/infer"} 10',
            'nbdeploy_http_request_duration_seconds_count{method="POST",route="/v2/models/{model}/infer"} 10',
            'nbdeploy_http_request_duration_seconds_sum{method="POST",route="/v2/models/{model}/infer"} 0.025',
            'nbdeploy_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/v2/health/ready"} 5',
            'nbdeploy_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/v2/health/ready"} 5',
            'nbdeploy_http_request_duration_seconds_count{method="GET",route="/v2/health/ready"} 5',
            'nbdeploy_http_request_duration_seconds_sum{method="GET",route="/v2/health/ready"} 0.001',
            "# TYPE nbdeploy_batch_size histogram",
            'nbdeploy_batch_size_bucket{le="1",model="m",version="1"} 3',
            'nbdeploy_batch_size_bucket{le="2",model="m",version="1"} 3',
            'nbdeploy_batch_size_bucket{le="4",model="m",version="1"} 4',
            'nbdeploy_batch_size_bucket{le="+Inf",model="m",version="1"} 4',
            'nbdeploy_batch_size_count{model="m",version="1"} 4',
            'nbdeploy_batch_size_sum{model="m",version="1"} 7',
            "",
        ]
    )
    summary = metrics_summary.summarize(text)
    assert summary["requests"] == {
        "total": 15,
        "by_status": {"200": 13, "400": 2},
        "infer_total": 10,
        "infer_by_status": {"200": 8, "400": 2},
    }
    latency = summary["latency_ms"]
    assert latency["count"] == 10 and latency["mean"] == pytest.approx(2.5)
    assert latency["p50"] == pytest.approx(2.0)
    assert latency["p99"] == pytest.approx(2.0 + 2.0 * (9.9 - 5) / 5)
    batch = summary["batch_size"]
    assert batch["count"] == 4 and batch["mean"] == pytest.approx(1.75)
    assert batch["p50"] == pytest.approx(2 / 3, abs=1e-3)
    assert batch["p99"] == pytest.approx(2 + 2 * (3.96 - 3))


def test_benchmark_latency_prefers_the_served_variant_at_batch_one() -> None:
    def row(**fields: object) -> dict:
        return {"engine": "onnxruntime", "concurrency": 1, "status": "ok", **fields}

    report = {
        "results": [
            row(variant="fp32", batch_size=1, p50_ms=1.0, p99_ms=2.0),
            row(variant="int8", batch_size=8, p50_ms=3.0, p99_ms=4.0),
            row(variant="int8", batch_size=1, p50_ms=0.5, p99_ms=0.9),
            row(variant="int8", batch_size=1, p50_ms=None, status="error"),
        ]
    }
    assert benchmark_latency(report, "int8")["p50_ms"] == 0.5
    assert benchmark_latency(report, "fp32")["p99_ms"] == 2.0
    assert benchmark_latency(None, "fp32") is None
    assert benchmark_latency({"results": [report["results"][3]]}, "int8") is None


async def test_the_extension_records_where_it_is_for_its_kernels(
    jp_fetch, jp_base_url: str, nbdeploy_home: Path, onnx_path: Path, stop_all: None
) -> None:
    import os
    import stat

    from nbdeploy import api

    await jp_fetch("nbdeploy", "api", "deployments")
    record = nbdeploy_home / "jupyter" / f"{os.getpid()}.json"
    info = json.loads(record.read_text())
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert info["base_url"] == jp_base_url.rstrip("/") + "/"
    assert Path(info["root_dir"]).resolve() == nbdeploy_home.resolve()
    assert info["voila"] is True

    endpoint = deploy(nbd.export(onnx_path, None, name=NAME))
    links = api.links(NAME)
    assert links["endpoint"] == f"{info['base_url']}nbdeploy/proxy/{NAME}/"
    assert links["endpoint_direct"] == endpoint.url
    assert links["demo"] is None and links["demo_direct"] is None
    write_demo(NAME)
    assert api.links(NAME)["demo"] == f"{info['base_url']}voila/render/demos/{NAME}.ipynb"

    api.forget_jupyter_server()
    assert not record.exists()
    assert api.links(NAME)["endpoint"] == endpoint.url


async def test_post_demo_starts_the_demo_server_and_answers_a_jupyter_path(
    jp_fetch, onnx_path: Path, stop_all: None
) -> None:
    from nbdeploy import api

    deploy(nbd.export(onnx_path, None, name=NAME))
    try:
        reply = await fetch_json(
            jp_fetch, "nbdeploy", "api", "deployments", NAME, "demo", method="POST", body=""
        )
        assert reply["url"] == f"voila/render/demos/{NAME}.ipynb"
        assert reply["direct_url"].startswith("http://127.0.0.1:")
        page = await jp_fetch(*reply["url"].split("/"))
        assert page.code == 200 and f"{NAME}: live demo" in page.body.decode()
        (row,) = (await fetch_json(jp_fetch, "nbdeploy", "api", "deployments"))["deployments"]
        assert row["demo_url"] == reply["url"]
    finally:
        api.stop_demo(NAME)
    code, body = await fetch_error(
        jp_fetch, "nbdeploy", "api", "deployments", "nope", "demo", method="POST", body=""
    )
    assert code == 404 and "nope" in body["error"]
