"""Monitoring on a real server subprocess with real ONNX models: per-version request metrics,
the per-second counter series, drift of live requests against a reference profile, and the
opt-in request log (read back with nbdeploy.request_log)."""

from __future__ import annotations

import json
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nbdeploy.serve import profile as shared
from tests.helpers.serve import (
    ServerProcess,
    churn_frame,
    metric_samples,
    metric_value,
    save_churn,
    save_lookup,
    start_server,
    write_routing,
)

ADMIN = "admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
FEATURES = 8
NAME = "drifty"


def _rows(count: int, seed: int, shift: dict[int, float] | None = None) -> np.ndarray:
    """Rows of the reference distribution: independent standard normals, some columns moved."""
    x = np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)
    for column, by in (shift or {}).items():
        x[:, column] += by
    return x


def _write_version(
    directory: Path, onnx: Path, metadata: dict[str, Any], profile: dict[str, Any] | None
) -> None:
    directory.mkdir(parents=True)
    shutil.copy(onnx, directory / "model.onnx")
    extra = {**metadata, **({"profile": profile} if profile else {})}
    document = {"name": directory.parent.name, "version": int(directory.name), "metadata": extra}
    (directory / "nbdeploy.json").write_text(json.dumps(document))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict]:
    """A LogisticRegression over 8 features exported by nbdeploy, its output metadata and the
    reference profile nbdeploy records at deploy time (from 600 reference rows)."""
    from sklearn.linear_model import LogisticRegression

    import nbdeploy as nbd
    from nbdeploy.drift_profile import reference_profile

    home = tmp_path_factory.mktemp("export-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBDEPLOY_HOME", str(home))
        x = _rows(600, seed=0)
        y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
        model = LogisticRegression(max_iter=300).fit(x, y)
        artifact = nbd.export(model, x[:8], name=NAME)
        profile = reference_profile(artifact, x)
    assert profile is not None
    metadata = {key: artifact.metadata[key] for key in ("outputs", "accepts_nan")}
    return Path(artifact.path), metadata, profile


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, exported: tuple[Path, dict[str, Any], dict]
) -> Path:
    """drifty v1 and v2 (the same model, each with the profile), v3 without a profile, and
    lookup v1 (fails to run on an index >= 5)."""
    onnx, metadata, profile = exported
    root = tmp_path_factory.mktemp("monitoring-repo")
    _write_version(root / NAME / "1", onnx, metadata, profile)
    _write_version(root / NAME / "2", onnx, metadata, profile)
    _write_version(root / NAME / "3", onnx, metadata, None)
    save_lookup(root / "lookup" / "1")
    return root


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(repository: Path, *args: str) -> ServerProcess:
        server = start_server(
            repository,
            *args,
            log_path=tmp_path / f"server-{len(started)}.log",
            admin_token=ADMIN,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _body(x: np.ndarray, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def _send(client: httpx.Client, path: str, x: np.ndarray, batch: int, **kwargs: Any) -> int:
    """Send ``x`` in requests of ``batch`` rows; returns how many requests were sent."""
    sent = 0
    for start in range(0, len(x), batch):
        response = client.post(path, json=_body(x[start : start + batch], **kwargs))
        assert response.status_code == 200, response.text
        sent += 1
    return sent


def _admin(server: ServerProcess, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{server.url}{path}", params=params, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _drift(server: ServerProcess, rows: int, name: str = NAME) -> dict[str, Any]:
    """The drift document once every version holding rows has observed ``rows`` (the worker
    thread observes after the answer is sent)."""
    deadline = time.monotonic() + 30
    while True:
        found = _admin(server, "/nbdeploy/drift", model=name)
        seen = [v["rows"] for v in found["versions"].values()]
        if rows in seen or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _scores(version: dict[str, Any]) -> dict[str, float]:
    return {f["feature"]: f["psi"] for f in version["features"]}


def _latest(series: dict[str, Any], version: int) -> dict[str, Any]:
    return series["samples"][-1]["versions"][str(version)]


# --- request metrics and the series ---------------------------------------------------------


def test_model_metrics_and_series_count_answers_per_version_and_outcome(
    serve: Callable[..., ServerProcess], repository: Path
) -> None:
    server = serve(repository)
    client = server.client()
    before = _admin(server, "/nbdeploy/series", model=NAME, window=600)
    assert before["name"] == NAME and before["interval_s"] == 1.0
    assert len(before["buckets"]) == 14
    assert set(before["samples"][-1]["versions"]) == {"1", "2", "3"}
    lookup_before = _admin(server, "/nbdeploy/series", model="lookup", window=5)
    x = _rows(60, seed=3)
    assert _send(client, f"/v2/models/{NAME}/versions/1/infer", x, batch=4) == 15
    assert _send(client, f"/v2/models/{NAME}/versions/2/infer", x, batch=10) == 6
    assert _send(client, f"/v2/models/{NAME}/infer", x[:7], batch=1) == 7  # default: v3
    # client mistakes (4xx) are not answers of a version
    wrong = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert client.post(f"/v2/models/{NAME}/versions/1/infer", json=wrong).status_code == 400
    # the model failing to run on the request is an error of that version
    bad = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [9]}]}
    good = {"inputs": [{"name": "idx", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]}]}
    for _ in range(3):
        assert client.post("/v2/models/lookup/infer", json=bad).status_code == 400
    assert client.post("/v2/models/lookup/infer", json=good).status_code == 200

    text = client.get("/metrics").text
    requests = "nbdeploy_model_requests_total"
    assert metric_value(text, requests, model=NAME, version="1", outcome="ok") == 15
    assert metric_value(text, requests, model=NAME, version="2", outcome="ok") == 6
    assert metric_value(text, requests, model=NAME, version="3", outcome="ok") == 7
    assert metric_value(text, requests, model=NAME, outcome="error") == 0
    assert metric_value(text, requests, model="lookup", version="1", outcome="error") == 3
    assert metric_value(text, requests, model="lookup", version="1", outcome="ok") == 1
    duration = "nbdeploy_model_request_duration_seconds"
    assert metric_value(text, f"{duration}_count", model=NAME, version="1") == 15
    infinite = metric_samples(text, f"{duration}_bucket", model=NAME, version="2", le="+Inf")
    assert [value for _, value in infinite] == [6]
    for labels, _ in metric_samples(text, requests):
        assert not {"deployment", "runtime"} & set(labels)

    after = _admin(server, "/nbdeploy/series", model=NAME, window=600)
    assert after["samples"][0]["t"] <= before["samples"][-1]["t"]  # the window holds both
    assert len(after["samples"]) >= 2
    for version, sent, rows in ((1, 15, 60), (2, 6, 60), (3, 7, 7)):
        old, new = _latest(before, version), _latest(after, version)
        assert new["ok"] - old["ok"] == sent
        assert new["errors"] == old["errors"] == 0
        assert len(new["latency"]) == len(after["buckets"]) + 1
        assert new["latency"][-1] - old["latency"][-1] == sent
        assert new["latency"] == sorted(new["latency"])  # cumulative
        assert new["queued"] - old["queued"] == sent
        assert new["batch_rows"] - old["batch_rows"] == rows
        assert 1 <= new["batches"] - old["batches"] <= sent
        assert new["queue_s"] >= old["queue_s"]
    lookup = _admin(server, "/nbdeploy/series", model="lookup", window=5)
    change = {
        key: _latest(lookup, 1)[key] - _latest(lookup_before, 1)[key] for key in ("ok", "errors")
    }
    assert change == {"ok": 1, "errors": 3}


