"""Versions side by side: what a canary or a shadow costs a client, how long each change takes,
and whether a raw client on the stable URL ever fails while they happen.

- client latency: one client sends one digits row at a time (V2 JSON, auth on) to the stable
  URL, interleaved round by round in three states of the same server: one version, a 10%
  canary (whose requests are also run on the stable version to measure agreement), and a
  shadow (every request mirrored); medians of the rounds' p50/p99 and their ratios to one
  version.
- changes: wall time of deploy (first start), deploy with canary=10, promote, set_traffic,
  rollback and a shadow deploy, while a raw HTTP client loops on the URL; its failed requests.
- split: how 2,000 requests split under a 90/10 canary.
- guard: the time from a disagreeing canary's first request to traffic back on the stable.

    .venv/bin/python benchmarks/bench_versions.py [--rounds 5] [--calls 500] [--runtime process|docker]

Writes ``DIR/versions.json`` and ``DIR/versions.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _models() -> tuple[Any, Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    good = LogisticRegression(max_iter=300).fit(x[:1200], y[:1200])
    other = LogisticRegression(max_iter=300).fit(x[:1200], (y[:1200] + 1) % 10)
    return x, good, other


def _body(row: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}
        ]
    }


def _latency(client: Any, url: str, body: dict[str, Any], calls: int) -> tuple[float, float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        response = client.post(url, json=body)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


class _Loop:
    """A raw client looping on the URL in a thread, counting answers and failures."""

    def __init__(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        import httpx

        self.client = httpx.Client(timeout=30, trust_env=False, headers=headers)
        self.url, self.body = url, body
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.post(self.url, json=self.body)
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{response.status_code} {response.text[:100]}")
            except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure
                self.failed.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()


def run(runtime: str, rounds: int, calls: int) -> dict[str, Any]:
    import httpx

    import nbdeploy as nbd

    x, good, other = _models()
    sample = x[:8]
    body = _body(x[1500])
    name = "bench-versions"
    timings: dict[str, float] = {}

    started = time.perf_counter()
    ep = nbd.deploy(good, sample=sample, name=name, runtime=runtime)
    timings["first deploy (export, start the server)"] = time.perf_counter() - started
    url = f"{ep.url}/v2/models/{name}/infer"
    loop = _Loop(url, ep.headers, body)
    try:
        for label, change in (
            (
                "deploy canary=10 (export, load, warm, 90/10)",
                lambda: nbd.deploy(other, sample=sample, name=name, runtime=runtime, canary=10),
            ),
            ("set_traffic 50/50", lambda: nbd.set_traffic(name, {1: 50, 2: 50})),
            ("promote", lambda: nbd.promote(name)),
            ("rollback (load v1 again, 100%)", lambda: nbd.rollback(name)),
            (
                "deploy shadow=True",
                lambda: nbd.deploy(good, sample=sample, name=name, runtime=runtime, shadow=True),
            ),
            ("stop_version (shadow off)", lambda: nbd.stop_version(name, 3)),
        ):
            began = time.perf_counter()
            change()
            timings[label] = time.perf_counter() - began
            time.sleep(0.5)
    finally:
        loop.stop()
    changes = {
        "seconds": timings,
        "requests": loop.ok,
        "failed": len(loop.failed),
        "failures": loop.failed[:5],
    }

    states = {"one version": {1: 100}, "canary 10%": {1: 90, 2: 10}}
    results: dict[str, list[tuple[float, float]]] = {key: [] for key in (*states, "shadow")}
    with httpx.Client(timeout=30, trust_env=False, headers=ep.headers) as client:
        _latency(client, url, body, 200)  # warm the connection and the server
        for _ in range(rounds):
            for state, weights in states.items():
                nbd.set_traffic(name, weights)
                results[state].append(_latency(client, url, body, calls))
            shadow = nbd.deploy(good, sample=sample, name=name, runtime=runtime, shadow=True)
            results["shadow"].append(_latency(client, url, body, calls))
            nbd.stop_version(name, max(v.version for v in shadow.versions))
        nbd.set_traffic(name, {1: 90, 2: 10})
        counts = Counter(client.post(url, json=body).json()["model_version"] for _ in range(2000))
    base = statistics.median(p50 for p50, _ in results["one version"])
    latency = {
        state: {
            "p50_ms": statistics.median(p50 for p50, _ in rows),
            "p99_ms": statistics.median(p99 for _, p99 in rows),
            "p50_ratio": statistics.median(p50 for p50, _ in rows) / base,
        }
        for state, rows in results.items()
    }
    nbd.undeploy(name)

    guard_name = "bench-guard"
    nbd.deploy(good, sample=sample, name=guard_name, runtime=runtime)
    nbd.deploy(
        other,
        sample=sample,
        name=guard_name,
        runtime=runtime,
        canary=50,
        guards={"min_agreement": 0.99, "min_requests": 20},
    )
    guard_ep = nbd.get(guard_name)
    guard_url = f"{guard_ep.url}/v2/models/{guard_name}/infer"
    with httpx.Client(timeout=30, trust_env=False, headers=guard_ep.headers) as client:
        began = time.perf_counter()
        while nbd.traffic(guard_name) != {1: 100}:
            for _ in range(10):
                client.post(guard_url, json=body)
        guard_seconds = time.perf_counter() - began
    reason = nbd.get(guard_name).view().guard
    nbd.undeploy(guard_name)
    return {
        "runtime": runtime,
        "latency": latency,
        "changes": changes,
        "split_90_10": {"requests": 2000, "v1": counts["1"], "v2": counts["2"]},
        "guard": {"seconds_to_rollback": guard_seconds, "reason": reason},
    }


def _markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Versions side by side",
        "",
        f"{meta['machine']}; runtime {result['runtime']}; {meta['rounds']} rounds of"
        f" {meta['calls']} sequential requests per state (one client, one digits row, V2 JSON,"
        " auth on); medians of the rounds.",
        "",
        "| state | p50 ms | p99 ms | p50 vs one version |",
        "|---|---|---|---|",
    ]
    for state, row in result["latency"].items():
        lines.append(
            f"| {state} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['p50_ratio']:.2f}x |"
        )
    changes = result["changes"]
    lines += [
        "",
        f"Changes while a raw client looped on the stable URL: {changes['requests']} requests,"
        f" **{changes['failed']} failed**.",
        "",
        "| change | seconds |",
        "|---|---|",
    ]
    lines += [f"| {label} | {seconds:.2f} |" for label, seconds in changes["seconds"].items()]
    split = result["split_90_10"]
    guard = result["guard"]
    lines += [
        "",
        f"90/10 canary over {split['requests']} requests: v1 {split['v1']}, v2 {split['v2']}.",
        "",
        f"Guard (min_agreement 0.99, min_requests 20) on a canary that disagrees: traffic back on"
        f" the stable version {guard['seconds_to_rollback']:.2f} s after its first request"
        f" ({guard['reason']}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--runtime", choices=("process", "docker"), default="process")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="nbdeploy-bench-"))
    result = run(args.runtime, args.rounds, args.calls)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "rounds": args.rounds,
        "calls": args.calls,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "versions.json").write_text(json.dumps({**meta, **result}, indent=2) + "\n")
    markdown = _markdown(result, meta)
    (args.out / "versions.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
