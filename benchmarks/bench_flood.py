"""Health-route latency while a flood of big requests runs: the attack test's flood (12 JSON
bodies of 24 MB, 12 of 4.6 MB, 4 binary bodies of 40 MB with classification, 6 at a time)
sent to process-runtime servers that differ only in ``--request-workers``, interleaved round by
round, while another process polls ``/v2/health/live`` every 20 ms.

    .venv/bin/python benchmarks/bench_flood.py [--rounds 5] [--workers 1 2]

Prints and writes ``results/flood.json`` and ``results/flood.md``: per server, the medians over
rounds of the worst, p99 and p50 health latency, the flood's duration and how many of its
requests were answered (200) or refused as busy (503); and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import write_report  # noqa: E402

from tests.helpers.serve import ServerProcess, save_mlp, save_wide, start_server  # noqa: E402
from tests.serve.test_serve_attacks import BUDGET, FloodJob, flood_jobs  # noqa: E402

PROBE_INTERVAL_S = 0.02


def probe_health(url: str, stop: Any, latencies: Any) -> None:
    """In its own process: the latency of every /v2/health/live call until ``stop`` is set."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/v2/health/live").raise_for_status()
            latencies.put(time.perf_counter() - started)
            time.sleep(PROBE_INTERVAL_S)


def one_flood(server: ServerProcess, jobs: list[FloodJob]) -> dict:
    spawn = multiprocessing.get_context("spawn")
    stop, queue = spawn.Event(), spawn.Queue()
    probe = spawn.Process(target=probe_health, args=(server.url, stop, queue))
    probe.start()
    time.sleep(0.5)  # the probe's first calls, on an idle server

    def send(job: FloodJob) -> int:
        model, content, headers = job
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as client:
            return client.post(
                f"/v2/models/{model}/infer", content=content, headers=headers
            ).status_code

    began = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, jobs))
    took = time.perf_counter() - began
    stop.set()
    latencies = []
    while probe.is_alive() or not queue.empty():
        try:
            latencies.append(queue.get(timeout=0.5))
        except Exception:  # noqa: BLE001 - queue.Empty once the probe is gone
            if not probe.is_alive():
                break
    probe.join(30)
    latencies.sort()
    return {
        "worst_ms": latencies[-1] * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "p50_ms": statistics.median(latencies) * 1000,
        "probes": len(latencies),
        "flood_s": took,
        "answered": statuses.count(200),
        "busy": statuses.count(503),
        "too_large": statuses.count(413),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    save_mlp(root / "repo" / "mlp" / "1", seed=1)
    save_wide(root / "repo" / "wide" / "1")
    servers = {
        workers: start_server(
            root / "repo",
            "--memory-budget-bytes",
            str(BUDGET),
            "--request-workers",
            str(workers),
            log_path=root / f"server-{workers}.log",
            token="bench-token",
        )
        for workers in args.workers
    }
    jobs = flood_jobs()
    rounds: dict[int, list[dict]] = {workers: [] for workers in servers}
    try:
        for index in range(args.rounds):
            for workers, server in servers.items():
                result = one_flood(server, jobs)
                rounds[workers].append(result)
                print(
                    f"round {index + 1}, {workers} worker(s): worst {result['worst_ms']:.0f} ms,"
                    f" p99 {result['p99_ms']:.0f} ms, p50 {result['p50_ms']:.1f} ms;"
                    f" flood {result['flood_s']:.1f} s, {result['answered']} answered",
                    flush=True,
                )
        peaks = {workers: server.peak_rss() >> 20 for workers, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    summary = {
        workers: {
            key: statistics.median(r[key] for r in results)
            for key in ("worst_ms", "p99_ms", "p50_ms", "flood_s", "answered", "busy")
        }
        | {
            "worst_ms_range": [
                min(r["worst_ms"] for r in results),
                max(r["worst_ms"] for r in results),
            ]
        }
        | {"peak_rss_mib": peaks[workers]}
        for workers, results in rounds.items()
    }
    report = {
        "machine": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version()},
        "rounds": args.rounds,
        "summary": summary,
        "per_round": rounds,
    }
    write_report(
        "flood",
        report,
        f"Health latency during the attack test's flood ({args.rounds} interleaved rounds,"
        f" {report['machine']['cpus']} CPUs; medians over rounds)",
        [
            "--request-workers",
            "worst ms (range)",
            "p99 ms",
            "p50 ms",
            "flood s",
            "answered / busy of 28",
            "peak RSS MiB",
        ],  # fmt: skip
        [
            [
                str(workers),
                f"{row['worst_ms']:.0f} ({row['worst_ms_range'][0]:.0f}"
                f"-{row['worst_ms_range'][1]:.0f})",
                f"{row['p99_ms']:.0f}",
                f"{row['p50_ms']:.1f}",
                f"{row['flood_s']:.1f}",
                f"{row['answered']:.0f} / {row['busy']:.0f}",
                str(row["peak_rss_mib"]),
            ]
            for workers, row in summary.items()
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