def test_series_samples_every_second_and_checks_its_window(
    serve: Callable[..., ServerProcess], repository: Path
) -> None:
    server = serve(repository)
    time.sleep(3.2)
    series = _admin(server, "/nbdeploy/series", model=NAME, window=2)
    times = [sample["t"] for sample in series["samples"]]
    assert 2 <= len(times) <= 4
    assert times == sorted(times) and times[-1] == pytest.approx(series["now"], abs=0.01)
    assert all(0.5 < b - a < 1.5 for a, b in zip(times, times[1:-1], strict=False))
    assert series["now"] - times[0] <= 2.01
    for window in ("0", "601", "abc", "1.5", "-3"):
        response = httpx.get(
            f"{server.url}/nbdeploy/series",
            params={"window": window, "model": NAME},
            headers=ADMIN_HEADERS,
        )
        assert response.status_code == 400, window
        assert "window" in response.json()["error"]
    assert httpx.get(f"{server.url}/nbdeploy/series?model={NAME}").status_code == 401
    assert httpx.get(f"{server.url}/nbdeploy/drift?model={NAME}").status_code == 401
    two_models = httpx.get(f"{server.url}/nbdeploy/series", headers=ADMIN_HEADERS)
    assert two_models.status_code == 400 and "?model=" in two_models.json()["error"]


