"""Endpoint benchmark: the deployed V2 server against in-process onnxruntime, side by side.

Measures, in one run on this machine:
- cold server-image build time, and time to ready when deploying a second model once the
  wheel layer is cached (Docker runtime);
- image size against the base image;
- p50 at concurrency 1 over HTTP (binary and JSON) against in-process onnxruntime p50;
- throughput at concurrency 16 with dynamic batching on and off, for a small and a wide MLP;
- server memory (RSS) idle and across a sustained load run.

    .venv/bin/python benchmarks/bench_endpoint.py [--quick] [--runtime auto|docker|process]
        [--load-seconds 60] [--out DIR]

Writes ``DIR/endpoint.json`` and ``DIR/endpoint.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nbdeploy as nbd  # noqa: E402
from nbdeploy.bench import machine_info  # noqa: E402
from nbdeploy.bench_http import benchmark_endpoint  # noqa: E402
from nbdeploy.runtimes import docker_available  # noqa: E402
from tests.helpers import models  # noqa: E402


def wide_mlp():
    """An MLP whose weights (~68 MB) make batch-1 inference memory-bound: where batching pays."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 4096),
        torch.nn.ReLU(),
        torch.nn.Linear(4096, 4096),
        torch.nn.ReLU(),
        torch.nn.Linear(4096, 10),
    ).eval()


def server_rss_mb(endpoint: Any) -> float | None:
    """Resident memory of the server's main process, read from /proc on the host."""
    pid: int | None = None
    if endpoint.runtime == "process":
        pid = int(endpoint.handle.ref)
    else:
        from nbdeploy.runtimes.docker import DockerRuntime

        pid = int(DockerRuntime().container(endpoint.handle).attrs["State"]["Pid"]) or None
    if not pid:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def image_sizes_mb(endpoint: Any) -> dict[str, float] | None:
    if endpoint.runtime != "docker":
        return None
    from nbdeploy.runtimes import image
    from nbdeploy.runtimes.docker import DockerRuntime

    client = image.docker_client()
    try:
        container = DockerRuntime().container(endpoint.handle)
        model = client.images.get(container.attrs["Image"])
        base = client.images.get(image.base_image(client))
        return {
            "base_mb": base.attrs["Size"] / 1e6,
            "model_image_mb": model.attrs["Size"] / 1e6,
            "added_mb": (model.attrs["Size"] - base.attrs["Size"]) / 1e6,
        }
    finally:
        client.close()


def in_process_p50(artifact: Any, sample: np.ndarray, quick: bool) -> float:
    report = nbd.benchmark(
        artifact, sample, batch_sizes=(1,), baseline=False, time_budget_s=0.5 if quick else 2.0
    )
    return float(report.results[0].p50_ms)


def http_row(report: Any, engine: str, concurrency: int) -> Any:
    return next(r for r in report.results if r.engine == engine and r.concurrency == concurrency)


