"""TF Serving / KServe V1 REST against a real server process: clients written the way TF
Serving's tutorials write them (plain requests / httpx posting JSON), model status and metadata,
bad inputs as 4xx ``{"error": ...}``, and the same auth, limits and metrics as V2."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests

from tests.helpers.serve import (
    CHURN_CLASSES,
    ServerProcess,
    build_repository,
    churn_frame,
    metric_value,
    reference,
    save_churn,
    start_server,
)

TOKEN = "v1-token-789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7 - 1
MAX_JSON = 5000


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repository(tmp_path_factory.mktemp("v1-repo"))
    save_churn(root / "churn" / "1")
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("v1-logs")
    running = start_server(
        repository,
        "--max-json-elements",
        str(MAX_JSON),
        log_path=logs / "server.log",
        token=TOKEN,
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


# --- a client written for TF Serving ---------------------------------------------------------


def test_tf_serving_tutorial_client(repository: Path, server: ServerProcess):
    """As the TF Serving REST tutorial does it: json.dumps + requests.post, then
    json.loads(response.text)["predictions"]."""
    data = json.dumps({"signature_name": "serving_default", "instances": ROWS.tolist()})
    response = requests.post(
        f"{server.url}/v1/models/mlp:predict",
        data=data,
        headers={"content-type": "application/json", **HEADERS},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    predictions = json.loads(response.text)["predictions"]
    expected = reference(repository, "mlp", 2, {"x": ROWS})
    assert len(predictions) == 6
    assert all(set(row) == {"logits", "probs"} for row in predictions)
    np.testing.assert_allclose([row["probs"] for row in predictions], expected["probs"], rtol=1e-5)
    np.testing.assert_allclose(
        [row["logits"] for row in predictions], expected["logits"], rtol=1e-5
    )


def test_one_output_gives_plain_rows(client: httpx.Client):
    response = client.post("/v1/models/fixed:predict", json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[4.0, 5.0]]}


def test_columnar_format_answers_outputs(repository: Path, client: httpx.Client):
    response = client.post("/v1/models/mlp/versions/1:predict", json={"inputs": ROWS.tolist()})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = reference(repository, "mlp", 1, {"x": ROWS})
    np.testing.assert_allclose(outputs["probs"], expected["probs"], rtol=1e-5)
    named = client.post("/v1/models/mlp:predict", json={"inputs": {"x": ROWS[:2].tolist()}})
    assert np.array(named.json()["outputs"]["logits"]).shape == (2, 3)
    fixed = client.post("/v1/models/fixed:predict", json={"inputs": [[1, 2, 3, 4]]})
    assert fixed.json() == {"outputs": [[4.0, 5.0]]}


def test_named_inputs_per_row_and_per_column(repository: Path, client: httpx.Client):
    a = [[1.5, -2.0, 0.0], [1.0, 1.0, 1.0]]
    b = [[1, 2, -3], [4, 5, 6]]
    flag = [[True, False, True], [True, True, False]]
    rows = client.post(
        "/v1/models/pair:predict",
        json={"instances": [{"a": a[i], "b": b[i], "flag": flag[i]} for i in range(2)]},
    )
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    expected = reference(
        repository,
        "pair",
        1,
        {"a": np.array(a, np.float32), "b": np.array(b, np.int64), "flag": np.array(flag)},
    )
    assert [p["doubled"] for p in predictions] == expected["doubled"].tolist()
    assert [p["positive"] for p in predictions] == expected["positive"].tolist()
    columns = client.post(
        "/v1/models/pair:predict", json={"inputs": {"a": a, "b": b, "flag": flag}}
    )
    assert columns.json()["outputs"]["total"] == expected["total"].tolist()


def test_tabular_rows_of_scalars(repository: Path, client: httpx.Client):
    """One input per DataFrame column, each [-1, 1]: a row is an object of scalars, as a
    TF Serving client sends a feature dict."""
    frame = churn_frame(5, seed=3)
    instances = [
        {
            "city": row.city,
            "age": float(row.age),
            "visits": int(row.visits),
            "member": bool(row.member),
        }
        for row in frame.itertuples()
    ]
    response = client.post("/v1/models/churn:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    feeds = {
        "city": frame[["city"]].to_numpy().astype(object),
        "age": frame[["age"]].to_numpy(np.float32),
        "visits": frame[["visits"]].to_numpy(np.int64),
        "member": frame[["member"]].to_numpy(bool),
    }
    expected = reference(repository, "churn", 1, feeds)
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert all(p["label"] in CHURN_CLASSES for p in predictions)
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-5
    )


def test_strings_and_b64(client: httpx.Client):
    encoded = base64.b64encode("Wörld".encode()).decode()
    response = client.post(
        "/v1/models/text:predict", json={"instances": ["HeLLo", {"b64": encoded}]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [{"lower": "hello", "same": "HeLLo"}, {"lower": "wörld", "same": "Wörld"}]
    }


# --- status and metadata -----------------------------------------------------------------------


def test_model_status(client: httpx.Client):
    available = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert client.get("/v1/models/mlp").json() == {
        "model_version_status": [{"version": "1", **available}, {"version": "2", **available}]
    }
    assert client.get("/v1/models/mlp/versions/1").json() == {
        "model_version_status": [{"version": "1", **available}]
    }
    missing = client.get("/v1/models/mlp/versions/9")
    assert missing.status_code == 404 and "no version '9'" in missing.json()["error"]
    unknown = client.get("/v1/models/nope")
    assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]


def test_model_metadata(client: httpx.Client):
    meta = client.get("/v1/models/mlp/metadata").json()
    assert meta["model_spec"] == {"name": "mlp", "signature_name": "", "version": "2"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["x"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""},
        {"size": "4", "name": ""},
    ]
    assert set(signature["outputs"]) == {"logits", "probs"}
    older = client.get("/v1/models/mlp/versions/1/metadata").json()
    assert older["model_spec"]["version"] == "1"


# --- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        ("/v1/models/mlp:predict", {"instances": [[1, 2, 3]]}, 400, "expects shape [-1, 4]"),
        ("/v1/models/mlp:predict", {"instances": []}, 400, "non-empty list"),
        ("/v1/models/mlp:predict", {"instances": 5}, 400, "non-empty list"),
        ("/v1/models/mlp:predict", {"instances": [[1, 2, 3, 4]], "inputs": [[1]]}, 400, "not both"),
        ("/v1/models/mlp:predict", {"examples": [[1, 2, 3, 4]]}, 400, '"instances"'),
        ("/v1/models/mlp:predict", [[1, 2, 3, 4]], 400, "JSON object"),
        ("/v1/models/mlp:predict", {"instances": [[1, 2, 3, 4], [1, 2]]}, 400, "x"),
        ("/v1/models/mlp:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "strings"),
        ("/v1/models/mlp:predict", {"instances": [{"y": [1, 2, 3, 4]}]}, 400, "missing ['x']"),
        ("/v1/models/mlp:predict", {"inputs": {"y": [[1, 2, 3, 4]]}}, 400, "no input 'y'"),
        (
            "/v1/models/mlp:predict",
            {"signature_name": "classify", "instances": [[1, 2, 3, 4]]},
            400,
            "one signature",
        ),
        ("/v1/models/pair:predict", {"instances": [[1, 2, 3]]}, 400, "has 3 inputs"),
        (
            "/v1/models/pair:predict",
            {"instances": [{"a": [1, 2, 3], "b": [1.5, 2, 3], "flag": [True] * 3}]},
            400,
            "INT64",
        ),
        (
            "/v1/models/pair:predict",
            {"instances": [{"a": [1, 2, 3], "b": [1, 2, 3], "flag": [True] * 3}, [1, 2, 3]]},
            400,
            "mixes",
        ),
        ("/v1/models/text:predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
        ("/v1/models/text:predict", {"instances": [{"b64": "/w=="}]}, 400, "UTF-8"),
        ("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}, 404, "unknown model"),
        ("/v1/models/mlp/versions/7:predict", {"instances": [[1, 2, 3, 4]]}, 404, "no version"),
        ("/v1/models/mlp:classify", {"instances": [[1, 2, 3, 4]]}, 404, ":predict only"),
        ("/v1/models/mlp", {"instances": [[1, 2, 3, 4]]}, 405, "POST to"),
    ],
)
def test_bad_requests_are_4xx(client: httpx.Client, path: str, body, status: int, expected: str):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert expected in response.json()["error"]


def test_bad_bodies(client: httpx.Client):
    broken = client.post("/v1/models/mlp:predict", content=b'{"instances": [[1, 2')
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    binary = client.post(
        "/v1/models/mlp:predict",
        content=b'{"instances": [[1, 2, 3, 4]]}',
        headers={"Inference-Header-Content-Length": "10"},
    )
    assert binary.status_code == 400 and "JSON only" in binary.json()["error"]
    wrong_type = client.post(
        "/v1/models/mlp:predict", content=b"x", headers={"Content-Type": "image/png"}
    )
    assert wrong_type.status_code == 415
    get_predict = client.get("/v1/models/mlp:predict")
    assert get_predict.status_code == 405


def test_auth(server: ServerProcess):
    body = {"instances": [[1, 2, 3, 4]]}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(f"{server.url}/v1/models/mlp:predict", json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{server.url}/v1/models/mlp", headers=headers).status_code == 401
        assert httpx.get(f"{server.url}/v1/models/mlp/metadata", headers=headers).status_code == 401


def test_json_limits(client: httpx.Client):
    too_many = client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]] * 2000})
    assert too_many.status_code == 413
    assert "--max-json-elements" in too_many.json()["error"]
    # 900 rows in (about 4500 JSON values) fit, but 2 x 3 x 900 values out do not
    outputs = client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]] * 900})
    assert outputs.status_code == 413 and "outputs hold 5400" in outputs.json()["error"]


def test_counted_like_v2(server: ServerProcess, client: httpx.Client):
    def ok() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        return metric_value(text, "nbdeploy_model_requests_total", model="fixed", outcome="ok")

    before = ok()
    for _ in range(3):
        assert client.post("/v1/models/fixed:predict", json={"inputs": [[1, 2, 3, 4]]}).is_success
    assert client.post("/v1/models/fixed:predict", json={"inputs": [[1, 2]]}).status_code == 400
    assert ok() - before == 3
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert (
        metric_value(text, "nbdeploy_http_requests_total", route="/v1/models/{model}", status="200")
        >= 3
    )
