"""The public functions every surface (magic, panel, CLI, REST) calls. Thin: each delegates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.artifact import ModelArtifact

if TYPE_CHECKING:
    from nbdeploy.bench import BenchmarkReport
    from nbdeploy.endpoint import Endpoint


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
    from nbdeploy.exporters import export_model

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
    concurrency: Sequence[int] = (1, 4, 16),
    **options: Any,
) -> BenchmarkReport:
    """Measure latency and throughput on ``sample``: in-process for models and artifacts,
    over HTTP (a closed-loop sweep over ``concurrency``, JSON and binary) for Endpoints.

    ``targets`` may mix both; the rows land in one BenchmarkReport.
    """
    from nbdeploy.bench import benchmark as run_in_process
    from nbdeploy.endpoint import Endpoint

    items = list(targets) if isinstance(targets, list | tuple) else [targets]
    endpoints = [t for t in items if isinstance(t, Endpoint)]
    others = [t for t in items if not isinstance(t, Endpoint)]
    http_options = {k: options.pop(k) for k in ("payloads", "duration_s") if k in options}
    report = (
        run_in_process(others, sample, batch_sizes=batch_sizes, **options)
        if others or not endpoints
        else None
    )
    if endpoints:
        from nbdeploy.bench_http import benchmark_endpoint

        for endpoint in endpoints:
            http = benchmark_endpoint(
                endpoint, sample, concurrency=concurrency, batch_sizes=batch_sizes, **http_options
            )
            report = http if report is None else report.merge(http)
    return report


def register(artifact: ModelArtifact | str | Path, *, name: str | None = None) -> ModelArtifact:
    """Copy an artifact into the model repository as a new immutable version."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().register(_as_artifact(artifact), name=name)


def model(name: str, version: int | None = None) -> ModelArtifact:
    """A registered version of ``name`` (the newest by default), with its ``nbdeploy.json``."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().get(name, version)


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
        from nbdeploy.exporters import export_model

        return export_model(path, None, name=None)
    from nbdeploy._errors import NbdeployError

    raise NbdeployError(
        f"expected a ModelArtifact, an artifact directory or an .onnx path; got {type(value).__name__}"
    )


def deploy(
    model: Any,
    sample: Any = None,
    *,
    name: str | None = None,
    quantize: str | None = None,
    runtime: str = "auto",
    labels: Sequence[str] | None = None,
    port: int | None = None,
    auth: bool = True,
    **options: Any,
) -> Endpoint:
    """Export/quantize as asked, register a version and serve it as a local V2 endpoint.

    ``model`` is a framework model (with ``sample``), a ModelArtifact, or an ``.onnx`` path.
    Deploying an existing name is a blue-green switch: the new version serves before the old
    one stops. ``options`` reach :func:`nbdeploy.deployment.deploy` (``max_batch_size``,
    ``max_queue_delay_ms``, ``batching``, ``cpus``, ``memory``, ``timeout``, ``progress``).
    """
    from nbdeploy.deployment import deploy as run_deploy

    return run_deploy(
        model,
        sample=sample,
        name=name,
        quantize=quantize,
        runtime=runtime,
        labels=labels,
        port=port,
        auth=auth,
        **options,
    )


def deployments() -> list[Endpoint]:
    """Every active deployment, one Endpoint per name."""
    from nbdeploy.deployment import deployments as active

    return active()


def get(name: str) -> Endpoint:
    """The active deployment called ``name``; works again after a kernel restart."""
    from nbdeploy.deployment import get as find

    return find(name)


def undeploy(name: str) -> list[int]:
    """Stop the deployment called ``name``; returns the versions stopped."""
    from nbdeploy.deployment import undeploy as stop

    return stop(name)


def rollback(name: str, version: int | None = None) -> Endpoint:
    """Serve an earlier version of ``name`` (the previous one by default), blue-green."""
    from nbdeploy.deployment import rollback as back

    return back(name, version)


def deployment_rows() -> list[dict[str, Any]]:
    """Active deployments as plain dicts with their live status, for tables and JSON."""
    return [endpoint.to_dict() for endpoint in deployments()]
