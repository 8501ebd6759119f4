"""Text and Python models: the raw-text endpoint against in-process transformers, and the size
of a Python model's image next to an ONNX model's.

- raw text p50: the test sentiment model (2-layer BERT) deployed with its tokenizer; one client
  sends one sentence at a time over V2 JSON, interleaved round by round with the in-process
  transformers ``pipeline("text-classification")`` on the same sentences (target: the
  endpoint's p50 within 2 ms of the pipeline's, or faster).
- image sizes (docker runtime only): the image a server runs for an ONNX model (the shared
  server image; the model is mounted), for a Python function model (numpy) and for a Python
  object wrapping scikit-learn (the server image plus its requirements layer).

    .venv/bin/python benchmarks/bench_text.py [--rounds 5] [--calls 200] [--runtime process|docker]

Writes ``DIR/text.json`` and ``DIR/text.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.python_models import iris, scaled_softmax, threshold_classifier  # noqa: E402
from tests.helpers.text import SAMPLE_TEXTS, sentiment  # noqa: E402

TARGET_MS = 2.0


def _p50_ms(call: Any, texts: list[str], calls: int) -> float:
    times = []
    for i in range(calls):
        text = texts[i % len(texts)]
        started = time.perf_counter()
        call(text)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def raw_text(runtime: str, rounds: int, calls: int) -> dict[str, Any]:
    import httpx
    from transformers import pipeline

    import nbdeploy as nbd

    built = sentiment()
    classify = pipeline("text-classification", model=built.model, tokenizer=built.tokenizer)
    endpoint = nbd.deploy(
        built.model, built.texts, tokenizer=built.tokenizer, name="bench-text", runtime=runtime
    )
    url = f"{endpoint.url}/v2/models/{endpoint.name}/infer"
    try:
        with httpx.Client(trust_env=False, headers=endpoint.headers) as client:

            def over_http(text: str) -> Any:
                body = {
                    "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]
                }
                response = client.post(url, json=body)
                response.raise_for_status()
                return response.json()

            texts = list(SAMPLE_TEXTS)
            for _ in range(20):  # warm both
                over_http(texts[0])
                classify(texts[0])
            endpoint_p50, pipeline_p50 = [], []
            for _ in range(rounds):
                endpoint_p50.append(_p50_ms(over_http, texts, calls))
                pipeline_p50.append(_p50_ms(classify, texts, calls))
    finally:
        endpoint.stop()
    endpoint_ms, pipeline_ms = statistics.median(endpoint_p50), statistics.median(pipeline_p50)
    return {
        "runtime": endpoint.runtime,
        "rounds": rounds,
        "calls_per_round": calls,
        "endpoint_p50_ms": round(endpoint_ms, 3),
        "pipeline_p50_ms": round(pipeline_ms, 3),
        "difference_ms": round(endpoint_ms - pipeline_ms, 3),
        "target_ms": TARGET_MS,
        "met": endpoint_ms - pipeline_ms <= TARGET_MS,
    }


def image_sizes() -> dict[str, Any]:
    import docker

    import nbdeploy as nbd
    from nbdeploy.runtimes.docker import DockerRuntime
    from tests.helpers.onnx_models import save_linear

    x, _ = iris(16)
    client = docker.from_env()
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "onnx": save_linear(Path(tmp) / "linear.onnx"),
            "python function (numpy)": scaled_softmax,
            "python object (scikit-learn)": threshold_classifier(),
        }
        for label, model in models.items():
            name = "bench-size-" + label.split()[0] + str(len(sizes))
            endpoint = nbd.deploy(
                model, None if label == "onnx" else x[:8], name=name, runtime="docker"
            )
            try:
                container = DockerRuntime().container(endpoint.handle)
                image = client.images.get(container.image.id)
                sizes[label] = round(image.attrs["Size"] / 1e6, 1)
            finally:
                endpoint.stop()
    return {"image_mb": sizes}


def markdown(result: dict[str, Any]) -> str:
    text = result["raw_text"]
    lines = [
        "# Text and Python models",
        "",
        f"{result['machine']}, {result['date']}. Medians of {text['rounds']} interleaved rounds"
        f" of {text['calls_per_round']} sequential calls, one sentence each.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| raw-text endpoint p50 ({text['runtime']}, V2 JSON over HTTP) |"
        f" {text['endpoint_p50_ms']} ms | |",
        f"| in-process transformers pipeline p50 | {text['pipeline_p50_ms']} ms | |",
        f"| endpoint minus pipeline | {text['difference_ms']:+} ms |"
        f" within {TARGET_MS} ms: {'met' if text['met'] else 'NOT met'} |",
    ]
    for label, size in (result.get("images") or {}).get("image_mb", {}).items():
        lines.append(f"| image size, {label} | {size} MB | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runtime", choices=("process", "docker"), default="process")
    parser.add_argument("--images", action="store_true", help="also build and size images")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="nbdeploy-bench-text-"))
    os.environ.setdefault("NBDEPLOY_CACHE", str(Path.home() / ".cache" / "nbdeploy"))
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "raw_text": raw_text(args.runtime, args.rounds, args.calls),
    }
    if args.images:
        result["images"] = image_sizes()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.json").write_text(json.dumps(result, indent=2))
    (args.out / "text.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
