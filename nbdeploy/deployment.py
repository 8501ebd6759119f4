"""Deploying registered model versions: launch, wait ready, switch blue-green, stop, roll back.

The store's ``deployments`` table is the source of truth for what is current: a new version is
launched next to the old one and made ``active`` only once it answers ready; only then is the
old one stopped. Everything here returns typed :class:`~nbdeploy.vocabulary.Deployment`
records; :mod:`nbdeploy.api` wraps them in the Endpoint handles users hold.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nbdeploy import _format
from nbdeploy._errors import DeployError, ExportError, InputError, NbdeployError
from nbdeploy.artifact import ModelArtifact
from nbdeploy.repository import ModelRepository
from nbdeploy.runtimes import LaunchSpec, Runtime, RuntimeHandle, get_runtime
from nbdeploy.runtimes.base import ensure_port_free, free_port, local_url
from nbdeploy.store import Store
from nbdeploy.vocabulary import (
    AUTO_CANDIDATES,
    FALLBACKS,
    QUANTIZE_CHOICES,
    Deployment,
    Fallback,
    Progress,
    QuantizeChoice,
    ServerSettings,
    check_choice,
    check_name,
    emit,
    session_owner,
)


def prepare_artifact(
    model: Any,
    *,
    sample: Any = None,
    name: str | None = None,
    quantize: QuantizeChoice | None = None,
    calibration: Any = None,
    labels: Sequence[str] | None = None,
    tokenizer: Any = None,
    fallback: Fallback | None = None,
    requirements: Sequence[str] | None = None,
    batch_safe: bool = False,
    progress: Progress | None = None,
) -> tuple[ModelArtifact, dict[str, Any] | None]:
    """Export (unless given an artifact) and quantize as asked; return what to serve.

    Returns the chosen artifact and, when variants were benchmarked to choose, that report.
    """
    from nbdeploy.optimize import quantize_variants

    quantize = check_choice(quantize or "none", QUANTIZE_CHOICES, "quantize")
    if fallback is not None:
        check_choice(fallback, FALLBACKS, "fallback")
    artifact = ModelArtifact.find(model)
    if artifact is None:
        artifact = _export(
            model,
            sample,
            name=name,
            labels=labels,
            tokenizer=tokenizer,
            fallback=fallback,
            requirements=requirements,
            batch_safe=batch_safe,
            progress=progress,
        )
    if artifact.metadata.get("format") == "python" and quantize != "none":
        raise InputError(
            f"quantize={quantize!r} needs an ONNX model; a Python model is served as is"
        )
    artifact = _with_serving_metadata(artifact, sample=sample, labels=labels)
    if quantize == "none":
        return artifact, None

    modes = AUTO_CANDIDATES if quantize == "auto" else (quantize,)
    emit(progress, "quantize", ", ".join(modes))
    variants = quantize_variants(
        artifact, modes, calibration=calibration if calibration is not None else sample
    )
    for variant in variants:
        state = "ok" if variant.ok else f"not usable ({variant.quantization.reason})"
        size = _format.size(variant.summary()["size_bytes"])
        emit(progress, "quantize", f"{variant.variant} {size}, {variant.parity}, {state}")
    considered = [artifact.summary(), *(variant.summary() for variant in variants)]
    if quantize != "auto":
        usable = [v for v in variants if v.ok]
        if not usable:
            reasons = "; ".join(f"{v.variant}: {v.quantization.reason}" for v in variants)
            raise NbdeployError(f"quantize={quantize!r} produced no usable variant ({reasons})")
        return _with_variants(usable[0], considered), None

    from nbdeploy.bench import benchmark
    from nbdeploy.optimize import select_auto

    bench_sample = sample if sample is not None else calibration
    emit(progress, "benchmark", "measuring variants to pick the fastest accurate one")
    report = benchmark([artifact, *variants], bench_sample, batch_sizes=(1,), baseline=False)
    chosen = select_auto(artifact, variants, report.latency_ms(batch_size=1))
    emit(progress, "quantize", f"auto picked {chosen.variant}")
    return _with_variants(chosen, considered), report.to_dict()


def _export(
    model: Any,
    sample: Any,
    *,
    name: str | None,
    labels: Sequence[str] | None,
    tokenizer: Any,
    fallback: Fallback | None,
    requirements: Sequence[str] | None,
    batch_safe: bool,
    progress: Progress | None,
) -> ModelArtifact:
    """ONNX when an exporter knows the model; the Python path for plain callables, and for
    framework models whose export failed when ``fallback="python"`` was asked for."""
    from nbdeploy.exporters import as_artifact, framework_of
    from nbdeploy.exporters._python import export_python, is_python_model

    def as_python(reason: str) -> ModelArtifact:
        emit(progress, "export", f"serving the model object itself as a Python model ({reason})")
        return export_python(
            model,
            sample,
            name=name,
            labels=labels,
            requirements=requirements,
            batch_safe=batch_safe,
        )

    try:
        framework_of(model)
    except ExportError:
        if not is_python_model(model):
            raise
        return as_python("no ONNX exporter takes it")
    emit(progress, "export", "converting to ONNX and checking parity")
    try:
        artifact = as_artifact(model, sample, name=name, labels=labels, tokenizer=tokenizer)
    except ExportError as exc:
        if fallback != "python":
            raise type(exc)(
                f"{_format.first_line(exc)}; to serve the model object itself instead, pass"
                " fallback='python' (%deploy --python)"
            ) from exc
        return as_python(f"ONNX export failed: {_format.first_line(exc)}")
    emit(progress, "export", f"done ({artifact.parity or 'no parity check: ONNX input'})")
    return artifact


def _with_serving_metadata(
    artifact: ModelArtifact, *, sample: Any, labels: Sequence[str] | None
) -> ModelArtifact:
    """A copy of ``artifact`` carrying class labels and the input preprocessing the demo page
    needs (read from the sample); the caller's artifact is left as it was."""
    from nbdeploy.preprocess import describe_inputs

    metadata = dict(artifact.metadata)
    if "preprocessing" not in metadata:
        metadata["preprocessing"] = describe_inputs(
            artifact.signature, sample, kind=artifact.input_kind
        )
    return replace(
        artifact,
        labels=artifact.labels if artifact.labels is not None or labels is None else list(labels),
        metadata=metadata,
    )


