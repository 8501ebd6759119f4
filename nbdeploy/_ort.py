"""onnxruntime sessions for the host side (the server in ``serve/`` has its own)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy._errors import NbdeployError


def session(path: str | Path, *, threads: int | None = None) -> Any:
    """An InferenceSession on CPU with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise NbdeployError(f"onnxruntime cannot load {path}: {exc}") from exc


def run(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session and return outputs by name."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))
