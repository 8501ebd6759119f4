"""Tabular models over real HTTP: one typed input per DataFrame column (strings included),
missing values refused or accepted per input, strict JSON out, and output meanings honoured by
the classification extension. Models are built with scikit-learn + skl2onnx, answers compared
with onnxruntime in process."""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers.serve import (
    CHURN_CLASSES,
    HGB_LABELS,
    ServerProcess,
    binary_body,
    churn_frame,
    decode_response,
    hgb_frame,
    metric_value,
    save_churn,
    save_hgb,
    save_mlp,
    save_nan_out,
    start_server,
)

pytest.importorskip("skl2onnx")
pytest.importorskip("pandas")

DATATYPES = {"object": "BYTES", "float32": "FP32", "int64": "INT64", "bool": "BOOL"}
NAN = float("nan")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tabular-repo")
    save_churn(root / "churn" / "1")
    save_hgb(root / "hgb" / "1")
    save_nan_out(root / "nanout" / "1")
    save_mlp(root / "mlp" / "1", seed=1)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("tabular-logs")
    running = start_server(repository, "--max-queue-delay-ms", "20", log_path=logs / "server.log")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


def columns(frame: Any) -> dict[str, np.ndarray]:
    """One [n, 1] array per column, strings as object arrays of str (as onnxruntime wants)."""
    parts = {}
    for name in frame.columns:
        values = frame[[name]].to_numpy().copy()
        if values.dtype == object:
            values = values.astype(str).astype(object)
        parts[name] = values
    return parts


def json_inputs(parts: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    inputs = []
    for name, array in parts.items():
        data = [
            [None if isinstance(v, float) and math.isnan(v) else v] for v in array[:, 0].tolist()
        ]
        inputs.append(
            {
                "name": name,
                "datatype": DATATYPES[array.dtype.name],
                "shape": list(array.shape),
                "data": data,
            }
        )
    return inputs


def binary_request(parts: dict[str, np.ndarray], **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    return binary_body(
        [(name, DATATYPES[array.dtype.name], array) for name, array in parts.items()], **kwargs
    )


def reference(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def infer(client: httpx.Client, model: str, inputs: list[dict], **extra: Any) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})


def raw_infer(client: httpx.Client, model: str, text: str) -> httpx.Response:
    """A JSON body sent as written (httpx itself refuses to write NaN)."""
    return client.post(
        f"/v2/models/{model}/infer",
        content=text.encode(),
        headers={"Content-Type": "application/json"},
    )


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.dtype == object:
            assert got[name].tolist() == value.tolist()
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7)


