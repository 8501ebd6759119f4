"""Which lane a request takes, and what it costs, when its body is written apart from its head.

Clients such as httpx write a request's head and its body in two writes; the body then often
arrives in a second read. The same small V2 infer request (an MLP, 1 row, JSON, bearer token)
is sent sequentially over one keep-alive connection, whole (one write) and split (head, then
body ``--gap-ms`` later, with TCP_NODELAY, so that the server reads them apart), to one server
per git revision, interleaved over the rounds. The lane is told by the response's Date header
(uvicorn writes it first, the fast lane last). The split latency includes the gap.

    .venv/bin/python benchmarks/bench_lanes.py --revs eec67e0~1,WORKTREE [--rounds 5] [--gap-ms 0.5]

Writes ``results/lanes.json`` and ``results/lanes.md``: per revision and way of writing, the
medians over rounds of the p50 latency in ms, the server's CPU time per request in µs (from
``/proc/<pid>/stat``, the gap excluded: the server is idle then) and the share of requests on
the fast lane.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import write_report  # noqa: E402
from bench_revisions import WORKTREE, checkout, cpu_seconds  # noqa: E402

from tests.helpers.serve import save_mlp, start_server  # noqa: E402

TOKEN = "bench-token"
BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
).encode()
HEAD = (
    "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
).encode()


def one_run(port: int, pid: int, gap_s: float | None, calls: int) -> tuple[float, float, float]:
    """p50 in ms, the server's CPU µs per request and the fast lane's share over ``calls``
    requests (a tenth more warm up first)."""
    times, fast, cpu = [], 0, 0.0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for index in range(calls + calls // 10):
            if index == calls // 10:
                cpu = cpu_seconds(pid)
            began = time.perf_counter()
            if gap_s is not None:
                sock.sendall(HEAD)
                time.sleep(gap_s)
                sock.sendall(BODY)
            else:
                sock.sendall(HEAD + BODY)
            names, length = [], 0
            reader.readline()
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                names.append(name.strip().lower())
                if names[-1] == b"content-length":
                    length = int(value)
            reader.read(length)
            if index >= calls // 10:
                times.append(time.perf_counter() - began)
                fast += names[-1] == b"date"
    cpu = cpu_seconds(pid) - cpu
    return statistics.median(times) * 1000, cpu / calls * 1e6, fast / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", default=f"HEAD~1,{WORKTREE}", help="comma-separated revisions")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--gap-ms", type=float, default=0.5, help="between head and body")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-lanes-"))
    save_mlp(work / "repo" / "mlp" / "1", seed=1)
    trees = [checkout(rev.strip(), work / "trees") for rev in args.revs.split(",")]
    servers = {
        # cwd outside any checkout: ``python -m`` puts the cwd before PYTHONPATH
        label: start_server(
            work / "repo", log_path=work / f"{label}.log", token=TOKEN, pythonpath=tree, cwd=work
        )
        for label, tree in trees
    }
    runs: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        label: {"whole": [], "split": []} for label in servers
    }
    try:
        for index in range(args.rounds):
            for label, server in servers.items():
                for way in ("whole", "split"):
                    gap = args.gap_ms / 1000 if way == "split" else None
                    run = one_run(server.port, server.process.pid, gap, args.calls)
                    runs[label][way].append(run)
            print(f"round {index + 1}/{args.rounds}", flush=True)
    finally:
        for server in servers.values():
            server.stop()

    summary = {
        label: {
            way: {
                "p50_ms": statistics.median(run[0] for run in results),
                "cpu_us": statistics.median(run[1] for run in results),
                "fast_lane_share": statistics.median(run[2] for run in results),
            }
            for way, results in ways.items()
        }
        for label, ways in runs.items()
    }
    write_report(
        "lanes",
        {"rounds": args.rounds, "calls": args.calls, "gap_ms": args.gap_ms, "summary": summary},
        f"One small V2 JSON request, sequential on one connection ({args.rounds} interleaved"
        f" rounds of {args.calls}; split: the body {args.gap_ms} ms after the head; medians)",
        ["server", "whole: p50 ms", "CPU µs", "fast lane", "split: p50 ms", "CPU µs", "fast lane"],
        [
            [label]
            + [
                cell
                for way in ("whole", "split")
                for cell in (
                    f"{ways[way]['p50_ms']:.3f}",
                    f"{ways[way]['cpu_us']:.0f}",
                    f"{ways[way]['fast_lane_share']:.0%}",
                )
            ]
            for label, ways in summary.items()
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