def load_run(endpoint: Any, sample: np.ndarray, seconds: float) -> dict[str, Any]:
    """Closed-loop load at concurrency 4 while sampling the server's RSS every few seconds."""
    samples: list[tuple[float, float | None]] = []
    done = threading.Event()

    def sampler() -> None:
        began = time.perf_counter()
        while not done.is_set():
            samples.append((round(time.perf_counter() - began, 1), server_rss_mb(endpoint)))
            done.wait(max(seconds / 12, 0.5))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    report = benchmark_endpoint(
        endpoint, sample, concurrency=(4,), payloads=("binary",), duration_s=seconds
    )
    done.set()
    thread.join()
    row = report.results[0]
    rss = [value for _, value in samples if value is not None]
    return {
        "seconds": seconds,
        "requests": row.runs,
        "failed_note": row.note,
        "throughput_rps": row.throughput,
        "rss_samples_mb": samples,
        "rss_start_mb": rss[0] if rss else None,
        "rss_end_mb": rss[-1] if rss else None,
        "rss_max_mb": max(rss) if rss else None,
        "rss_growth_mb": (rss[-1] - rss[len(rss) // 4]) if len(rss) > 4 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--runtime", default="auto", choices=("auto", "docker", "process"))
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="nbdeploy-bench-"))
    os.environ.setdefault("NBDEPLOY_CACHE", str(Path.home() / ".cache" / "nbdeploy"))
    runtime = args.runtime
    if runtime == "auto":
        runtime = "docker" if docker_available() else "process"
    duration = 0.5 if args.quick else 5.0
    load_seconds = 3.0 if args.quick else args.load_seconds
    results: dict[str, Any] = {"runtime": runtime, "machine": machine_info(), "quick": args.quick}

    if runtime == "docker" and not args.quick:
        from nbdeploy.runtimes import image

        began = time.perf_counter()
        image.ensure_server_image(rebuild=True)
        results["cold_server_image_build_s"] = time.perf_counter() - began

    x, y = models.digits()
    small = models.mlp()
    models.train(small, x, y, epochs=20)
    sample = x[:1]
    small_art = nbd.export(small, x[:8], name="mlp")

    began = time.perf_counter()
    first = nbd.deploy(small_art, name="mlp", runtime=runtime)
    results["first_deploy_to_ready_s"] = time.perf_counter() - began
    rss_idle = server_rss_mb(first)

    wide = wide_mlp()
    wide_art = nbd.export(wide, x[:8], name="wide")
    began = time.perf_counter()
    wide_on = nbd.deploy(wide_art, name="wide", runtime=runtime)
    results["second_model_deploy_to_ready_s"] = time.perf_counter() - began
    wide_off = nbd.deploy(wide_art, name="wide-nobatch", runtime=runtime, batching=False)
    small_off = nbd.deploy(small_art, name="mlp-nobatch", runtime=runtime, batching=False)
    results["image"] = image_sizes_mb(first)

    try:
        ort_p50 = in_process_p50(small_art, sample, args.quick)
        c1 = nbd.benchmark(first, sample, batch_sizes=(1,), concurrency=(1,), duration_s=duration)
        results["latency_c1"] = {
            "in_process_ort_p50_ms": ort_p50,
            "http_binary_p50_ms": http_row(c1, "http-binary", 1).p50_ms,
            "http_json_p50_ms": http_row(c1, "http-json", 1).p50_ms,
        }
        results["latency_c1"]["binary_overhead_ms"] = (
            results["latency_c1"]["http_binary_p50_ms"] - ort_p50
        )
        batching: dict[str, Any] = {}
        for label, on, off in (("mlp", first, small_off), ("wide", wide_on, wide_off)):
            rows = {}
            for mode, endpoint in (("on", on), ("off", off), ("on_again", on), ("off_again", off)):
                report = nbd.benchmark(
                    endpoint,
                    sample,
                    batch_sizes=(1,),
                    concurrency=(16,),
                    payloads=("binary",),
                    duration_s=duration,
                )
                rows[mode] = http_row(report, "http-binary", 16)
            throughput_on = float(np.median([rows["on"].throughput, rows["on_again"].throughput]))
            throughput_off = float(
                np.median([rows["off"].throughput, rows["off_again"].throughput])
            )
            batching[label] = {
                "c16_rps_batching_on": throughput_on,
                "c16_rps_batching_off": throughput_off,
                "ratio": throughput_on / throughput_off,
                "c16_p50_ms_on": rows["on"].p50_ms,
                "c16_p50_ms_off": rows["off"].p50_ms,
            }
        results["batching_c16"] = batching
        results["memory"] = {"rss_idle_mb": rss_idle, **load_run(first, sample, load_seconds)}
    finally:
        for endpoint in nbd.deployments():
            endpoint.stop()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "endpoint.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = render(results)
    (args.out / "endpoint.md").write_text(markdown)
    print(markdown)
    return 0


def render(r: dict[str, Any]) -> str:
    lat = r["latency_c1"]
    lines = [
        f"# Endpoint benchmark ({r['runtime']} runtime{', quick' if r['quick'] else ''})",
        "",
        f"Machine: {r['machine'].get('cpu_count')} CPUs, load average {r['machine'].get('load_average')},"
        f" onnxruntime {r['machine'].get('onnxruntime')}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| in-process ORT p50, MLP batch 1 | {lat['in_process_ort_p50_ms']:.3f} ms | |",
        f"| endpoint p50, concurrency 1, binary | {lat['http_binary_p50_ms']:.3f} ms | |",
        f"| endpoint p50, concurrency 1, JSON | {lat['http_json_p50_ms']:.3f} ms | |",
        f"| endpoint minus in-process (binary) | {lat['binary_overhead_ms']:.3f} ms | <= 1 ms |",
    ]
    for label, row in r["batching_c16"].items():
        lines.append(
            f"| {label}: c16 throughput batching on / off | {row['c16_rps_batching_on']:.0f} / "
            f"{row['c16_rps_batching_off']:.0f} req/s = **{row['ratio']:.2f}x** | >= 2x |"
        )
    if "cold_server_image_build_s" in r:
        lines.append(
            f"| cold server image build (no layer cache) | {r['cold_server_image_build_s']:.1f} s | reported |"
        )
    lines.append(f"| first deploy to ready | {r['first_deploy_to_ready_s']:.1f} s | |")
    lines.append(
        f"| second model deploy to ready (wheel layer cached) | {r['second_model_deploy_to_ready_s']:.1f} s | < 10 s |"
    )
    if r.get("image"):
        img = r["image"]
        lines.append(
            f"| model image size vs base | {img['model_image_mb']:.0f} MB vs {img['base_mb']:.0f} MB"
            f" (+{img['added_mb']:.0f} MB) | <= +300 MB |"
        )
    mem = r["memory"]
    lines.append(f"| server RSS idle | {mem['rss_idle_mb']:.1f} MB | reported |")
    lines.append(
        f"| server RSS over {mem['seconds']:.0f} s load (c4, {mem['requests']} requests) |"
        f" start {mem['rss_start_mb']:.1f}, end {mem['rss_end_mb']:.1f}, max {mem['rss_max_mb']:.1f} MB;"
        f" growth after warm-up {mem['rss_growth_mb'] if mem['rss_growth_mb'] is None else round(mem['rss_growth_mb'], 1)} MB"
        " | no growth |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
