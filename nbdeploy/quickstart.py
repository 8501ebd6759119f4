"""The main job end to end on a dataset that ships with scikit-learn: the README's first command."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nbdeploy import _format
from nbdeploy._errors import InputError
from nbdeploy.vocabulary import AUTO_CANDIDATES, ProgressEvent

NAME = "example-digits"
"""Prefixed so the quickstart never collides with a user's own ``digits``."""


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8x8 digit images as [n, 1, 8, 8] float32 in [0, 1]; a fixed train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    return tuple(train_test_split(images, labels, test_size=0.25, random_state=0))  # type: ignore[return-value]


def digits_cnn() -> Any:
    """A small CNN over [n, 1, 8, 8] digit images (untrained)."""
    import torch

    return torch.nn.Sequential(
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


def train_digits_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 40) -> Any:
    """The digits CNN trained for a few seconds on CPU (mini-batch Adam)."""
    import torch

    torch.manual_seed(0)
    model = digits_cnn()
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


def check_name_is_free(name: str, *, replace: bool = False) -> None:
    """Refuse to replace a deployment of ``name`` that another session made, unless asked."""
    import nbdeploy.api as api

    if replace:
        return
    for view in api.deployment_views():
        if view.name == name and view.made_elsewhere:
            raise InputError(
                f"a deployment named {name!r} is running, made by {view.owner}; choose another"
                f" name with --name, or stop it first (nbdeploy stop {name})"
            )


def run_quickstart(
    name: str = NAME,
    runtime: str = "auto",
    out: Callable[[str], None] = print,
    *,
    replace: bool = False,
) -> dict[str, Any]:
    """Train, export, quantize, benchmark and deploy the digits CNN; report each stage.

    A running deployment of ``name`` made by another session is left alone (an error says
    so) unless ``replace``; the quickstart never stops anything.
    """
    import nbdeploy.api as api

    check_name_is_free(name, replace=replace)
    started = time.perf_counter()
    x_train, x_test, y_train, y_test = digits_data()
    out(f"[1/6] training a small CNN on scikit-learn's digits ({len(x_train)} images)")
    model = train_digits_cnn(x_train, y_train)

    out("[2/6] exporting to ONNX and checking parity with PyTorch")
    artifact = api.export(model, x_test[:8], name=name, labels=[str(d) for d in range(10)])
    out(f"      {artifact.path}  parity: {artifact.parity}")

    out("[3/6] quantizing (int8 static QDQ, fp16) and checking accuracy on held-out digits")
    variants = api.quantize(artifact, AUTO_CANDIDATES, calibration=x_test, labels=y_test)
    for variant in variants:
        q = variant.quantization
        status = "ok" if variant.ok else f"not usable: {q.reason}"
        out(
            f"      {variant.variant:<12} {_format.size(variant.size_bytes):>10}"
            f"  accuracy delta {q.accuracy_delta:+.3f}  {variant.parity}  {status}"
        )

    out("[4/6] benchmarking torch eager vs onnxruntime variants")
    report = api.benchmark([artifact, *variants], x_test[:8], batch_sizes=(1, 8))
    out(report.table())
    chosen = api.select_variant(artifact, variants, report)

    out(f"[5/6] deploying {chosen.label} (fastest variant with >= 99% top-1 agreement)")

    def stage(event: ProgressEvent) -> None:
        if not event.detail:
            out(f"      {event}")

    endpoint = api.deploy(chosen, name=name, runtime=runtime, progress=stage)
    http = api.benchmark(endpoint, x_test[:1], batch_sizes=(1,), concurrency=(1, 4), duration_s=2.0)
    out(http.table())

    out("[6/6] checking the endpoint against the held-out digits")
    predicted = endpoint.predict(x_test).argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    out(f"      endpoint accuracy on {len(y_test)} held-out digits: {accuracy:.1%}")
    demo = api.demo(name)
    elapsed = time.perf_counter() - started
    out("")
    out(
        f"{endpoint.name} v{endpoint.version} ({chosen.variant}, {endpoint.runtime} runtime) is serving:"
    )
    out(f"  endpoint: {endpoint.url}/v2/models/{endpoint.name}")
    out(f"  token:    nbdeploy token {name}  (export NBDEPLOY_TOKEN=$(nbdeploy token {name}))")
    out(f"  demo:     {demo.url}")
    out(f"  try:      nbdeploy status {name}  |  nbdeploy logs {name}  |  nbdeploy stop {name}")
    out(f"            nbdeploy demo {name} --stop")
    out(f"done in {elapsed:.1f} s")
    return {
        "artifact": artifact,
        "variants": variants,
        "report": report.merge(http),
        "endpoint": endpoint,
        "accuracy": accuracy,
        "demo_url": demo.url,
    }