def test_routed_requests_count_the_answering_version_and_never_mirrored_calls(
    serve: Callable[..., ServerProcess], repository: Path, tmp_path: Path
) -> None:
    """v1 stable, v2 a shadow: v2 runs every request but answers none; neither its metrics,
    its series nor its drift window see the mirrored calls."""
    routing = write_routing(tmp_path / "routing.json", NAME, 1, {1: 100, 2: 0}, shadow=(2,))
    server = serve(repository, "--routing", str(routing))
    client = server.client()
    x = _rows(40, seed=5)
    _send(client, f"/v2/models/{NAME}/infer", x, batch=2, outputs=["probabilities"])
    drift = _drift(server, 40)
    assert drift["name"] == NAME
    assert drift["versions"]["1"]["rows"] == 40  # the profiled label was computed anyway
    assert drift["versions"]["2"]["rows"] == 0
    deadline = time.monotonic() + 10
    while _admin(server, "/nbdeploy/stats")["versions"]["2"]["mirrored"] < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = client.get("/metrics").text
    requests = "nbdeploy_model_requests_total"
    assert metric_value(text, requests, model=NAME, version="1", outcome="ok") == 20
    assert metric_value(text, requests, model=NAME, version="2") == 0
    series = _admin(server, "/nbdeploy/series", window=60)  # one routed name: no ?model=
    assert _latest(series, 1)["ok"] == 20 and _latest(series, 2)["ok"] == 0


# --- drift ------------------------------------------------------------------------------------


def test_drift_of_rows_from_the_reference_stays_low(
    serve: Callable[..., ServerProcess], repository: Path
) -> None:
    server = serve(repository)
    client = server.client()
    _send(client, f"/v2/models/{NAME}/versions/1/infer", _rows(1000, seed=11), batch=50)
    drift = _drift(server, 1000)
    assert set(drift["versions"]) == {"1", "2"}  # v3 has no profile
    live = drift["versions"]["1"]
    assert live["rows"] == 1000 and live["window"] == 1000 and live["dropped"] == 0
    scores = _scores(live)
    assert set(scores) == {f"input[{i}]" for i in range(FEATURES)} | {"label"}
    assert all(score < 0.1 for score in scores.values()), scores
    assert {f["kind"] for f in live["features"]} == {"input", "output"}
    assert all(sum(f["counts"]) == 1000 for f in live["features"])
    assert _drift(server, 0)["versions"]["2"]["rows"] == 0
    assert all(f["psi"] is None for f in drift["versions"]["2"]["features"])

    text = client.get("/metrics").text
    gauges = metric_samples(text, "nbdeploy_drift_score", model=NAME, version="1")
    assert {labels["feature"]: value for labels, value in gauges} == pytest.approx(scores)
    assert {labels["kind"] for labels, _ in gauges} == {"input", "output"}
    assert metric_value(text, "nbdeploy_drift_window_rows", model=NAME, version="1") == 1000
    assert metric_value(text, "nbdeploy_drift_window_rows", model=NAME, version="2") == 0
    assert not metric_samples(text, "nbdeploy_drift_window_rows", version="3")