def error_of(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert "\n" not in body["error"]
    return body["error"]


# --- metadata --------------------------------------------------------------------------------


def test_metadata_lists_one_input_per_column_and_what_outputs_mean(client: httpx.Client):
    meta = client.get("/v2/models/churn").json()
    assert meta["inputs"] == [
        {"name": "city", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "age", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "visits", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "member", "datatype": "BOOL", "shape": [-1, 1]},
    ]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert meta["parameters"]["outputs"] == {
        "label": {"kind": "label", "classes": CHURN_CLASSES},
        "probabilities": {"kind": "probabilities", "classes": CHURN_CLASSES},
    }
    assert meta["parameters"]["accepts_nan"] == []
    assert meta["parameters"]["dynamic_batching"] is True
    hgb = client.get("/v2/models/hgb").json()["parameters"]
    assert hgb["accepts_nan"] == ["a"]
    assert hgb["labels"] == HGB_LABELS
    assert "accepts_nan" not in client.get("/v2/models/mlp").json()["parameters"]


# --- strings and typed columns ---------------------------------------------------------------


def test_string_and_numeric_columns_over_json_and_binary_match_onnxruntime(
    client: httpx.Client, repository: Path
):
    parts = columns(churn_frame(12, seed=5))
    assert parts["city"].dtype == object and isinstance(parts["city"][0, 0], str)
    expected = reference(repository, "churn", parts)
    assert set(expected["label"].tolist()) == set(CHURN_CLASSES)
    as_json = infer(client, "churn", json_inputs(parts))
    body, headers = binary_request(parts, parameters={"binary_data_output": True})
    as_binary = client.post("/v2/models/churn/infer", content=body, headers=headers)
    for response in (as_json, as_binary):
        assert response.status_code == 200, response.text
        assert_same(decode_response(response), expected)
    labels = as_json.json()["outputs"][0]
    assert labels["datatype"] == "BYTES" and labels["data"] == expected["label"].tolist()


def test_strings_reach_the_model_as_text_not_as_bytes_repr(client: httpx.Client, repository: Path):
    """A category sent over the binary extension must one-hot exactly like the same text in
    JSON; handed to onnxruntime as bytes it would be the unknown category "b'Oslo'"."""
    frame = churn_frame(4, seed=6)
    frame["city"] = ["Oslo", "Zürich", "Köln", "nowhere"]
    parts = columns(frame)
    expected = reference(repository, "churn", parts)
    unknown = dict(parts, city=np.array([["b'Oslo'"], ["x"], ["y"], ["z"]], dtype=object))
    differs = reference(repository, "churn", unknown)["probabilities"][0]
    assert not np.allclose(differs, expected["probabilities"][0])
    body, headers = binary_request(parts)
    response = client.post("/v2/models/churn/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert_same(decode_response(response), expected)


def _send_all(server: ServerProcess, requests: list[tuple[bytes, dict[str, str]]]):
    barrier = threading.Barrier(len(requests))

    def send(item: tuple[bytes, dict[str, str]]) -> httpx.Response:
        content, headers = item
        with httpx.Client(base_url=server.url, timeout=60) as c:
            barrier.wait()
            return c.post("/v2/models/churn/infer", content=content, headers=headers)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def _runs(server: ServerProcess) -> float:
    """onnxruntime runs of the churn model so far."""
    text = httpx.get(f"{server.url}/metrics").text
    return metric_value(text, "nbdeploy_batch_requests_count", model="churn", version="1")


@pytest.fixture(scope="module")
def merging_server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server that runs every model on its thread (``--inline-run-us 0``): concurrent
    requests to the quick churn model then wait for a run together and are merged."""
    logs = tmp_path_factory.mktemp("tabular-merging-logs")
    running = start_server(
        repository,
        "--max-queue-delay-ms",
        "20",
        "--inline-run-us",
        "0",
        log_path=logs / "server.log",
    )
    yield running
    assert running.stop() == 0, running.log()


def test_concurrent_tabular_requests_are_batched_and_each_answered(
    merging_server: ServerProcess, repository: Path
):
    server = merging_server
    merged = False
    for attempt in range(5):
        requests, expected = [], []
        for i in range(16):
            parts = columns(churn_frame(1 + i % 3, seed=100 * attempt + i))
            expected.append(reference(repository, "churn", parts))
            if i % 2:
                requests.append(binary_request(parts))
            else:
                payload = json.dumps({"inputs": json_inputs(parts)}).encode()
                requests.append((payload, {"Content-Type": "application/json"}))
        before = _runs(server)
        responses = _send_all(server, requests)
        for response, want in zip(responses, expected, strict=True):
            assert response.status_code == 200, response.text
            assert_same(decode_response(response), want)
        if _runs(server) - before < 16:
            merged = True
            break
    assert merged, "16 concurrent tabular requests never shared an onnxruntime run"
    assert "a merged batch" not in server.log()


# --- missing values --------------------------------------------------------------------------

AGE_MESSAGE = (
    "input 'age' contains NaN or infinity (first at index [1, 0]); model 'churn' does not"
    " accept missing values in it (send finite numbers in 'age'; null and NaN count as missing,"
    " which this model accepts in none of its inputs)"
)


def test_nan_in_an_input_that_does_not_accept_it_is_refused_naming_it(client: httpx.Client):
    parts = columns(churn_frame(3, seed=7))
    parts["age"][1, 0] = np.nan
    as_null = infer(client, "churn", json_inputs(parts))
    assert error_of(as_null) == AGE_MESSAGE
    body, headers = binary_request(parts)
    as_binary = client.post("/v2/models/churn/infer", content=body, headers=headers)
    assert error_of(as_binary) == AGE_MESSAGE
    text = json.dumps({"inputs": json_inputs(parts)})
    for token in ("NaN", "Infinity", "-Infinity"):
        response = raw_infer(client, "churn", text.replace("null", token))
        assert error_of(response) == AGE_MESSAGE
    parts["age"][1, 0] = np.inf
    body, headers = binary_request(parts)
    response = client.post("/v2/models/churn/infer", content=body, headers=headers)
    assert error_of(response) == AGE_MESSAGE
    # a model with no accepts_nan record at all accepts NaN nowhere
    x = [[0.5, None, 2.0, 0.25]]
    plain = infer(client, "mlp", [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}])
    assert "input 'x' contains NaN or infinity (first at index [0, 1]); model 'mlp'" in error_of(
        plain
    )


def test_nan_in_an_input_that_accepts_it_is_passed_to_the_model(
    client: httpx.Client, repository: Path
):
    parts = columns(hgb_frame(8, seed=8))
    assert np.isnan(parts["a"]).any()
    expected = reference(repository, "hgb", parts)
    as_null = infer(client, "hgb", json_inputs(parts))
    assert as_null.status_code == 200, as_null.text
    assert_same(decode_response(as_null), expected)
    body, headers = binary_request(parts)
    as_binary = client.post("/v2/models/hgb/infer", content=body, headers=headers)
    assert_same(decode_response(as_binary), expected)
    as_token = raw_infer(
        client, "hgb", json.dumps({"inputs": json_inputs(parts)}).replace("null", "NaN")
    )
    assert_same(decode_response(as_token), expected)

    refused_b = dict(parts, b=parts["a"].copy())
    assert error_of(infer(client, "hgb", json_inputs(refused_b))) == (
        "input 'b' contains NaN or infinity (first at index [0, 0]); model 'hgb' does not accept"
        " missing values in it (send finite numbers in 'b'; null and NaN count as missing, which"
        " this model accepts only in ['a'])"
    )
    infinite = {"a": np.array([[1.0], [-np.inf]], np.float32), "b": np.ones((2, 1), np.float32)}
    body, headers = binary_request(infinite)
    response = client.post("/v2/models/hgb/infer", content=body, headers=headers)
    assert error_of(response) == (
        "input 'a' contains infinity (first at index [1, 0]); model 'hgb' accepts NaN or null as"
        " a missing value in it, but not infinity"
    )


# --- strict JSON out -------------------------------------------------------------------------


def test_non_finite_outputs_are_null_in_json_and_raw_in_binary(client: httpx.Client):
    x = np.array([[NAN], [0.0], [2.0]], dtype=np.float32)
    response = infer(client, "nanout", json_inputs({"x": x}))
    assert response.status_code == 200, response.text
    assert "NaN" not in response.text and "Infinity" not in response.text
    outputs = {o["name"]: o["data"] for o in json.loads(response.text)["outputs"]}
    assert outputs == {
        "same": [None, 0.0, 2.0],
        "ratio": [None, None, 1.0],
        "flat": [None, 0.0, 2.0],
    }
    body, headers = binary_request({"x": x}, parameters={"binary_data_output": True})
    binary = decode_response(client.post("/v2/models/nanout/infer", content=body, headers=headers))
    np.testing.assert_array_equal(binary["ratio"], [[NAN], [NAN], [1.0]])
    np.testing.assert_array_equal(binary["same"], x)


def test_a_non_finite_request_id_is_echoed_as_null(client: httpx.Client):
    text = (
        '{"id": NaN, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}'
    )
    response = raw_infer(client, "nanout", text)
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["id"] is None


# --- classification --------------------------------------------------------------------------


def _classify(client: httpx.Client, model: str, parts: dict, output: str, count: int):
    outputs = [{"name": output, "parameters": {"classification": count}}]
    return infer(client, model, json_inputs(parts), outputs=outputs)


def test_classification_ranks_probabilities_with_the_outputs_classes(
    client: httpx.Client, repository: Path
):
    parts = columns(churn_frame(3, seed=9))
    probabilities = reference(repository, "churn", parts)["probabilities"]
    response = _classify(client, "churn", parts, "probabilities", 2)
    assert response.status_code == 200, response.text
    got = response.json()["outputs"][0]
    assert got["datatype"] == "BYTES" and got["shape"] == [3, 2]
    for row, ranked in zip(probabilities, np.array(got["data"]).reshape(3, 2), strict=True):
        order = np.argsort(-row, kind="stable")
        assert [text.split(":")[1:] for text in ranked] == [
            [str(i), CHURN_CLASSES[i]] for i in order
        ]
        assert float(ranked[0].split(":")[0]) == pytest.approx(row[order[0]], abs=1e-6)
    # no classes recorded for the output: the model's labels name the columns
    hgb = _classify(client, "hgb", columns(hgb_frame(2, seed=10)), "probabilities", 1)
    assert hgb.status_code == 200, hgb.text
    assert all(text.split(":")[2] in HGB_LABELS for text in hgb.json()["outputs"][0]["data"])


def test_classification_of_labels_values_and_unrecorded_1d_outputs_is_refused(
    client: httpx.Client,
):
    parts = columns(churn_frame(2, seed=11))
    assert error_of(_classify(client, "churn", parts, "label", 1)) == (
        "output 'label' of model 'churn' holds class labels (kind 'label'), not per-class"
        " scores, so classification cannot rank it; ask it of 'probabilities' instead, or"
        " request 'label' without classification"
    )
    hgb_label = _classify(client, "hgb", columns(hgb_frame(2, seed=12)), "label", 1)
    assert "holds class labels (kind 'label')" in error_of(hgb_label)
    x = {"x": np.array([[1.0], [2.0]], dtype=np.float32)}
    assert error_of(_classify(client, "nanout", x, "same", 1)) == (
        "output 'same' of model 'nanout' holds predicted values (kind 'value'), not per-class"
        " scores, so classification cannot rank it; request 'same' without classification"
    )
    assert error_of(_classify(client, "nanout", x, "flat", 1)) == (
        "output 'flat' of model 'nanout' is 1-D ([2]) and not recorded as per-class"
        " probabilities or logits, so classification cannot rank it; request 'flat' without"
        " classification"
    )


# --- bad input -------------------------------------------------------------------------------


def _churn_json(**changes: Any) -> list[dict[str, Any]]:
    inputs = json_inputs(columns(churn_frame(2, seed=13)))
    inputs = [spec for spec in inputs if changes.get(spec["name"]) != "drop"]
    for spec in inputs:
        spec.update(changes.get(spec["name"], {}))
    return inputs


def _bytes_element(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "little") + raw


def _json(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"json": {"inputs": inputs}}


def _lone_surrogate() -> dict[str, Any]:
    text = json.dumps({"inputs": _churn_json(city={"data": [["@@"], ["Oslo"]]})})
    return {"content": text.replace('"@@"', '"\\ud800"').encode()}


def _invalid_utf8() -> dict[str, Any]:
    """The binary extension with a city of bytes that are no UTF-8."""
    parts = columns(churn_frame(1, seed=14))
    city = _bytes_element(b"\xff\xfe")
    header = {"inputs": []}
    raw = []
    for name, array in parts.items():
        data = city if name == "city" else np.ascontiguousarray(array).tobytes()
        header["inputs"].append(
            {
                "name": name,
                "datatype": DATATYPES[array.dtype.name],
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(data)},
            }
        )
        raw.append(data)
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return {"content": head + b"".join(raw), "headers": headers}


BAD = [
    (
        "null string",
        _json(_churn_json(city={"data": [["Oslo"], [None]]})),
        'input \'city\' is BYTES: its "data" holds null; send "" for a missing string',
    ),
    (
        "null int",
        _json(_churn_json(visits={"data": [[1], [None]]})),
        "input 'visits' is INT64 but its \"data\" holds null; only float inputs (FP16, FP32,"
        " FP64) take null, as a missing value",
    ),
    (
        "null bool",
        _json(_churn_json(member={"data": [[True], [None]]})),
        "input 'member' is BOOL but its \"data\" holds null",
    ),
    ("null float", _json(_churn_json(age={"data": [[30.0], [None]]})), AGE_MESSAGE),
    (
        "numbers as strings",
        _json(_churn_json(city={"data": [[1], [2]]})),
        "input 'city' is BYTES: its \"data\" must hold strings",
    ),
    (
        "string in a float column",
        _json(_churn_json(age={"data": [[None], ["42"]]})),
        "input 'age' is FP32 but its \"data\" holds values that are not all numbers",
    ),
    (
        "city as FP32",
        _json(_churn_json(city={"datatype": "FP32", "data": [[1.0], [2.0]]})),
        "input 'city' of model 'churn' expects datatype BYTES, the request gives FP32",
    ),
    ("missing column", _json(_churn_json(member="drop")), "(missing ['member'])"),
    ("lone surrogate", _lone_surrogate(), "a BYTES element of input 'city' is not valid Unicode"),
    ("invalid utf-8", _invalid_utf8(), "a BYTES element of input 'city' is not valid UTF-8"),
]


@pytest.mark.parametrize(
    ("request_args", "needle"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_tabular_input_is_one_line_and_the_server_keeps_serving(
    client: httpx.Client, request_args: dict[str, Any], needle: str
):
    response = client.post("/v2/models/churn/infer", **request_args)
    assert needle in error_of(response)
    good = infer(client, "churn", _churn_json())
    assert good.status_code == 200, good.text


def test_no_tabular_request_ever_got_a_500(server: ServerProcess):
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_value(text, "nbdeploy_http_requests_total", status="500") == 0
    assert metric_value(text, "nbdeploy_http_requests_total", status="400") > 20
    assert "Traceback" not in server.log()
