"""Where nbdeploy keeps its state, read from the environment each time so tests can redirect it."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state directory: ``NBDEPLOY_HOME`` or ``~/.nbdeploy``."""
    root = Path(os.environ.get("NBDEPLOY_HOME") or Path.home() / ".nbdeploy").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Content-addressed scratch space for exported and quantized models not yet registered."""
    path = home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    return home() / "nbdeploy.db"


def demos_dir() -> Path:
    path = home() / "demos"
    path.mkdir(parents=True, exist_ok=True)
    return path
