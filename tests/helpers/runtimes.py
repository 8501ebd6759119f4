"""Helpers for the image and runtime tests: a tiny model version, a shared cache, V2 calls."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from nbdeploy.routing import Routing, serving_dir, write_routing
from nbdeploy.runtimes import LaunchSpec, docker_available
from nbdeploy.vocabulary import Progress, ServerSettings
from tests.helpers.onnx_models import linear_model

needs_docker = pytest.mark.skipif(
    not docker_available(),
    reason="no Docker engine answers: run scripts/docker-engine.sh (as root) to start one",
)


def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheelhouse for the whole session (or the one CI points NBDEPLOY_CACHE at)."""
    configured = os.environ.get("NBDEPLOY_CACHE")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "nbdeploy-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_version(
    root: Path, name: str = "tiny", version: int = 1, seed: int = 0
) -> tuple[Path, str, np.ndarray, np.ndarray]:
    """A model version directory ``root/name/version`` as the repository lays it out.

    Returns the directory, the model's sha256 and the Gemm's weight and bias, so a test can
    compute the exact expected output.
    """
    from nbdeploy.artifact import ModelArtifact, store_onnx

    proto, weight, bias = linear_model(seed=seed)
    artifact = store_onnx(proto, name=name, framework="onnx")
    directory = root / name / str(version)
    shutil.copytree(artifact.directory, directory)
    registered = ModelArtifact.load(directory)
    registered.version = version
    registered.save_metadata()
    return directory, registered.sha256, weight, bias


def infer(url: str, name: str, x: np.ndarray, token: str | None) -> httpx.Response:
    """POST a V2 JSON inference request for the single FP32 input ``input``."""
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v2/models/{name}/infer", json=body, headers=headers, timeout=30)


def output_array(response: httpx.Response) -> np.ndarray:
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """True as soon as ``predicate()`` is; False when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def single_version_spec(
    directory: Path,
    sha256: str,
    *,
    port: int,
    token: str | None,
    settings: ServerSettings | None = None,
    progress: Progress | None = None,
) -> LaunchSpec:
    """A LaunchSpec for a server holding the one version in ``directory`` (laid out as
    ``root/name/version``), with its routing file written as a deploy writes it."""
    name, version = directory.parent.name, int(directory.name)
    write_routing(Routing(name, stable=version, weights={version: 100}))
    return LaunchSpec(
        name=name,
        port=port,
        token=token,
        admin_token=f"admin-{name}",
        models_root=directory.parent.parent,
        serving_dir=serving_dir(name),
        versions={version: sha256},
        settings=settings or ServerSettings(),
        progress=progress,
    )
