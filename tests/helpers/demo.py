"""Shared pieces of the demo tests: a deployed digits CNN, digit PNGs, a headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers.models import cnn, digits, train

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
TRAIN_ROWS = 1400


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Digits as ``[n, 1, 8, 8]`` float32 images in [0, 1] and their labels."""
    x, y = digits()
    return x.reshape(-1, 1, 8, 8), y


@contextmanager
def nbdeploy_home(home: Path) -> Iterator[Path]:
    """Point NBDEPLOY_HOME at ``home`` for a block (module fixtures outlive monkeypatch)."""
    before = os.environ.get("NBDEPLOY_HOME")
    os.environ["NBDEPLOY_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("NBDEPLOY_HOME", None)
        else:
            os.environ["NBDEPLOY_HOME"] = before


def deploy_digits(name: str = "digits", **options: Any) -> Any:
    """Train the small CNN for a second and serve it on the process runtime."""
    import nbdeploy as nbd

    images, labels = digit_images()
    model = cnn()
    train(model, images[:TRAIN_ROWS], labels[:TRAIN_ROWS], epochs=40)
    return nbd.deploy(
        model,
        images[:16],
        name=name,
        runtime="process",
        labels=[str(d) for d in range(10)],
        **options,
    )


def write_digit_png(index: int, path: Path, size: int = 64, *, light: bool = False) -> Path:
    """A held-out digit upscaled with square pixels, white ink on black (or inverted)."""
    from PIL import Image

    images, _ = digit_images()
    pixels = np.rint(images[index, 0] * 255).astype(np.uint8)
    if light:
        pixels = 255 - pixels
    Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST).save(path)
    return path