def test_one_feature_shifted_by_two_standard_deviations_is_the_worst(
    serve: Callable[..., ServerProcess], repository: Path
) -> None:
    server = serve(repository)
    client = server.client()
    shifted = _rows(1000, seed=12, shift={5: 2.0})
    # only probabilities asked for: the profiled label is computed for drift anyway
    path = f"/v2/models/{NAME}/versions/2/infer"
    _send(client, path, shifted, batch=25, outputs=["probabilities"])
    live = _drift(server, 1000)["versions"]["2"]
    scores = _scores(live)
    worst = max(scores, key=lambda name: scores[name])
    assert worst == "input[5]" and scores[worst] > 0.2, scores
    others = [score for name, score in scores.items() if name not in ("input[5]", "label")]
    assert max(others) < 0.1
    # the window slides: 1000 reference rows push the shifted ones out
    _send(client, path, _rows(1000, seed=13), batch=100)
    deadline = time.monotonic() + 30
    while _scores(_drift(server, 1000)["versions"]["2"])["input[5]"] > 0.1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _churn_profile(frame: Any) -> dict[str, Any]:
    """A reference profile of the churn model's city (categorical) and age columns, built by
    the same functions nbdeploy builds one with."""
    city = {"feature": "city", "kind": "input", "tensor": "city", "extract": "value"}
    age = {"feature": "age", "kind": "input", "tensor": "age", "extract": "value"}
    label = {"feature": "label", "kind": "output", "tensor": "label", "extract": "value"}
    return {
        "schema": shared.SCHEMA,
        "rows": len(frame),
        "window": 500,
        "features": [
            shared.categorical_feature(city, frame["city"].to_numpy(dtype=object)),
            shared.numeric_feature(age, frame["age"].to_numpy()),
            shared.categorical_feature(label, np.array(["stay"] * 3 + ["leave"])),
        ],
    }


def _churn_body(frame: Any) -> dict[str, Any]:
    rows = len(frame)
    types = {"city": "BYTES", "age": "FP32", "visits": "INT64", "member": "BOOL"}
    return {
        "inputs": [
            {
                "name": column,
                "shape": [rows, 1],
                "datatype": datatype,
                "data": frame[column].tolist(),
            }
            for column, datatype in types.items()
        ]
    }