def _with_variants(chosen: ModelArtifact, considered: list[dict[str, Any]]) -> ModelArtifact:
    """Keep every variant that was weighed in the served version's metadata, for the summary."""
    return replace(chosen, metadata={**chosen.metadata, "variants": considered})


def deploy(
    model: Any,
    *,
    sample: Any = None,
    name: str | None = None,
    quantize: QuantizeChoice | None = None,
    runtime: str = "auto",
    labels: Sequence[str] | None = None,
    port: int | None = None,
    auth: bool = True,
    calibration: Any = None,
    tokenizer: Any = None,
    fallback: Fallback | None = None,
    requirements: Sequence[str] | None = None,
    batch_safe: bool = False,
    settings: ServerSettings | None = None,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Export/quantize as asked, register a new version, launch it and switch to it."""
    if name is not None:
        check_name(name)
    backend = get_runtime(runtime)
    if port is not None:
        ensure_port_free(port)
    artifact, report = prepare_artifact(
        model,
        sample=sample,
        name=name,
        quantize=quantize,
        calibration=calibration,
        labels=labels,
        tokenizer=tokenizer,
        fallback=fallback,
        requirements=requirements,
        batch_safe=batch_safe,
        progress=progress,
    )
    registered = ModelRepository().register(artifact, name=name, benchmark=report)
    emit(progress, "register", f"{registered.name} version {registered.version}")
    return launch(
        registered,
        runtime=backend,
        port=port if port is not None else free_port(),
        token=secrets.token_urlsafe(24) if auth else None,
        settings=settings or ServerSettings(),
        timeout=timeout,
        progress=progress,
    )


def launch(
    registered: ModelArtifact,
    *,
    runtime: Runtime,
    port: int,
    token: str | None,
    settings: ServerSettings,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Start a registered version, wait until it is ready, then make it the active one."""
    store = Store()
    name, version = registered.name, int(registered.version)
    deployment_id = store.add_deployment(
        name=name,
        version=version,
        runtime=runtime.name,
        state="starting",
        url=local_url(port),
        port=port,
        token=token,
        settings=settings,
        owner=session_owner(),
    )
    spec = LaunchSpec(
        name=name,
        version=version,
        model_dir=registered.directory,
        sha256=registered.sha256,
        port=port,
        token=token,
        settings=settings,
        progress=progress,
    )
    handle = None
    try:
        emit(progress, "launch", f"starting {name} v{version} on the {runtime.name} runtime")
        handle = runtime.start(spec)
        store.update_deployment(deployment_id, handle=handle.to_dict(), url=handle.url)
        runtime.wait_ready(handle, timeout=timeout)
    except BaseException as exc:
        store.update_deployment(deployment_id, state="failed")
        store.add_event(name, "failed", f"version {version} did not start: {exc}")
        if handle is not None:
            runtime.stop(handle, timeout=5)
        if isinstance(exc, NbdeployError):
            raise
        raise DeployError(f"could not launch {name} v{version}: {exc}") from exc
    replaced = store.activate(deployment_id, name)
    store.add_event(
        name, "deployed", f"version {version} at {handle.url}", {"runtime": runtime.name}
    )
    emit(progress, "ready", f"{handle.url}/v2/models/{name}")
    for old in replaced:
        emit(progress, "switch", f"stopping the previous version {old.version}")
        _stop_server(old)
    record = store.deployment(deployment_id)
    assert record is not None
    return record


def _stop_server(record: Deployment) -> None:
    if not record.handle:
        return
    try:
        get_runtime(record.runtime).stop(RuntimeHandle.from_dict(record.handle))
    except DeployError as exc:
        Store().add_event(record.name, "stop-failed", f"version {record.version}: {exc}")


def stop(record: Deployment) -> None:
    """Stop one deployment's server and mark it retired."""
    store = Store()
    _stop_server(record)
    store.update_deployment(record.id, state="retired")
    store.add_event(record.name, "stopped", f"version {record.version} stopped")


def active() -> list[Deployment]:
    """Every active deployment, one per name."""
    return Store().deployments()


def current(name: str) -> Deployment:
    """The active deployment called ``name``."""
    rows = Store().deployments(name=name)
    if not rows:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    return rows[0]


def _running_names() -> list[str] | str:
    return sorted({row.name for row in Store().deployments()}) or "none"


def undeploy(name: str) -> list[int]:
    """Stop every active or starting deployment of ``name``; return the versions stopped."""
    rows = Store().deployments(name=name, states=("active", "starting"))
    if not rows:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    for row in rows:
        stop(row)
    return [row.version for row in rows]


def rollback(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Serve an earlier registered version (the one before the current, by default), blue-green."""
    serving = current(name)
    repository = ModelRepository()
    if version is None:
        older = [
            row["version"]
            for row in repository.list_versions(name)
            if row["version"] < serving.version
        ]
        if not older:
            raise DeployError(
                f"{name} is at version {serving.version}; there is no earlier version to roll back to"
            )
        version = max(older)
    if int(version) == serving.version:
        raise DeployError(f"{name} already serves version {version}")
    return launch(
        repository.get(name, int(version)),
        runtime=get_runtime(serving.runtime),
        port=free_port(),
        token=serving.token,
        settings=serving.settings,
        timeout=timeout,
        progress=progress,
    )
