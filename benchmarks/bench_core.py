"""Core benchmark: torch eager vs onnxruntime fp32 / int8 / fp16, for an MLP, a CNN and a transformer.

Every model is trained briefly, exported, quantized and benchmarked through the public API,
all targets side by side in this one process. Absolute times on a small shared CPU are noisy,
so the results are medians and ratios: ORT fp32 speed-up over torch eager, int8 / fp16 latency
and size relative to fp32, and top-1 agreement with fp32 on held-out inputs.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--out DIR]

Writes ``DIR/core.json`` and ``DIR/core.md`` (default ``benchmarks/results``) and prints the
markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nbdeploy as nbd  # noqa: E402
from nbdeploy import _ort  # noqa: E402
from nbdeploy.bench import BenchmarkReport, BenchmarkResult  # noqa: E402
from tests.helpers import models  # noqa: E402

BATCH_SIZES = (1, 8)
MLP_SPEEDUP_TARGET = 1.5
TRANSFORMER_SIZE_TARGET = 0.3
FULL = {"warmup": 10, "min_runs": 50, "time_budget_s": 1.0}
QUICK = {"warmup": 2, "min_runs": 10, "time_budget_s": 0.1}


@dataclass
class Case:
    """One model with its training, calibration and held-out evaluation data."""

    name: str
    model: Any
    train: tuple[np.ndarray, np.ndarray]
    held_out: tuple[np.ndarray, np.ndarray]
    epochs: int

    @property
    def sample(self) -> np.ndarray:
        return self.held_out[0][:8]


def digits_split(reshape: Callable[[np.ndarray], np.ndarray]) -> tuple[tuple, tuple]:
    x, y = models.digits()
    x = reshape(x)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def token_split(vocab: int = 1000, seq: int = 16, rows: int = 800) -> tuple[tuple, tuple]:
    """Bag-of-tokens task: the class is the vocabulary quarter most tokens come from.

    Learnable by the transformer's mean pooling, so agreement after int8 means something.
    """
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(rows, seq), dtype=np.int64)
    skew = rng.integers(0, 4, size=rows)
    favoured = rng.integers(0, vocab // 4, size=(rows, seq // 2)) + (skew * (vocab // 4))[:, None]
    tokens[:, : seq // 2] = favoured
    labels = np.array([np.bincount(row // (vocab // 4), minlength=4).argmax() for row in tokens])
    split = rows * 3 // 4
    return (tokens[:split], labels[:split]), (tokens[split:], labels[split:])


def cases() -> list[Case]:
    return [
        Case("mlp", models.mlp(), *digits_split(lambda x: x), epochs=5),
        Case("cnn", models.cnn(), *digits_split(lambda x: x.reshape(-1, 1, 8, 8)), epochs=4),
        Case("transformer", models.transformer(), *token_split(), epochs=4),
    ]


def fit(model: Any, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """A few epochs of minibatch Adam on one thread.

    Training is not what is measured; one thread keeps it quick and predictable on a shared
    2-core machine, where a contended torch thread pool can be many times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        order = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for rows in torch.randperm(len(xt), generator=order).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()
                optimizer.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def predictions(path: Path, inputs: np.ndarray) -> np.ndarray:
    sess = _ort.session(path)
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: inputs})[0]).argmax(axis=-1)


