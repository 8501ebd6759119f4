"""The benchmark harness on real onnxruntime, torch, scikit-learn and Keras models."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from nbdeploy._errors import BenchmarkError, InputError
from nbdeploy._types import Quantization
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.bench import BenchmarkReport, BenchmarkResult, _time_calls, benchmark
from tests.helpers import models

QUICK = {"warmup": 1, "min_runs": 5, "time_budget_s": 0.02}
NOOP_REASON = "no operator in this model can be quantized dynamically"


def export_torch(model, sample: np.ndarray, path: Path, *, dynamic: bool = True) -> Path:
    import torch

    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        torch.from_numpy(sample),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=axes,
    )
    return path


def noop_variant(artifact: ModelArtifact) -> ModelArtifact:
    return dataclasses.replace(
        artifact,
        variant="int8-dynamic",
        quantization=Quantization(mode="int8-dynamic", status="noop", reason=NOOP_REASON),
        source_model=None,
    )


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    model = models.mlp()
    x, _ = models.digits()
    return model, export_torch(model, x[:4], tmp_path_factory.mktemp("onnx") / "mlp.onnx")


@pytest.fixture
def mlp_artifact(mlp_onnx) -> ModelArtifact:
    model, path = mlp_onnx
    return store_onnx(path, name="mlp", framework="torch", source_model=model)


@pytest.fixture(scope="module")
def report(mlp_onnx, tmp_path_factory: pytest.TempPathFactory) -> BenchmarkReport:
    """fp32 + its eager baseline + a no-op int8 variant, at batch 1 and 8 (measured once)."""
    model, path = mlp_onnx
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBDEPLOY_HOME", str(tmp_path_factory.mktemp("home")))
        artifact = store_onnx(path, name="mlp", framework="torch", source_model=model)
        x, _ = models.digits()
        return benchmark([artifact, noop_variant(artifact)], x[:8], batch_sizes=(1, 8), **QUICK)


def test_every_target_gets_a_row_per_batch_size(report: BenchmarkReport) -> None:
    keys = [(r.target, r.batch_size) for r in report.results]
    assert keys == [
        ("mlp:torch eager", 1),
        ("mlp:torch eager", 8),
        ("mlp:fp32", 1),
        ("mlp:fp32", 8),
        ("mlp:int8-dynamic", 1),
        ("mlp:int8-dynamic", 8),
    ]
    engines = {r.target: r.engine for r in report.results}
    assert engines == {
        "mlp:torch eager": "torch",
        "mlp:fp32": "onnxruntime",
        "mlp:int8-dynamic": "onnxruntime",
    }


def test_measured_rows_have_ordered_percentiles_and_throughput(
    report: BenchmarkReport, mlp_onnx
) -> None:
    measured = [r for r in report.results if r.status == "ok"]
    assert len(measured) == 4
    for row in measured:
        assert row.runs >= 3
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.mean_ms > 0
        assert row.throughput > 0
        assert row.concurrency == 1
    fp32 = [r for r in measured if r.target == "mlp:fp32"]
    assert {r.size_bytes for r in fp32} == {mlp_onnx[1].stat().st_size}
    assert {r.variant for r in fp32} == {"fp32"}


def test_throughput_counts_samples_not_calls(report: BenchmarkReport) -> None:
    for row in report.results:
        if row.status == "ok":
            assert row.throughput == pytest.approx(row.batch_size * 1000 / row.mean_ms)


def test_a_variant_that_is_not_ok_is_skipped_with_its_reason(report: BenchmarkReport) -> None:
    skipped = [r for r in report.results if r.target == "mlp:int8-dynamic"]
    assert [r.status for r in skipped] == ["skipped", "skipped"]
    for row in skipped:
        assert row.note == NOOP_REASON
        assert row.runs == 0
        assert row.p50_ms is None and row.throughput is None


def test_no_eager_row_without_source_model_or_with_baseline_off(mlp_artifact) -> None:
    x, _ = models.digits()
    loaded = ModelArtifact.load(mlp_artifact.directory)
    assert loaded.source_model is None
    without_source = benchmark(loaded, x[:2], batch_sizes=(2,), **QUICK)
    assert [r.target for r in without_source.results] == ["mlp:fp32"]
    baseline_off = benchmark(mlp_artifact, x[:2], batch_sizes=(2,), baseline=False, **QUICK)
    assert [r.engine for r in baseline_off.results] == ["onnxruntime"]


def test_eager_baseline_leaves_the_model_and_torch_as_found(mlp_artifact) -> None:
    import torch

    threads = torch.get_num_threads()
    model = mlp_artifact.source_model
    model.train()
    try:
        x, _ = models.digits()
        rep = benchmark(mlp_artifact, x[:2], batch_sizes=(1,), threads=1, **QUICK)
        assert model.training
        assert torch.get_num_threads() == threads
        assert rep.settings["threads"] == 1
        assert rep.results[0].status == "ok"
    finally:
        model.eval()


def test_paths_to_onnx_files_and_artifact_directories(mlp_artifact, mlp_onnx) -> None:
    x, _ = models.digits()
    rep = benchmark([str(mlp_onnx[1]), mlp_artifact.directory], x[:3], batch_sizes=(3,), **QUICK)
    assert [(r.target, r.engine, r.status) for r in rep.results] == [
        ("mlp", "onnxruntime", "ok"),
        ("mlp:fp32", "onnxruntime", "ok"),
    ]


def test_same_label_twice_is_made_unique(mlp_artifact) -> None:
    x, _ = models.digits()
    rep = benchmark([mlp_artifact, mlp_artifact], x[:1], batch_sizes=(1,), baseline=False, **QUICK)
    assert [r.target for r in rep.results] == ["mlp:fp32", "mlp:fp32 (2)"]


def test_raw_torch_model_with_named_inputs_runs_eagerly() -> None:
    model = models.two_input()
    rng = np.random.default_rng(0)
    sample = {"b": rng.random((2, 8)), "a": rng.random((2, 16))}
    rep = benchmark(model, sample, batch_sizes=(1, 4), **QUICK)
    assert [(r.target, r.engine, r.batch_size, r.status) for r in rep.results] == [
        ("torch eager", "torch", 1, "ok"),
        ("torch eager", "torch", 4, "ok"),
    ]
    assert rep.machine["torch"]


def test_raw_sklearn_model_runs_eagerly() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = models.digits()
    model = LogisticRegression(max_iter=200).fit(x[:300], y[:300])
    rep = benchmark(model, x[:8], batch_sizes=(8,), **QUICK)
    row = rep.results[0]
    assert (row.target, row.engine, row.status) == ("sklearn eager", "sklearn", "ok")
    assert row.p50_ms > 0


def test_raw_keras_model_runs_eagerly() -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    x, _ = models.digits()
    rep = benchmark(model, x[:2], batch_sizes=(2,), **QUICK)
    assert [(r.target, r.engine, r.status) for r in rep.results] == [("keras eager", "keras", "ok")]


def test_fixed_batch_model_skips_other_batch_sizes_but_its_eager_baseline_does_not(
    tmp_path: Path,
) -> None:
    x, _ = models.digits()
    model = models.mlp()
    path = export_torch(model, x[:1], tmp_path / "fixed.onnx", dynamic=False)
    artifact = store_onnx(path, name="fixed", framework="torch", source_model=model)
    rep = benchmark(artifact, x[:1], batch_sizes=(1, 8), **QUICK)
    assert [(r.target, r.batch_size, r.status) for r in rep.results] == [
        ("fixed:torch eager", 1, "ok"),
        ("fixed:torch eager", 8, "ok"),
        ("fixed:fp32", 1, "ok"),
        ("fixed:fp32", 8, "skipped"),
    ]
    assert rep.results[3].note == "the model has a fixed batch size of 1"


def test_report_round_trips_through_json(report: BenchmarkReport) -> None:
    data = report.to_dict()
    again = json.loads(json.dumps(data))
    assert again == data
    assert BenchmarkReport.from_dict(again).to_dict() == data
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["onnxruntime"]
    assert data["machine"]["python"].count(".") == 2
    assert data["settings"]["batch_sizes"] == [1, 8]


def test_table_aligns_columns_and_names_every_target(report: BenchmarkReport) -> None:
    text = report.table()
    assert str(report) == text
    lines = text.splitlines()
    header = lines[0]
    for column in ("target", "engine", "batch", "p50 ms", "p99 ms", "samples/s", "status"):
        assert column in header
    for target in ("mlp:torch eager", "mlp:fp32", "mlp:int8-dynamic"):
        assert any(line.startswith(target) for line in lines[2:])
    p50_end = header.index("p50 ms") + len("p50 ms")
    for line, row in zip(lines[2:], report.results, strict=True):
        if row.status == "ok":
            value = line[:p50_end].split()[-1]
            assert float(value) == pytest.approx(row.p50_ms, rel=0.01, abs=0.001)
        else:
            assert f"skipped: {NOOP_REASON}" in line


def test_html_table_escapes_labels() -> None:
    rep = BenchmarkReport(
        results=[BenchmarkResult(target="<b>x</b>", engine="onnxruntime", batch_size=1)]
    )
    markup = rep._repr_html_()
    assert "<table>" in markup and "</table>" in markup
    assert "&lt;b&gt;x&lt;/b&gt;" in markup
    assert "<b>x</b>" not in markup


def test_html_table_lists_every_row(report: BenchmarkReport) -> None:
    markup = report._repr_html_()
    assert markup.count("<tr>") == len(report.results) + 1
    assert "mlp:torch eager" in markup


def test_plot_draws_one_panel_per_batch_size_with_p50_bars(report: BenchmarkReport) -> None:
    from matplotlib.figure import Figure

    fig = report.plot()
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["batch size 1", "batch size 8"]
    for ax, batch in zip(axes, (1, 8), strict=True):
        widths = sorted(bar.get_width() for bar in ax.patches)
        expected = sorted(
            r.p50_ms for r in report.results if r.batch_size == batch and r.status == "ok"
        )
        assert widths == pytest.approx(expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["mlp:torch eager", "mlp:fp32"]


def test_latency_and_best_use_medians_of_measured_rows() -> None:
    rows = [
        BenchmarkResult("m:torch eager", "torch", 1, p50_ms=0.5),
        BenchmarkResult("m:fp32", "onnxruntime", 1, p50_ms=2.0),
        BenchmarkResult("m:int8", "onnxruntime", 1, p50_ms=1.0),
        BenchmarkResult("m:fp16", "onnxruntime", 1, status="skipped", note="noop"),
        BenchmarkResult("m:int8", "onnxruntime", 8, p50_ms=3.0),
        BenchmarkResult("m:int8 http", "http-json", 1, concurrency=4, p50_ms=0.1),
    ]
    rep = BenchmarkReport(results=rows)
    assert rep.latency_ms() == {"m:torch eager": 0.5, "m:fp32": 2.0, "m:int8": 1.0}
    assert rep.latency_ms(8) == {"m:int8": 3.0}
    assert rep.latency_ms(engine="onnxruntime") == {"m:fp32": 2.0, "m:int8": 1.0}
    assert rep.best() == "m:int8"
    assert rep.best(engine=None) == "m:torch eager"
    assert rep.best(batch_size=32) is None


def test_merge_appends_rows_and_shows_concurrency(report: BenchmarkReport) -> None:
    http = BenchmarkReport(
        results=[
            BenchmarkResult(
                "mlp:fp32",
                "http-json",
                1,
                concurrency=4,
                runs=10,
                p50_ms=1.5,
                p90_ms=2.0,
                p99_ms=3.0,
                mean_ms=1.6,
                throughput=2000.0,
            )
        ],
        settings={"url": "http://127.0.0.1:9000"},
    )
    merged = report.merge(http)
    assert merged.results == [*report.results, *http.results]
    assert len(report.results) == 6
    assert merged.settings["url"] == "http://127.0.0.1:9000"
    assert merged.settings["batch_sizes"] == [1, 8]
    assert "conc" in merged.table().splitlines()[0]
    assert "conc" not in report.table().splitlines()[0]
    labels = [t.get_text() for t in merged.plot().axes[0].get_yticklabels()]
    assert " ".join(labels[-1].split()) == "mlp:fp32 [http-json] x4"


def plot_report() -> BenchmarkReport:
    """Long target labels, in-process and HTTP rows at two batch sizes, with long whiskers."""
    rows = []
    for batch in (1, 8):
        for i, (target, engine, conc) in enumerate(
            [
                ("sentiment-distilbert-base:fp32", "onnxruntime", 1),
                ("sentiment-distilbert-base:int8-static", "onnxruntime", 1),
                ("sentiment-distilbert-base:torch eager", "torch", 1),
                ("sentiment-distilbert-base:v12 http", "http-binary", 1),
                ("sentiment-distilbert-base:v12 http", "http-json", 16),
            ]
        ):
            p50 = (1 + i) * batch * 0.8
            rows.append(
                BenchmarkResult(
                    target,
                    engine,
                    batch,
                    concurrency=conc,
                    runs=50,
                    p50_ms=p50,
                    p90_ms=p50 * 1.4,
                    p99_ms=p50 * 2.5,
                    mean_ms=p50 * 1.1,
                )
            )
    return BenchmarkReport(results=rows, machine={"cpu": "Test CPU @ 3.0GHz", "usable_cpus": 4})


def test_plot_caption_once_legend_outside_the_data_and_no_overlapping_ticks() -> None:
    report = plot_report()
    fig = report.plot()
    out = Path(__file__).resolve().parents[2] / "test-artifacts" / "benchmark-plot.png"
    out.parent.mkdir(exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    fig.savefig(out)
    renderer = canvas.get_renderer()

    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert sum("Test CPU @ 3.0GHz" in t for t in texts) == 1

    (legend,) = fig.legends
    assert not any(ax.get_legend() for ax in fig.axes)
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"

    def overlapping(labels) -> list[tuple[str, str]]:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels if t.get_text()]
        return [
            (a, b)
            for i, (a, first) in enumerate(boxes)
            for b, second in boxes[i + 1 :]
            if first.overlaps(second)
        ]

    every_y = []
    for ax in fig.axes:
        assert overlapping(ax.get_xticklabels()) == []
        assert overlapping(ax.get_yticklabels()) == []
        every_y += ax.get_yticklabels()
        panel = ax.get_window_extent(renderer)
        for label in ax.get_yticklabels():
            for other in fig.axes:
                if other is not ax:
                    assert not label.get_window_extent(renderer).overlaps(
                        other.get_window_extent(renderer)
                    ), f"{label.get_text()!r} runs into the next panel"
        assert panel.width > 100
    assert all(len(line) <= 26 for t in every_y for line in t.get_text().splitlines())
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize("targets", [[], (), None])
def test_nothing_to_benchmark(targets) -> None:
    with pytest.raises(BenchmarkError, match="nothing to benchmark"):
        benchmark(targets, np.zeros((1, 64), np.float32))


@pytest.mark.parametrize("sizes", [(0,), (), (1, -8), ("8",), (True,), 2.5])
def test_batch_sizes_must_be_positive_integers(mlp_artifact, sizes) -> None:
    with pytest.raises(BenchmarkError, match="batch_sizes must be positive integers"):
        benchmark(mlp_artifact, np.zeros((1, 64), np.float32), batch_sizes=sizes)


def test_other_options_are_checked(mlp_artifact) -> None:
    sample = np.zeros((1, 64), np.float32)
    with pytest.raises(BenchmarkError, match="min_runs must be an integer >= 1; got 0"):
        benchmark(mlp_artifact, sample, min_runs=0)
    with pytest.raises(BenchmarkError, match="time_budget_s must be a number"):
        benchmark(mlp_artifact, sample, time_budget_s=-1)
    with pytest.raises(BenchmarkError, match="threads must be a positive integer"):
        benchmark(mlp_artifact, sample, threads=0)


def test_sample_that_does_not_fit_raises_input_error(mlp_artifact) -> None:
    with pytest.raises(InputError, match=r"input 'input' expects shape \[-1, 64\]"):
        benchmark(mlp_artifact, np.zeros((2, 10), np.float32), **QUICK)


def test_sample_a_raw_model_cannot_run_on_says_why() -> None:
    with pytest.raises(BenchmarkError, match="no target could be measured: RuntimeError"):
        benchmark(models.mlp(), np.zeros((2, 10), np.float32), **QUICK)


def test_a_model_onnxruntime_cannot_load_fails_alone(tmp_path: Path, mlp_artifact) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["logits"], domain="nowhere.example")],
        "unloadable",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere.example", 1)],
    )
    path = tmp_path / "unloadable.onnx"
    onnx.save(model, str(path))
    x, _ = models.digits()
    rep = benchmark([path, mlp_artifact], x[:1], batch_sizes=(1,), baseline=False, **QUICK)
    assert [(r.target, r.status) for r in rep.results] == [
        ("unloadable", "failed"),
        ("mlp:fp32", "ok"),
    ]
    assert "onnxruntime cannot load" in rep.results[0].note
    with pytest.raises(BenchmarkError, match="no target could be measured: onnxruntime cannot"):
        benchmark(path, x[:1], **QUICK)


def test_unknown_targets_are_refused(tmp_path: Path) -> None:
    sample = np.zeros((1, 64), np.float32)
    with pytest.raises(BenchmarkError, match="cannot benchmark a dict: expected a ModelArtifact"):
        benchmark({"not": "a model"}, sample)
    with pytest.raises(BenchmarkError, match="no such file"):
        benchmark(tmp_path / "missing.onnx", sample)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BenchmarkError, match="expected an .onnx file"):
        benchmark(text, sample)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(BenchmarkError, match="cannot read .*broken.onnx as an ONNX model"):
        benchmark(broken, sample)


def test_timing_loop_warms_up_then_stops_at_the_run_cap() -> None:
    calls = []
    times = _time_calls(lambda: calls.append(1), warmup=4, min_runs=5, budget_s=60, max_runs=50)
    assert times.shape == (50,)
    assert len(calls) == 54
    assert (times > 0).all()


def test_timing_loop_stops_slow_calls_at_the_budget_with_three_runs() -> None:
    times = _time_calls(
        lambda: time.sleep(0.02), warmup=0, min_runs=100, budget_s=0.03, max_runs=1000
    )
    assert times.shape == (3,)
    assert (times >= 0.02e9).all()