def test_categorical_input_drift_and_its_request_log(
    serve: Callable[..., ServerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbdeploy import request_log

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    root = tmp_path / "churn-repo"
    save_churn(root / "churn" / "1")
    document = json.loads((root / "churn" / "1" / "nbdeploy.json").read_text())
    reference = _churn_profile(churn_frame(800, seed=20))
    document["metadata"]["profile"] = reference
    (root / "churn" / "1" / "nbdeploy.json").write_text(json.dumps(document))
    logs = request_log.requests_dir("churn")
    server = serve(root, "--log-requests", "1", "--request-log-dir", str(logs))
    client = server.client()

    same = churn_frame(500, seed=21)
    for start in range(0, 500, 50):
        response = client.post("/v2/models/churn/infer", json=_churn_body(same[start : start + 50]))
        assert response.status_code == 200, response.text
    scores = _scores(_drift(server, 500, "churn")["versions"]["1"])
    assert scores["city"] < 0.1 and scores["age"] < 0.1, scores

    moved = churn_frame(500, seed=22)
    moved["city"] = np.where(np.arange(500) % 5 == 0, "Lyon", "Oslo")  # new + one city only
    for start in range(0, 500, 100):
        response = client.post(
            "/v2/models/churn/infer", json=_churn_body(moved[start : start + 100])
        )
        assert response.status_code == 200, response.text
    oslo = reference["features"][0]["categories"].index("Oslo")
    deadline = time.monotonic() + 30
    while True:  # the window holds only the moved rows once the worker has seen them all
        live = _drift(server, 500, "churn")["versions"]["1"]
        city = next(f for f in live["features"] if f["feature"] == "city")
        if city["counts"][oslo] == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert city["counts"][-1] == 100  # Lyon: the bucket of every other category
    assert sum(city["counts"]) == 500
    scores = _scores(live)
    assert max(scores, key=lambda name: scores[name]) == "city" and scores["city"] > 1, scores

    assert server.stop() == 0  # the worker finishes what is queued before the exit
    frame = request_log.load("churn")
    assert len(frame) == 1000
    assert {"t", "version", "city", "age", "visits", "member", "label"} <= set(frame.columns)
    assert list(frame["city"][:50]) == list(same["city"][:50])
    assert list(frame["city"][-5:]) == ["Lyon"] + ["Oslo"] * 4
    assert np.allclose(frame["age"][:500], same["age"], atol=1e-5)
    assert set(frame["label"]) <= {"leave", "stay"}
    assert set(frame["version"]) == {1}
    assert frame["t"].is_monotonic_increasing
    assert stat.S_IMODE((logs / "requests.jsonl").stat().st_mode) == 0o640


def _image_profile(images: np.ndarray) -> dict[str, Any]:
    features = [
        shared.numeric_feature(
            {
                "feature": f"image:{how}",
                "kind": "input",
                "tensor": "image",
                "extract": f"row_{how}",
            },
            shared.extract({"extract": f"row_{how}"}, images),
        )
        for how in ("mean", "std")
    ]
    return {"schema": shared.SCHEMA, "rows": len(images), "window": 400, "features": features}


def _images(count: int, seed: int, brighter: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (count, 1, 8, 8)) * rng.uniform(0.5, 1, (count, 1, 1, 1))
    return (images + brighter).astype(np.float32)


def test_image_inputs_drift_by_row_statistics(
    serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    from tests.helpers.serve import save_onnx

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["brightness"], keepdims=0, axes=[1, 2, 3])],
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("brightness", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    extras = {"metadata": {"profile": _image_profile(_images(600, seed=30))}}
    root = tmp_path / "image-repo"
    save_onnx(model, root / "images" / "1", extras)
    server = serve(root)
    client = server.client()

    def send(images: np.ndarray) -> None:
        for start in range(0, len(images), 40):
            part = images[start : start + 40]
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "shape": list(part.shape),
                        "datatype": "FP32",
                        "data": part.ravel().tolist(),
                    }
                ]
            }
            assert client.post("/v2/models/images/infer", json=body).status_code == 200

    send(_images(400, seed=31))
    scores = _scores(_drift(server, 400, "images")["versions"]["1"])
    assert set(scores) == {"image:mean", "image:std"}
    assert all(score < 0.1 for score in scores.values()), scores
    send(_images(400, seed=32, brighter=0.3))
    deadline = time.monotonic() + 30
    while _scores(_drift(server, 400, "images")["versions"]["1"])["image:mean"] < 0.2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    scores = _scores(_drift(server, 400, "images")["versions"]["1"])
    assert max(scores, key=lambda name: scores[name]) == "image:mean", scores


# --- the request log ----------------------------------------------------------------------------