def run_case(case: Case, budget: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    x_train, y_train = case.train
    x_eval, y_eval = case.held_out
    fit(case.model, x_train, y_train, case.epochs)
    log(f"{case.name}: trained in {time.perf_counter() - started:.1f}s")

    art = nbd.export(case.model, case.sample, name=case.name)
    variants = nbd.quantize(
        art, modes=("int8", "fp16"), calibration=x_train[:256], labels=y_train[:256]
    )
    log(f"{case.name}: exported and quantized ({', '.join(v.variant for v in variants)})")

    targets: list[Any] = [art, *variants]
    if art.source_model is None:
        targets.insert(0, case.model)
    report = nbd.benchmark(targets, case.sample, batch_sizes=BATCH_SIZES, **budget)
    log(f"{case.name}: benchmarked in {time.perf_counter() - started:.1f}s total")

    fp32_top1 = predictions(art.path, x_eval)
    quality = {art.label: {"top1_agreement": 1.0, "accuracy": float((fp32_top1 == y_eval).mean())}}
    for variant in variants:
        if not variant.ok:
            continue
        top1 = predictions(variant.path, x_eval)
        quality[variant.label] = {
            "top1_agreement": float((top1 == fp32_top1).mean()),
            "accuracy": float((top1 == y_eval).mean()),
        }
    return {
        "name": case.name,
        "fp32": art.label,
        "fp32_size_bytes": art.size_bytes,
        "variants": {
            v.label: {
                "ok": v.ok,
                "quantization": v.quantization.to_dict() if v.quantization else None,
                "size_bytes": v.size_bytes if v.ok else None,
            }
            for v in variants
        },
        "quality": quality,
        "held_out_rows": int(len(y_eval)),
        "report": report,
    }


def _row(report: BenchmarkReport, batch: int, **match: Any) -> BenchmarkResult | None:
    for row in report.results:
        if (
            row.batch_size == batch
            and row.ok
            and all(getattr(row, k) == v for k, v in match.items())
        ):
            return row
    return None


def ratios(case: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per measured (target, batch): medians and ratios against eager and fp32."""
    report: BenchmarkReport = case["report"]
    lines = []
    for row in report.results:
        eager = _row(report, row.batch_size, engine="torch")
        fp32 = _row(report, row.batch_size, target=case["fp32"])
        line = {
            "model": case["name"],
            "target": row.target,
            "batch_size": row.batch_size,
            "status": row.status,
            "note": row.note,
            "p50_ms": row.p50_ms,
            "p99_ms": row.p99_ms,
            "throughput": row.throughput,
            "size_bytes": row.size_bytes,
            "speedup_vs_eager": None,
            "latency_vs_fp32": None,
            "size_vs_fp32": None,
            **case["quality"].get(row.target, {"top1_agreement": None, "accuracy": None}),
        }
        if row.ok:
            if eager and row.engine == "onnxruntime":
                line["speedup_vs_eager"] = eager.p50_ms / row.p50_ms
            if fp32 and row.engine == "onnxruntime":
                line["latency_vs_fp32"] = row.p50_ms / fp32.p50_ms
        if row.size_bytes is not None:
            line["size_vs_fp32"] = row.size_bytes / case["fp32_size_bytes"]
        lines.append(line)
    return lines


def headline(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The two numbers the project promises, with whether this run met them."""
    mlp_fp32 = next(
        (
            ln
            for ln in lines
            if ln["model"] == "mlp" and ln["target"].endswith(":fp32") and ln["batch_size"] == 1
        ),
        None,
    )
    speedup = mlp_fp32["speedup_vs_eager"] if mlp_fp32 else None
    int8 = next(
        (
            ln
            for ln in lines
            if ln["model"] == "transformer"
            and ":int8" in ln["target"]
            and ln["batch_size"] == 1
            and ln["status"] == "ok"
        ),
        None,
    )
    return {
        "mlp_fp32_speedup_vs_torch_eager_batch1": speedup,
        "mlp_speedup_target": MLP_SPEEDUP_TARGET,
        "mlp_speedup_met": speedup is not None and speedup >= MLP_SPEEDUP_TARGET,
        "transformer_int8_target": int8["target"] if int8 else None,
        "transformer_int8_size_vs_fp32": int8["size_vs_fp32"] if int8 else None,
        "transformer_int8_size_target": TRANSFORMER_SIZE_TARGET,
        "transformer_int8_size_met": bool(
            int8
            and int8["size_vs_fp32"] is not None
            and int8["size_vs_fp32"] <= TRANSFORMER_SIZE_TARGET
        ),
        "transformer_int8_top1_agreement": int8["top1_agreement"] if int8 else None,
        "transformer_int8_latency_vs_fp32_batch1": int8["latency_vs_fp32"] if int8 else None,
    }


def busy_warning(machine: dict[str, Any]) -> list[str]:
    """Other work on the CPUs distorts every number, a multi-threaded torch most of all."""
    load, cpus = machine.get("load_average"), machine.get("usable_cpus") or 1
    if load is None or load <= cpus:
        return []
    return [
        f"> **The machine was busy** (load average {load} on {cpus} CPUs): these numbers are"
        " distorted, torch eager's thread pool most of all. Re-run on an idle machine.",
        "",
    ]


def markdown(lines: list[dict[str, Any]], head: dict[str, Any], machine: dict, mode: str) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    out = [
        "# nbdeploy core benchmark",
        "",
        f"{machine.get('cpu')}, {machine.get('usable_cpus')} CPUs; onnxruntime"
        f" {machine.get('onnxruntime')}, torch {machine.get('torch')}, Python"
        f" {machine.get('python')}; 1-minute load average {machine.get('load_average')};"
        f" {mode} run. Times are per call (p50 = median), measured"
        " side by side in one process; ratios matter more than absolute numbers.",
        "",
        *busy_warning(machine),
        "| model | target | batch | p50 ms | p99 ms | samples/s | size KiB | speed-up vs eager"
        " | latency / fp32 | size / fp32 | top-1 agree | accuracy |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for ln in lines:
        if ln["status"] != "ok":
            out.append(
                f"| {ln['model']} | {ln['target']} | {ln['batch_size']} |"
                f" {ln['status']}: {ln['note']} | | | | | | | | |"
            )
            continue
        out.append(
            f"| {ln['model']} | {ln['target']} | {ln['batch_size']} | {num(ln['p50_ms'], '.3f')}"
            f" | {num(ln['p99_ms'], '.3f')} | {num(ln['throughput'], ',.0f')}"
            f" | {num(ln['size_bytes'] and ln['size_bytes'] / 1024, '.1f')}"
            f" | {num(ln['speedup_vs_eager'], '.2f')}{'x' if ln['speedup_vs_eager'] else ''}"
            f" | {num(ln['latency_vs_fp32'], '.2f')} | {num(ln['size_vs_fp32'], '.2f')}"
            f" | {num(ln['top1_agreement'], '.1%')} | {num(ln['accuracy'], '.1%')} |"
        )

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    speedup = head["mlp_fp32_speedup_vs_torch_eager_batch1"]
    size = head["transformer_int8_size_vs_fp32"]
    out += [
        "",
        "## Targets",
        "",
        f"- MLP, batch 1: ORT fp32 is {num(speedup, '.2f')}x faster than torch eager"
        f" (target >= {MLP_SPEEDUP_TARGET}x: {verdict(head['mlp_speedup_met'])}).",
        f"- Transformer {head['transformer_int8_target'] or 'int8'}: {num(size, '.2f')}x the fp32"
        f" size (target <= {TRANSFORMER_SIZE_TARGET}x: {verdict(head['transformer_int8_size_met'])}),"
        f" top-1 agreement with fp32 {num(head['transformer_int8_top1_agreement'], '.1%')},"
        f" batch-1 latency {num(head['transformer_int8_latency_vs_fp32_batch1'], '.2f')}x fp32.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (CI smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-") as scratch:
        # The exported and quantized models are throwaway: keep them out of the user's home.
        os.environ.setdefault("NBDEPLOY_HOME", scratch)
        results = [run_case(case, budget, log) for case in cases()]
    report = results[0]["report"]
    for case in results[1:]:
        report = report.merge(case["report"])
    lines = [line for case in results for line in ratios(case)]
    head = headline(lines)
    mode = "quick" if args.quick else "full"
    text = markdown(lines, head, report.machine, mode)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "mode": mode,
        "seconds": round(time.perf_counter() - started, 1),
        "targets": head,
        "rows": lines,
        "models": [{k: v for k, v in case.items() if k != "report"} for case in results],
        "benchmark": report.to_dict(),
    }
    (args.out / "core.json").write_text(json.dumps(payload, indent=2))
    (args.out / "core.md").write_text(text)
    print(text)
    log(f"wrote {args.out / 'core.json'} and {args.out / 'core.md'} in {payload['seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
