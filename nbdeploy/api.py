"""The public functions every surface (magic, panel, CLI, REST) calls. Thin: each delegates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nbdeploy.artifact import ModelArtifact


def export(
    model: Any,
    sample: Any,
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int | None = None,
) -> ModelArtifact:
    """Export a torch / Keras / TensorFlow / scikit-learn / ONNX model to ONNX, checked on ``sample``.

    The returned artifact records its signature and its parity with the original; an export
    beyond ``atol``/``rtol`` raises :class:`ParityError` showing the numbers.
    """
    from nbdeploy.export import export_model

    return export_model(model, sample, name=name, labels=labels, atol=atol, rtol=rtol, opset=opset)


def quantize(
    artifact: ModelArtifact | str | Path,
    modes: Iterable[str] = ("int8", "fp16"),
    *,
    calibration: Any = None,
    labels: Any = None,
) -> list[ModelArtifact]:
    """Make quantized variants of an fp32 artifact, each with size, parity and accuracy delta."""
    from nbdeploy.optimize import quantize_variants

    return quantize_variants(_as_artifact(artifact), modes, calibration=calibration, labels=labels)


def benchmark(
    targets: Any,
    sample: Any,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    **options: Any,
) -> Any:
    """Measure latency and throughput of artifacts (and their original model) on ``sample``."""
    from nbdeploy.bench import benchmark as run_benchmark

    return run_benchmark(targets, sample, batch_sizes=batch_sizes, **options)


def register(artifact: ModelArtifact | str | Path, *, name: str | None = None) -> ModelArtifact:
    """Copy an artifact into the model repository as a new immutable version."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().register(_as_artifact(artifact), name=name)


def models() -> list[dict[str, Any]]:
    """Every registered model version, newest first, as plain dicts."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().list_versions()


def _as_artifact(value: ModelArtifact | str | Path) -> ModelArtifact:
    """Accept an artifact, its directory, or a bare ``.onnx`` path."""
    if isinstance(value, ModelArtifact):
        return value
    if isinstance(value, str | Path):
        path = Path(value)
        if path.is_dir():
            return ModelArtifact.load(path)
        from nbdeploy.export import export_model

        return export_model(path, None, name=None)
    from nbdeploy._errors import NbdeployError

    raise NbdeployError(
        f"expected a ModelArtifact, an artifact directory or an .onnx path; got {type(value).__name__}"
    )


def deployment_rows() -> list[dict[str, Any]]:
    """Active deployments as plain rows (name, version, runtime, status, url, created_at)."""
    from nbdeploy.store import Store

    columns = ("name", "version", "runtime", "state", "url", "created_at")
    return [
        {**{key: row[key] for key in columns}, "status": row["state"]}
        for row in Store().deployments()
    ]
