"""Numbers that are true: the endpoint's own HTTP figures are kept with its deployment and
listed everywhere, in-process figures say so, and a missing figure is never shown as 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy import _format, cli
from nbdeploy.artifact import store_onnx
from nbdeploy.endpoint import served_latency
from nbdeploy.optimize import quantize_variants
from nbdeploy.store import Store
from nbdeploy.vocabulary import Deployment
from tests.helpers.onnx_models import save_celu, save_linear

SAMPLE = np.arange(8, dtype=np.float32).reshape(2, 4)


def http_report(p50: float, p99: float) -> dict:
    row = {"engine": "http-json", "status": "ok", "variant": None}
    return {
        "machine": {},
        "settings": {},
        "results": [
            {**row, "target": "m:v1 http", "batch_size": 1, "concurrency": 4, "p50_ms": 9.0},
            {
                **row,
                "target": "m:v1 http",
                "batch_size": 1,
                "concurrency": 1,
                "p50_ms": p50,
                "p99_ms": p99,
            },
            {**row, "target": "m:v1 http", "batch_size": 8, "concurrency": 1, "p50_ms": 7.0},
        ],
    }


class Artifact:
    variant = "fp32"
    benchmark = {
        "results": [
            {
                "variant": "fp32",
                "engine": "onnxruntime",
                "batch_size": 1,
                "p50_ms": 0.042,
                "p99_ms": 0.05,
            }
        ]
    }


def record(deployment_id: int) -> Deployment:
    return Deployment(deployment_id, "m", 1, "process", "active", "http://127.0.0.1:1", 1)


def test_the_latest_endpoint_benchmark_wins_over_the_in_process_one() -> None:
    store = Store()
    assert served_latency(record(7), None) == (None, None)
    latency, source = served_latency(record(7), Artifact())
    assert (latency["p50_ms"], source) == (0.042, "in-process")

    store.add_endpoint_benchmark(deployment_id=7, name="m", version=1, report=http_report(1, 2))
    store.add_endpoint_benchmark(deployment_id=7, name="m", version=1, report=http_report(3, 4))
    store.add_endpoint_benchmark(deployment_id=8, name="m", version=2, report=http_report(5, 6))
    latency, source = served_latency(record(7), Artifact())
    assert (latency["p50_ms"], latency["p99_ms"], source) == (3, 4, "endpoint")
    assert Store().endpoint_benchmark(7)["version"] == 1
    # A later launch of version 1 (a rollback) serves the same model: its figures carry over.
    latency, source = served_latency(record(9), Artifact())
    assert (latency["p50_ms"], source) == (3, "endpoint")
    assert Store().endpoint_benchmark(9) is None


def test_ls_marks_in_process_figures_and_shows_a_dash_for_none() -> None:
    base = {"name": "m", "latency_source": None, "p50_ms": None, "p99_ms": None}
    assert cli._latency_cells(base)["p50_ms"] is None
    assert "-" in cli._table([cli._latency_cells(base)], ("name", "p50_ms")).splitlines()[-1]
    inproc = cli._latency_cells(
        {**base, "latency_source": "in-process", "p50_ms": 0.0421, "p99_ms": 1.234}
    )
    assert (inproc["p50_ms"], inproc["p99_ms"]) == ("0.042 (in-process)", "1.23 (in-process)")
    endpoint = cli._latency_cells({**base, "latency_source": "endpoint", "p50_ms": 12.34})
    assert (endpoint["p50_ms"], endpoint["p99_ms"]) == ("12.3", None)


def test_http_benchmark_is_saved_with_the_deployment_and_outlives_the_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = nbd.deploy(
        save_linear(tmp_path / "linear.onnx"), SAMPLE, name="truth", runtime="process"
    )
    try:
        assert cli.main(["ls"]) == 0
        (row,) = capsys.readouterr().out.strip().splitlines()[2:]
        assert "0.00" not in row and " - " in row  # no benchmark yet: no figure, not zero

        report = nbd.benchmark(
            endpoint,
            SAMPLE,
            concurrency=(1, 2),
            batch_sizes=(1,),
            payloads=["binary"],
            duration_s=0.3,
        )
        measured = next(r for r in report.results if r.concurrency == 1)

        # A new process (a restarted kernel) lists the same figures, from the store.
        listed = subprocess.run(
            [sys.executable, "-m", "nbdeploy.cli", "ls", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        (view,) = json.loads(listed.stdout)
        assert view["latency_source"] == "endpoint"
        assert (view["p50_ms"], view["p99_ms"]) == (measured.p50_ms, measured.p99_ms)
        table = subprocess.run(
            [sys.executable, "-m", "nbdeploy.cli", "ls"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"  {_format.ms(measured.p50_ms)}  " in table and "in-process" not in table
    finally:
        endpoint.stop()


def test_a_failed_variant_gives_one_sentence_without_temporary_paths(tmp_path: Path) -> None:
    """Celu is float32-only, yet the fp16 converter rewrites it: onnxruntime refuses the graph."""
    fp32 = store_onnx(save_celu(tmp_path / "celu.onnx"), name="celu", framework="onnx")
    (fp16,) = quantize_variants(fp32, ["fp16"])

    reason = fp16.quantization.reason
    assert reason == (
        "onnxruntime cannot run the fp16 model: Type 'tensor(float16)' of input parameter (h)"
        " of operator (Celu) is invalid."
    )
    report = nbd.benchmark(
        [fp32, fp16],
        np.ones((1, 8), np.float32),
        batch_sizes=(1,),
        baseline=False,
        time_budget_s=0.02,
        min_runs=3,
    )
    assert [r.note for r in report.results] == [None, reason]


@pytest.mark.parametrize(
    ("raw", "readable"),
    [
        (
            "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/x-1/a/m.onnx failed:Fatal"
            " error: nowhere:NoSuchOp(-1) is not a registered function/op",
            "Fatal error: nowhere:NoSuchOp(-1) is not a registered function/op.",
        ),
        (
            "Fail: [ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running"
            " Celu node. Name:'' Status Message: the input is empty. More detail",
            "the input is empty.",
        ),
        ("cannot read /tmp/nbdeploy-quantize-ab/int8.onnx: gone", "cannot read int8.onnx: gone"),
    ],
)
def test_reasons_drop_onnxruntime_prefixes_and_temporary_paths(raw: str, readable: str) -> None:
    assert _format.reason(raw) == readable
