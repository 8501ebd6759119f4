"""CompareReport on real onnxruntime sessions (offline) and on a server stats body (live)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from nbdeploy._errors import InputError
from nbdeploy.comparison import CompareReport, live_report, offline_report, top1
from tests.helpers import models

pytest.importorskip("skl2onnx")


def to_session(model: Any, features: int, *, batch: int | None = None, **options: Any) -> Any:
    """A real onnxruntime session of a scikit-learn model (skl2onnx; class probabilities as a
    plain tensor, not a list of dicts)."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    proto = to_onnx(
        model,
        initial_types=[("X", FloatTensorType([batch, features]))],
        options={id(model): {"zipmap": False}} if hasattr(model, "classes_") else None,
        target_opset=17,
        **options,
    )
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def predictor(sessions: dict[int, Any], output: int = 0) -> Callable[[int, Any], tuple[Any, float]]:
    """``predict_version`` over in-process sessions: output ``output`` and the call's seconds."""

    def predict(version: int, rows: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        result = sessions[version].run(None, {"X": np.asarray(rows, dtype=np.float32)})[output]
        return result, time.perf_counter() - start

    return predict


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = models.digits()
    return x[:300], y[:300]


@pytest.fixture(scope="module")
def classifiers(digits) -> dict[int, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    x, y = digits
    first = LogisticRegression(max_iter=500).fit(x, y)
    second = DecisionTreeClassifier(max_depth=5, random_state=0).fit(x, y)
    return {1: to_session(first, 64), 2: to_session(second, 64)}


def full_run(session: Any, x: np.ndarray, output: int = 0) -> np.ndarray:
    return session.run(None, {"X": x})[output]


# --------------------------------------------------------------------------- offline


def test_offline_classifiers_agreement_accuracy_and_latency(digits, classifiers) -> None:
    x, y = digits
    report = offline_report(
        "digits",
        predictor(classifiers),
        [(2, "canary", 10), (1, "stable", 90)],
        x,
        y,
        kind="top1",
        batch_size=64,
    )
    assert isinstance(report, CompareReport)
    assert report.source == "offline" and report.reference == 1 and report.kind == "top1"
    assert [v.version for v in report.versions] == [1, 2]
    labels1, labels2 = full_run(classifiers[1], x), full_run(classifiers[2], x)
    ref, cand = report.get(1), report.get(2)
    assert cand.compared == 300 and cand.errors == 0 and cand.requests == 300
    assert cand.agreement == pytest.approx(float(np.mean(labels1 == labels2)))
    assert 0.5 < cand.agreement < 1.0
    assert ref.agreement is None and ref.compared == 0
    assert ref.metric == cand.metric == "accuracy"
    assert ref.score == pytest.approx(float(np.mean(labels1 == y)))
    assert cand.score == pytest.approx(float(np.mean(labels2 == y)))
    for row in report.versions:
        assert row.p50_ms is not None and row.p99_ms is not None
        assert 0 < row.p50_ms <= row.p99_ms
        assert (row.role, row.weight) == ({1: ("stable", 90), 2: ("canary", 10)}[row.version])

    data = json.loads(json.dumps(report.to_dict()))
    assert data["latency"] == "per batch of 64 rows"
    assert data["rows"] == 300 and data["batch_size"] == 64 and data["reference"] == 1
    assert [v["version"] for v in data["versions"]] == [1, 2]
    assert data["versions"][1]["agreement"] == pytest.approx(cand.agreement)

    summary = report.summary()
    assert summary.startswith(f"v2 agrees with v1 on {cand.agreement:.1%} of 300 rows; p99 ")
    assert summary.endswith("; 0 errors")
    assert "accuracy" in summary

    table = report.table()
    assert table.splitlines()[0].split()[:5] == ["version", "role", "weight", "rows", "errors"]
    assert "reference" in table and f"{cand.agreement:.1%}" in table
    assert "latency per batch of 64 rows" in table
    assert str(report) == repr(report) == table


def test_offline_plot_and_html(digits, classifiers) -> None:
    from matplotlib.figure import Figure

    x, y = digits
    report = offline_report(
        "digits", predictor(classifiers), [(1, "stable", 50), (2, "canary", 50)], x, y
    )
    figure = report.plot()
    assert isinstance(figure, Figure)
    latency, agreement = figure.axes
    assert len(latency.patches) == 4  # p50 and p99 for two versions
    assert len(agreement.patches) == 4  # agreement and accuracy for two versions
    assert agreement.get_ylim()[1] == pytest.approx(1.05)
    page = report._repr_html_()
    assert "<table" in page and "v2" in page and "data:image/png;base64," in page


def test_string_labels_indices_and_probabilities(digits) -> None:
    """y as label strings or as indices; outputs as labels or as probabilities + labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    x, y = digits
    names = [f"digit-{i}" for i in range(10)]
    y_text = np.array([names[i] for i in y])
    string_models = {
        1: to_session(LogisticRegression(max_iter=500).fit(x, y_text), 64),
        2: to_session(GaussianNB().fit(x, y_text), 64),
    }
    versions = [(1, "stable", 100), (2, "shadow", 0)]
    labels_out = offline_report("d", predictor(string_models), versions, x, y_text, batch_size=50)
    predicted = full_run(string_models[2], x)
    assert predicted.dtype.kind in "OU"
    assert labels_out.get(2).score == pytest.approx(float(np.mean(predicted == y_text)))
    assert labels_out.get(2).agreement == pytest.approx(
        float(np.mean(full_run(string_models[1], x) == predicted))
    )

    # The same models' probabilities (columns in classes_ order == names) with y as strings.
    probabilities = offline_report(
        "d", predictor(string_models, output=1), versions, x, y_text, labels=names
    )
    assert probabilities.get(2).score == pytest.approx(labels_out.get(2).score)
    assert probabilities.get(2).agreement == pytest.approx(labels_out.get(2).agreement)

    # Label strings out, class indices in y, mapped through labels.
    indices = offline_report("d", predictor(string_models), versions, x, y, labels=names)
    assert indices.get(1).score == pytest.approx(labels_out.get(1).score)

    with pytest.raises(InputError, match="no labels"):
        offline_report("d", predictor(string_models), versions, x, y)


def test_bytes_outputs_decode_to_str() -> None:
    assert list(top1(np.array([b"cat", b"dog"]))) == ["cat", "dog"]
    assert list(top1(np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32))) == [1, 0]
    assert list(top1(np.array([[3], [4]], dtype=np.int64))) == [3, 4]


def test_offline_regressors_max_abs_and_rmse() -> None:
    from sklearn.datasets import make_regression
    from sklearn.linear_model import LinearRegression, Ridge

    x, y = make_regression(n_samples=200, n_features=6, noise=5.0, random_state=0)
    x = x.astype(np.float32)
    sessions = {
        3: to_session(LinearRegression().fit(x, y), 6),
        4: to_session(Ridge(alpha=50.0).fit(x, y), 6),
    }
    report = offline_report(
        "houses",
        predictor(sessions),
        [(4, "canary", 20), (3, "stable", 80)],
        x,
        y,
        kind="max_abs",
        batch_size=32,
    )
    a, b = full_run(sessions[3], x).ravel(), full_run(sessions[4], x).ravel()
    assert report.reference == 3 and report.kind == "max_abs"
    cand = report.get(4)
    assert cand.agreement is None and cand.compared == 200
    assert cand.max_abs_diff == pytest.approx(float(np.max(np.abs(a - b))), rel=1e-5)
    assert cand.metric == "rmse"
    assert cand.score == pytest.approx(float(np.sqrt(np.mean((b - y) ** 2))), rel=1e-5)
    assert report.get(3).score == pytest.approx(float(np.sqrt(np.mean((a - y) ** 2))), rel=1e-5)
    assert "differs from v3 by at most" in report.summary()
    assert "max |diff|" in report.table() and "rmse" in report.table()
    json.dumps(report.to_dict())
    assert len(report.plot().axes) == 2


def test_failed_batches_count_as_errors_and_are_left_out(digits) -> None:
    """v2 is exported with a fixed batch of 64 rows: onnxruntime refuses the last, short batch."""
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    model = LogisticRegression(max_iter=500).fit(x, y)
    sessions = {1: to_session(model, 64), 2: to_session(model, 64, batch=64)}
    report = offline_report(
        "digits", predictor(sessions), [(1, "stable", 90), (2, "canary", 10)], x[:150], y[:150]
    )
    ref, cand = report.get(1), report.get(2)
    assert ref.errors == 0 and cand.errors == 1
    assert cand.compared == 128 and cand.agreement == pytest.approx(1.0)
    assert cand.note is not None and "invalid dimensions" in cand.note
    expected = float(np.mean(full_run(sessions[1], x[:128]) == y[:128]))
    assert cand.score == pytest.approx(expected)
    assert report.summary().endswith("; 1 error")
    assert json.loads(json.dumps(report.to_dict()))["versions"][1]["errors"] == 1


def test_offline_input_errors(digits, classifiers) -> None:
    x, y = digits
    predict = predictor(classifiers)
    versions = [(1, "stable", 90), (2, "canary", 10)]
    with pytest.raises(InputError, match="X has 300 rows but y has 299"):
        offline_report("digits", predict, versions, x, y[:-1])
    with pytest.raises(InputError, match="X is empty"):
        offline_report("digits", predict, versions, x[:0], y[:0])
    with pytest.raises(InputError, match="kind must be one of top1, max_abs"):
        offline_report("digits", predict, versions, x, y, kind="cosine")
    with pytest.raises(InputError, match="batch_size"):
        offline_report("digits", predict, versions, x, y, batch_size=0)
    with pytest.raises(InputError, match="no version"):
        offline_report("digits", predict, [], x, y)


def test_offline_without_y_has_no_score(digits, classifiers) -> None:
    x, _ = digits
    report = offline_report(
        "digits", predictor(classifiers), [(1, "stable", 90), (2, "canary", 10)], x[:70]
    )
    assert all(v.metric is None and v.score is None for v in report.versions)
    assert report.get(2).compared == 70
    assert "accuracy" not in report.table()
    assert len(report.plot().axes[1].patches) == 2


# --------------------------------------------------------------------------- live

STATS = {
    "generation": 7,
    "since": "2026-11-29T14:00:00+00:00",
    "versions": {
        "3": {
            "weight": 0,
            "role": "shadow",
            "requests": 0,
            "errors": 2,
            "mirrored": 1020,
            "dropped": 4,
            "p50_ms": 1.4,
            "p99_ms": 6.25,
        },
        "1": {
            "weight": 90,
            "role": "stable",
            "requests": 922,
            "errors": 0,
            "mirrored": 102,
            "dropped": 0,
            "p50_ms": 1.2,
            "p99_ms": 2.9,
        },
        "2": {
            "weight": 10,
            "role": "canary",
            "requests": 102,
            "errors": 1,
            "mirrored": 0,
            "dropped": 0,
            "p50_ms": 1.3,
            "p99_ms": 3.1,
        },
    },
    "pairs": [
        {
            "reference": 1,
            "candidate": 2,
            "kind": "top1",
            "compared": 1024,
            "agreement": 0.97,
            "max_abs_diff": None,
            "candidate_errors": 1,
        },
        {
            "reference": 1,
            "candidate": 3,
            "kind": "top1",
            "compared": 1018,
            "agreement": 0.5,
            "max_abs_diff": None,
            "candidate_errors": 2,
        },
    ],
}


def test_live_report_from_server_stats() -> None:
    report = live_report("digits", STATS)
    assert report.source == "live" and report.reference == 1 and report.kind == "top1"
    assert report.generation == 7 and report.since == STATS["since"]
    assert [(v.version, v.role, v.weight) for v in report.versions] == [
        (1, "stable", 90),
        (2, "canary", 10),
        (3, "shadow", 0),
    ]
    stable, canary, shadow = report.versions
    assert stable.agreement is None and stable.compared == 0 and stable.mirrored == 102
    assert (canary.agreement, canary.compared, canary.errors) == (0.97, 1024, 1)
    assert (shadow.requests, shadow.mirrored, shadow.agreement) == (0, 1020, 0.5)
    assert all(v.metric is None and v.score is None for v in report.versions)

    assert report.summary() == (
        "v2 agrees with v1 on 97.0% of 1,024 rows; p99 3.10 ms vs 2.90 ms; "
        "v3 agrees with v1 on 50.0% of 1,018 rows; p99 6.25 ms vs 2.90 ms; 3 errors"
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["latency"] == "per request" and data["generation"] == 7
    assert data["versions"][1] == {
        "version": 2,
        "role": "canary",
        "weight": 10,
        "requests": 102,
        "errors": 1,
        "p50_ms": 1.3,
        "p99_ms": 3.1,
        "agreement": 0.97,
        "max_abs_diff": None,
        "compared": 1024,
        "metric": None,
        "score": None,
        "mirrored": 0,
        "note": None,
    }
    table = report.table()
    assert "mirrored" in table.splitlines()[0] and "97.0%" in table and "1,020" in table
    assert len(report.plot().axes) == 2
    assert "data:image/png;base64," in report._repr_html_()


def test_live_report_before_any_comparison() -> None:
    stats = {
        "generation": 1,
        "since": "2026-11-29T14:00:00+00:00",
        "versions": {
            "1": {"weight": 100, "role": "stable", "requests": 0, "errors": 0, "mirrored": 0,
                  "dropped": 0, "p50_ms": None, "p99_ms": None},
            "2": {"weight": 0, "role": "idle", "requests": 0, "errors": 0, "mirrored": 0,
                  "dropped": 0, "p50_ms": None, "p99_ms": None},
        },
        "pairs": [],
    }  # fmt: skip
    report = live_report("digits", stats)
    assert report.kind == "top1" and report.reference == 1
    assert report.summary() == ("v2 has not been compared with v1 yet; p99 n/a vs n/a; 0 errors")
    json.dumps(report.to_dict())
    report.plot()
    assert "<table" in report._repr_html_()

    alone = live_report("digits", {**stats, "versions": {"1": stats["versions"]["1"]}})
    assert alone.summary() == "v1 is the only version; p99 n/a; 0 errors"

    with pytest.raises(InputError, match="no loaded version"):
        live_report("digits", {"generation": 1, "versions": {}, "pairs": []})


def test_live_max_abs_pairs() -> None:
    stats = json.loads(json.dumps(STATS))
    for pair in stats["pairs"]:
        pair.update(kind="max_abs", agreement=None, max_abs_diff=0.0125)
    report = live_report("houses", stats)
    assert report.kind == "max_abs"
    assert report.get(2).max_abs_diff == 0.0125
    assert "max |diff|" in report.table() and "0.0125" in report.table()
    assert "by at most 0.0125 over 1,024 rows" in report.summary()


def test_compare_module_does_not_import_matplotlib() -> None:
    code = "import sys, nbdeploy.comparison; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
