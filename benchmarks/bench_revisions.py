"""The server of several git revisions side by side: what each hot-path change bought.

One model is deployed with ``nbdeploy.api.deploy`` (process runtime) to get a model repository,
a routing file, tokens and the server's command line. The same command line is then started
once per revision, with that revision's ``nbdeploy/serve`` first on the import path (a git
worktree of it; ``WORKTREE`` is the checkout as it is now), batching on and off, beside the
bare Starlette floor of ``bench_serving.py``. ``wrk`` loads each in turn, interleaved over the
rounds; the server's CPU time per request comes from ``/proc/<pid>/stat``.

    .venv/bin/python benchmarks/bench_revisions.py --revs 1ab235a,ca6a5fe,WORKTREE
    .venv/bin/python benchmarks/bench_revisions.py --quick   # HEAD~1 against the worktree

Writes ``results/revisions.json`` and ``results/revisions.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as serving  # noqa: E402 - the floor, wrk and the model come from there
from _report import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKTREE = "WORKTREE"


def checkout(rev: str, root: Path) -> tuple[str, Path]:
    """A label and a source tree for ``rev`` (a detached worktree, or this checkout)."""
    if rev == WORKTREE:
        return "worktree", REPO
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path = root / sha
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), sha],
            check=True,
        )
    return sha, path


def server_command(endpoint: Any) -> tuple[list[str], dict[str, str], str]:
    """The command line, environment and directory of a deployed endpoint's server process."""
    port = endpoint.url.rsplit(":", 1)[1].strip("/")
    listing = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    pid = int(re.search(r"pid=(\d+)", listing).group(1))  # type: ignore[union-attr]
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
    env = dict(item.split("=", 1) for item in environ if "=" in item)
    # REST only (one port per copy); no state directory (newer than some revisions, and
    # only guards use it)
    for flag in ("--grpc-port", "--state-dir"):
        if flag in argv:
            at = argv.index(flag)
            del argv[at : at + 2]
    return argv, env, os.readlink(f"/proc/{pid}/cwd")


def start_copy(argv: list[str], env: dict[str, str], cwd: str, tree: Path) -> tuple[Any, int]:
    port = serving.free_port()
    args = list(argv)
    args[args.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        args,
        env={**env, "PYTHONPATH": str(tree)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    serving.wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc=proc)
    return proc, port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", default=f"HEAD,{WORKTREE}", help="comma-separated revisions")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run at 8 connections")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    rounds, seconds = (2, 1.0) if args.quick else (args.rounds, args.seconds)
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="nbdeploy-revs-"))
    os.environ.setdefault("NBDEPLOY_CACHE", str(Path.home() / ".cache" / "nbdeploy"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-revisions-"))
    trees = [checkout(rev.strip(), workdir / "trees") for rev in args.revs.split(",")]
    model = serving.mlp_onnx(workdir / "mlp.onnx", (64, 64, 10), seed=0)
    x = np.random.default_rng(2).random((1, 64), dtype=np.float32)
    body = serving.json_body(x)

    from nbdeploy.api import deploy, undeploy

    floor = serving.start_baseline(
        "floor", *serving.ensure_venv("floor", serving.baseline_specs()["floor"]), model, workdir
    )
    targets: dict[str, serving.Target] = {
        "floor": serving.Target("floor", "floor", f"{floor.url}/v2/models/mlp/infer", body, {})
    }
    pids = {"floor": floor.proc.pid}
    copies: list[Any] = []
    names: list[str] = []
    began = time.perf_counter()
    try:
        for batching in (True, False):
            endpoint = deploy(str(model), name=f"revs-{'on' if batching else 'off'}",
                              runtime="process", batching=batching)  # fmt: skip
            names.append(endpoint.name)
            argv, env, cwd = server_command(endpoint)
            for label, tree in trees:
                proc, port = start_copy(argv, env, cwd, tree)
                copies.append(proc)
                key = f"{label}, batching {'on' if batching else 'off'}"
                headers = {"Authorization": f"Bearer {endpoint.token}"}
                url = f"http://127.0.0.1:{port}/v2/models/{endpoint.name}/infer"
                targets[key] = serving.Target(key, "nbdeploy", url, body, headers)
                pids[key] = proc.pid
        for target in targets.values():
            serving.write_lua(target, workdir)
            serving.wrk(target, 8, 1)  # warm up
        rows: dict[str, list[dict[str, float]]] = {key: [] for key in targets}
        keys = list(targets)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order[::-1] if r % 2 else order:
                target = targets[key]
                before = cpu_seconds(pids[key])
                row = serving.wrk(target, 8, seconds)
                row["cpu_us"] = (cpu_seconds(pids[key]) - before) / max(row["requests"], 1) * 1e6
                row["c1_p50_ms"] = serving.wrk(target, 1, max(1.0, seconds / 2))["p50_ms"]
                rows[key].append(row)
            print(f"[revisions] round {r + 1}/{rounds}", flush=True)
    finally:
        floor.stop()
        for proc in copies:
            proc.terminate()
            proc.wait(timeout=15)
        for name in names:
            undeploy(name)
        for _, tree in trees:
            if tree != REPO:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )

    medians = {
        key: {
            m: statistics.median(row[m] for row in rows[key])
            for m in ("rps", "p50_ms", "c1_p50_ms", "cpu_us")
        }  # fmt: skip
        for key in rows
    }
    floor_rps = medians["floor"]["rps"]
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": rounds,
        "seconds": seconds,
        "revisions": [label for label, _ in trees],
        "medians": medians,
        "rows": rows,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    write_report(
        "revisions",
        results,
        "# The server of several revisions side by side\n\n"
        f"{results['when']}; {results['machine']}; {rounds} interleaved rounds of {seconds:g} s"
        " (wrk, 1 thread); MLP 64->64->10, V2 JSON, batch 1, auth and metrics on; medians.",
        ["server", "req/s, 8 conn.", "vs floor", "p50 ms, 1 conn.", "CPU µs per request"],
        [
            [
                key,
                f"{m['rps']:,.0f}",
                f"{m['rps'] / floor_rps:.2f}x",
                f"{m['c1_p50_ms']:.3f}",
                f"{m['cpu_us']:.0f}",
            ]  # fmt: skip
            for key, m in medians.items()
        ],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
