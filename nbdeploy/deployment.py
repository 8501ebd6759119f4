"""Deploying registered model versions: launch, wait ready, switch blue-green, stop, roll back.

The store's ``deployments`` table is the source of truth for what is current: a new version is
launched next to the old one and made ``active`` only once it answers ready; only then is the
old one stopped. Endpoints re-read the store, so they follow the switch.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nbdeploy._errors import DeployError, NbdeployError
from nbdeploy.artifact import ModelArtifact
from nbdeploy.endpoint import Endpoint
from nbdeploy.repository import ModelRepository, check_name
from nbdeploy.store import Store

QUANTIZE_CHOICES = (None, "none", "int8", "fp16", "auto", "int8-dynamic", "int8-static")
Progress = Callable[[str], None]


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def prepare_artifact(
    model: Any,
    *,
    sample: Any = None,
    name: str | None = None,
    quantize: str | None = None,
    calibration: Any = None,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> tuple[ModelArtifact, dict[str, Any] | None]:
    """Export (unless given an artifact) and quantize as asked; return what to serve.

    Returns the chosen artifact and, when variants were benchmarked to choose, that report.
    """
    from nbdeploy import api

    if quantize not in QUANTIZE_CHOICES:
        raise NbdeployError(
            f"quantize must be one of none, int8, fp16, auto, int8-dynamic, int8-static; got {quantize!r}"
        )
    if isinstance(model, ModelArtifact):
        artifact = model
    elif isinstance(model, str | Path) and Path(model).is_dir():
        artifact = ModelArtifact.load(model)
    else:
        _say(progress, "export: converting to ONNX and checking parity")
        artifact = api.export(model, sample, name=name, labels=labels)
        _say(progress, f"export: done ({artifact.parity or 'no parity check: ONNX input'})")
    artifact = _with_serving_metadata(artifact, sample=sample, labels=labels)
    if quantize in (None, "none"):
        return artifact, None

    modes = ("int8", "fp16") if quantize == "auto" else (quantize,)
    _say(progress, f"quantize: {', '.join(modes)}")
    variants = api.quantize(
        artifact, modes, calibration=calibration if calibration is not None else sample
    )
    for variant in variants:
        state = "ok" if variant.ok else f"not usable ({variant.quantization.reason})"
        _say(
            progress,
            f"quantize: {variant.variant} {variant.size_bytes / 1024:.0f} KiB, {variant.parity}, {state}",
        )
    considered = [artifact.summary(), *(variant.summary() for variant in variants)]
    if quantize != "auto":
        usable = [v for v in variants if v.ok]
        if not usable:
            reasons = "; ".join(f"{v.variant}: {v.quantization.reason}" for v in variants)
            raise NbdeployError(f"quantize={quantize!r} produced no usable variant ({reasons})")
        return _with_variants(usable[0], considered), None

    from nbdeploy.optimize import select_auto

    bench_sample = sample if sample is not None else calibration
    _say(progress, "benchmark: measuring variants to pick the fastest accurate one")
    report = api.benchmark([artifact, *variants], bench_sample, batch_sizes=(1,), baseline=False)
    chosen = select_auto(artifact, variants, report.latency_ms(batch_size=1))
    _say(progress, f"quantize: auto picked {chosen.variant}")
    return _with_variants(chosen, considered), report.to_dict()


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
    quantize: str | None = None,
    runtime: str = "auto",
    labels: Sequence[str] | None = None,
    port: int | None = None,
    auth: bool = True,
    calibration: Any = None,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    batching: bool = True,
    cpus: float | None = None,
    memory: str | None = "1g",
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Export/quantize as asked, register a new version, launch it and switch to it."""
    from nbdeploy.runtimes import ensure_port_free, free_port, get_runtime

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
        progress=progress,
    )
    registered = ModelRepository().register(artifact, name=name, benchmark=report)
    _say(progress, f"register: {registered.name} version {registered.version}")
    return launch(
        registered,
        runtime=backend,
        port=port if port is not None else free_port(),
        token=secrets.token_urlsafe(24) if auth else None,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        batching=batching,
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        progress=progress,
    )


def launch(
    registered: ModelArtifact,
    *,
    runtime: Any,
    port: int,
    token: str | None,
    timeout: float = 120.0,
    progress: Progress | None = None,
    **tuning: Any,
) -> Endpoint:
    """Start a registered version, wait until it is ready, then make it the active one."""
    from nbdeploy.runtimes import LaunchSpec, local_url

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
    )
    spec = LaunchSpec(
        name=name,
        version=version,
        model_dir=registered.directory,
        sha256=registered.sha256,
        port=port,
        token=token,
        progress=progress,
        **tuning,
    )
    handle = None
    try:
        _say(progress, f"launch: starting {name} v{version} on the {runtime.name} runtime")
        handle = runtime.start(spec)
        store.update_deployment(
            deployment_id, handle={**handle.to_dict(), "tuning": tuning}, url=handle.url
        )
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
    _say(progress, f"ready: {handle.url}/v2/models/{name}")
    for old in replaced:
        _say(progress, f"switch: stopping the previous version {old['version']}")
        _stop_handle(old)
    record = store.deployment(deployment_id)
    assert record is not None
    return Endpoint(record)


def _stop_handle(record: dict[str, Any]) -> None:
    from nbdeploy.runtimes import RuntimeHandle, get_runtime

    if not record.get("handle"):
        return
    try:
        get_runtime(record["runtime"]).stop(RuntimeHandle.from_dict(record["handle"]))
    except DeployError as exc:
        Store().add_event(record["name"], "stop-failed", f"version {record['version']}: {exc}")


def stop_deployment(record: dict[str, Any]) -> None:
    """Stop one deployment's server and mark it retired."""
    store = Store()
    _stop_handle(record)
    store.update_deployment(int(record["id"]), state="retired")
    store.add_event(record["name"], "stopped", f"version {record['version']} stopped")


def deployments() -> list[Endpoint]:
    """Every active deployment, one Endpoint per name."""
    return [Endpoint(row) for row in Store().deployments()]


def get(name: str) -> Endpoint:
    """The active deployment called ``name`` (re-attaches after a kernel restart)."""
    rows = Store().deployments(name=name)
    if not rows:
        running = sorted({row["name"] for row in Store().deployments()})
        raise DeployError(f"no active deployment named {name!r}; running: {running or 'none'}")
    return Endpoint(rows[0])


def undeploy(name: str) -> list[int]:
    """Stop every active or starting deployment of ``name``; return the versions stopped."""
    rows = Store().deployments(name=name, states=("active", "starting"))
    if not rows:
        running = sorted({row["name"] for row in Store().deployments()})
        raise DeployError(f"no active deployment named {name!r}; running: {running or 'none'}")
    for row in rows:
        stop_deployment(row)
    return [int(row["version"]) for row in rows]


def rollback(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Serve an earlier registered version (the one before the current, by default), blue-green."""
    from nbdeploy.runtimes import free_port, get_runtime

    current = get(name)
    repository = ModelRepository()
    if version is None:
        older = [
            row["version"]
            for row in repository.list_versions(name)
            if row["version"] < current.version
        ]
        if not older:
            raise DeployError(
                f"{name} is at version {current.version}; there is no earlier version to roll back to"
            )
        version = max(older)
    if int(version) == current.version:
        raise DeployError(f"{name} already serves version {version}")
    target = repository.get(name, int(version))
    return launch(
        target,
        runtime=get_runtime(current.runtime),
        port=free_port(),
        token=current.token,
        timeout=timeout,
        progress=progress,
        **current.tuning,
    )