def test_request_log_round_trips_into_a_dataframe_and_rotates(
    serve: Callable[..., ServerProcess],
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbdeploy import request_log

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    logs = request_log.requests_dir(NAME)
    server = serve(
        repository,
        "--log-requests",
        "1",
        "--request-log-dir",
        str(logs),
        "--request-log-max-bytes",
        "4000",
    )
    client = server.client()
    x = _rows(200, seed=40)
    _send(client, f"/v2/models/{NAME}/versions/1/infer", x[:3], batch=3)
    _send(client, f"/v2/models/{NAME}/versions/3/infer", x[3:], batch=1, outputs=["label"])
    assert server.stop() == 0  # the worker writes what is queued before the exit
    last = json.loads((logs / "requests.jsonl").read_text().splitlines()[-1])
    assert last["version"] == 3 and np.allclose(last["inputs"]["input"], x[-1:])

    files = request_log.log_files(NAME)
    assert [path.name for path in files] == [
        "requests.jsonl.3",
        "requests.jsonl.2",
        "requests.jsonl.1",
        "requests.jsonl",
    ]
    assert not (logs / "requests.jsonl.4").exists()
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.stat().st_size <= 4000
    records = [json.loads(line) for line in (logs / "requests.jsonl.3").read_text().splitlines()]
    assert set(records[0]) == {"t", "version", "inputs", "outputs"}

    assert len(request_log.load(NAME, version=1)) == 0  # the oldest file was dropped
    later = request_log.load(NAME)
    kept = len(later)
    assert 20 < kept < 197
    assert set(later["version"]) == {3}
    columns = [f"input[{i}]" for i in range(FEATURES)]
    assert np.allclose(later[columns].to_numpy(), x[-kept:])
    assert set(later.columns) == {"t", "version", *columns, "label"}  # what was computed


def test_request_log_keeps_a_sampled_fraction(
    serve: Callable[..., ServerProcess], repository: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "private-logs"
    logs.mkdir(mode=0o700)
    server = serve(repository, "--log-requests", "0.25", "--request-log-dir", str(logs))
    client = server.client()
    _send(client, f"/v2/models/{NAME}/versions/1/infer", _rows(400, seed=41), batch=1)
    assert server.stop() == 0
    lines = (logs / "requests.jsonl").read_text().splitlines()
    assert 60 <= len(lines) <= 140
    record = json.loads(lines[0])
    assert record["version"] == 1 and set(record["outputs"]) == {"label", "probabilities"}
    assert np.asarray(record["inputs"]["input"]).shape == (1, FEATURES)
    assert stat.S_IMODE((logs / "requests.jsonl").stat().st_mode) == 0o600


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "x"])
def test_log_requests_must_be_a_fraction(repository: Path, tmp_path: Path, value: str) -> None:
    import subprocess
    import sys

    from tests.helpers.serve import PROJECT_ROOT

    command = [sys.executable, "-m", "nbdeploy.serve", "--model-repository", str(repository)]
    result = subprocess.run(
        [*command, "--log-requests", value, "--request-log-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--log-requests" in result.stderr


def test_live_profile_bins_like_the_reference_functions_and_slides() -> None:
    """The vectorised binning of column features agrees with ``bin_indices`` (NaN and
    infinities included), and the counts always describe the last ``window`` rows."""
    rng = np.random.default_rng(50)
    reference = rng.standard_normal((500, 6)).astype(np.float32)
    features = [
        shared.numeric_feature(
            {"feature": f"x[{i}]", "kind": "input", "tensor": "x", "extract": "column", "index": i},
            reference[:, i],
        )
        for i in range(6)
    ]
    labels = {"feature": "y", "kind": "output", "tensor": "y", "extract": "value"}
    features.append(shared.categorical_feature(labels, rng.integers(0, 3, 500)))
    live = shared.LiveProfile({"features": features, "window": 64})
    x = rng.standard_normal((300, 6)).astype(np.float32)
    x[0, 1], x[1, 2], x[2, 3] = np.nan, np.inf, -np.inf
    y = rng.integers(0, 5, 300)
    expected = np.stack(
        [
            shared.bin_indices(f, shared.extract(f, x if f["kind"] == "input" else y))
            for f in features
        ],
        axis=1,
    )
    assert (live.bins({"x": x}, {"y": y}) == expected).all()
    for start in range(0, 300, 7):
        live.observe({"x": x[start : start + 7]}, {"y": y[start : start + 7]})
    assert live.rows == 64
    for i, counts in enumerate(live.counts):
        assert counts.tolist() == np.bincount(expected[-64:, i], minlength=len(counts)).tolist()
    assert live.bins({"x": x}, {}) is None  # a profiled output missing: not profiled
