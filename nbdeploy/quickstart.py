"""The main job end to end on a dataset that ships with scikit-learn: the README's first command."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8x8 digit images as [n, 1, 8, 8] float32 in [0, 1]; a fixed train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    return tuple(train_test_split(images, labels, test_size=0.25, random_state=0))  # type: ignore[return-value]


def train_digits_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 40) -> Any:
    """A small CNN trained for a few seconds on CPU (full-batch Adam)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(xt), 256):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(xt[start : start + 256]), yt[start : start + 256]
            )
            loss.backward()
            optimizer.step()
    return model.eval()


def run_quickstart(name: str = "digits", out: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, export, quantize, benchmark and register the digits CNN; report each stage."""
    import nbdeploy.api as api
    from nbdeploy.optimize import select_auto

    started = time.perf_counter()
    x_train, x_test, y_train, y_test = digits_data()
    out(f"[1/5] training a small CNN on scikit-learn's digits ({len(x_train)} images)")
    model = train_digits_cnn(x_train, y_train)

    out("[2/5] exporting to ONNX and checking parity with PyTorch")
    artifact = api.export(model, x_test[:8], name=name, labels=[str(d) for d in range(10)])
    out(f"      {artifact.path}  parity: {artifact.parity}")

    out("[3/5] quantizing (int8 static QDQ, fp16) and checking accuracy")
    variants = api.quantize(artifact, ("int8", "fp16"), calibration=x_test, labels=y_test)
    for variant in variants:
        q = variant.quantization
        status = "ok" if variant.ok else f"not usable: {q.reason}"
        out(
            f"      {variant.variant:<12} {variant.size_bytes / 1024:8.1f} KiB  {variant.parity}  {status}"
        )

    out("[4/5] benchmarking torch eager vs onnxruntime variants")
    report = api.benchmark([artifact, *variants], x_test[:8], batch_sizes=(1, 8))
    out(report.table())

    chosen = select_auto(artifact, variants, report.latency_ms(batch_size=1))
    out(f"[5/5] registering {chosen.label} (fastest variant with >= 99% top-1 agreement)")
    registered = api.register(chosen, name=name)
    out(f"      {registered.name} version {registered.version} at {registered.directory}")
    elapsed = time.perf_counter() - started
    out(f"done in {elapsed:.1f} s")
    return {"artifact": artifact, "variants": variants, "report": report, "registered": registered}
