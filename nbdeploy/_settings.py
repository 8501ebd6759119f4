"""Where nbdeploy keeps its state, read from the environment each time so tests can redirect it."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state directory: ``NBDEPLOY_HOME`` or ``~/.nbdeploy``, readable by its owner only
    (it holds bearer tokens); a home made earlier with wider permissions is narrowed."""
    root = Path(os.environ.get("NBDEPLOY_HOME") or Path.home() / ".nbdeploy").expanduser()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_mode & 0o077:
        root.chmod(0o700)
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
