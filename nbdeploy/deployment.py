"""Versions side by side behind one stable endpoint: deploy, canary, shadow, promote, traffic,
rollback, guards and compare.

Each name has one long-lived server on one port. A change (a new version, a canary share, a
promotion) is planned as a new :class:`~nbdeploy.routing.Routing`, written to the name's
routing file and handed to the running server, which loads and warms new versions before it
moves traffic atomically; the server is started again only when it must be (first deploy, a
dead server, another port, other settings, other packages). Changes to one name are serialised
by a file lock; the store records the versions, weights and events. Everything here returns
typed :class:`~nbdeploy.vocabulary.Deployment` records (the stable version's);
:mod:`nbdeploy.api` wraps them in the Endpoint handles users hold.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdeploy import _format, _procs
from nbdeploy._errors import DeployError, ExportError, InputError, NbdeployError
from nbdeploy.artifact import ModelArtifact
from nbdeploy.repository import ModelRepository
from nbdeploy.request_log import requests_dir
from nbdeploy.routing import (
    AdminClient,
    Routing,
    format_weights,
    name_lock,
    parse_weights,
    serving_dir,
    state_dir,
    write_routing,
)
from nbdeploy.runtimes import LaunchSpec, Runtime, RuntimeHandle, get_runtime
from nbdeploy.runtimes.base import (
    ensure_port_free,
    environment_of,
    free_port,
    inspect_model_dir,
    local_url,
    port_in_use,
)
from nbdeploy.store import Store
from nbdeploy.vocabulary import (
    AUTO_CANDIDATES,
    FALLBACKS,
    QUANTIZE_CHOICES,
    Deployment,
    Fallback,
    Guards,
    Progress,
    QuantizeChoice,
    ServerSettings,
    VersionView,
    check_choice,
    check_name,
    emit,
    session_owner,
)

if TYPE_CHECKING:
    from nbdeploy.comparison import CompareReport
    from nbdeploy.drift_profile import DriftReport
    from nbdeploy.telemetry import StatsReport


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
        return _with_profile(artifact, sample, calibration, progress), None

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
        chosen = _with_variants(usable[0], considered)
        return _with_profile(chosen, sample, calibration, progress), None

    from nbdeploy.bench import benchmark
    from nbdeploy.optimize import select_auto

    bench_sample = sample if sample is not None else calibration
    emit(progress, "benchmark", "measuring variants to pick the fastest accurate one")
    report = benchmark([artifact, *variants], bench_sample, batch_sizes=(1,), baseline=False)
    chosen = select_auto(artifact, variants, report.latency_ms(batch_size=1))
    emit(progress, "quantize", f"auto picked {chosen.variant}")
    chosen = _with_profile(_with_variants(chosen, considered), sample, calibration, progress)
    return chosen, report.to_dict()


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


def _with_profile(
    artifact: ModelArtifact, sample: Any, calibration: Any, progress: Progress | None
) -> ModelArtifact:
    """A copy of ``artifact`` carrying the reference profile of the data the user gave (the
    sample and the calibration data), which the server compares live requests with."""
    from nbdeploy.drift_profile import MIN_ROWS, reference_profile

    if "profile" in artifact.metadata:
        return artifact
    profile = reference_profile(artifact, sample, calibration)
    if profile is None:
        return artifact
    weak = (
        f"; pass calibration= with {MIN_ROWS}+ rows for a reliable one"
        if profile["rows"] < MIN_ROWS
        else ""
    )
    emit(
        progress,
        "export",
        f"drift reference: {len(profile['features'])} features from {profile['rows']} rows{weak}",
    )
    return replace(artifact, metadata={**artifact.metadata, "profile": profile})


def _with_variants(chosen: ModelArtifact, considered: list[dict[str, Any]]) -> ModelArtifact:
    """Keep every variant that was weighed in the served version's metadata, for the summary."""
    return replace(chosen, metadata={**chosen.metadata, "variants": considered})


# How long a restart on the same port waits for a dead server's socket to be released.
PORT_RELEASE_S = 5.0


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
    canary: int | None = None,
    shadow: bool = False,
    guards: Guards | Mapping[str, Any] | None = None,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Export/quantize as asked, register a new version and load it into the name's server:
    serving all traffic (the default), a ``canary`` percent of it, or a mirrored copy
    (``shadow``). The name keeps its URL; the first deploy of a name starts its server."""
    if name is not None:
        check_name(name)
    limits = _check_rollout(canary, shadow, guards)
    backend = get_runtime(runtime)
    if port is not None:
        _check_port_number(port)
        serving = Store().deployments(name=name) if name is not None else []
        if not serving or serving[0].port != port:
            ensure_port_free(port)
    if (canary is not None or shadow) and name is not None and not Store().deployments(name=name):
        what = f"canary={canary}" if canary is not None else "shadow=True"
        raise InputError(
            f"{what} tries a new version next to the one serving, and {name!r} serves nothing"
            " yet: deploy it once without canary or shadow first"
        )
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
    version = int(registered.version)
    emit(progress, "register", f"{registered.name} version {version}")

    def plan(current: Routing | None) -> Routing:
        if current is not None and canary is None and not shadow and current.stable > version:
            return current  # a newer version won a concurrent deploy: the newest serves
        if current is None or (canary is None and not shadow):
            return Routing(registered.name, stable=version, weights={version: 100})
        if shadow:
            return current.next(weights={current.stable: 100}, shadow=(version,))
        assert canary is not None
        return current.next(
            weights={current.stable: 100 - canary, version: canary},
            shadow=(),
            guards=limits,
            guarded=version,
        )

    role = "shadow" if shadow else f"canary at {canary}%" if canary is not None else "serving"
    return _change(
        registered.name,
        plan,
        what=f"version {version} ({role})",
        event="deployed",
        runtime=backend,
        port=port,
        auth=auth,
        settings=settings or ServerSettings(),
        clear_guard=True,
        timeout=timeout,
        progress=progress,
    )


def _check_rollout(canary: Any, shadow: Any, guards: Any) -> Guards | None:
    if canary is not None and (
        isinstance(canary, bool) or not isinstance(canary, int) or not 1 <= canary <= 99
    ):
        raise InputError(f"canary must be a whole percent from 1 to 99; got {canary!r}")
    if not isinstance(shadow, bool):
        raise InputError(f"shadow must be True or False; got {shadow!r}")
    if canary is not None and shadow:
        raise InputError(
            "choose canary=P (the new version answers P% of requests) or shadow=True (it"
            " gets a mirrored copy of every request), not both"
        )
    limits = Guards.parse(dict(guards) if isinstance(guards, Mapping) else guards)
    if limits is not None and canary is None:
        raise InputError("guards watch a canary: pass canary=P with them")
    return limits


def _check_port_number(port: Any) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InputError(f"port must be a whole number from 1 to 65535; got {port!r}")


def promote(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Give the newest canary or shadow (or ``version``) all traffic and make it stable."""

    def plan(current: Routing | None) -> Routing:
        current = _serving(name, current)
        target = _version_arg(version) if version is not None else None
        if target is None:
            if not current.candidates:
                raise DeployError(
                    f"{name} has no canary or shadow to promote: it serves version"
                    f" {current.stable} alone"
                )
            target = current.candidates[0]
        return current.next(stable=target, weights={target: 100}, shadow=())

    return _change(
        name,
        plan,
        what="promotion",
        event="promoted",
        clear_guard=True,
        timeout=timeout,
        progress=progress,
    )


def set_traffic(
    name: str,
    weights: Mapping[Any, Any],
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Split unversioned traffic as ``{version: percent}`` (percents add up to 100); versions
    not yet loaded are loaded first, loaded ones not named are unloaded."""
    split = parse_weights(weights)

    def plan(current: Routing | None) -> Routing:
        current = _serving(name, current)
        stable = current.stable if split.get(current.stable, 0) > 0 else _heaviest(split)
        return current.next(stable=stable, weights=split, shadow=())

    return _change(
        name,
        plan,
        what=f"traffic {format_weights(split)}",
        event="traffic",
        timeout=timeout,
        progress=progress,
    )


def _heaviest(weights: Mapping[int, int]) -> int:
    return max(weights, key=lambda v: (weights[v], v))


def rollback(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """With a canary or shadow: give the stable version all traffic and unload the candidate.
    Without: serve the previous registered version (or ``version``) in place of the stable."""
    target = _version_arg(version) if version is not None else None

    def plan(current: Routing | None) -> Routing:
        current = _serving(name, current)
        if target is None and current.candidates:
            return current.next(weights={current.stable: 100}, shadow=())
        chosen = target
        if chosen is None:
            older = [
                row["version"]
                for row in ModelRepository().list_versions(name)
                if row["version"] < current.stable
            ]
            if not older:
                raise DeployError(
                    f"{name} is at version {current.stable}; there is no earlier version to"
                    " roll back to"
                )
            chosen = max(older)
        if chosen == current.stable and not current.candidates:
            raise DeployError(f"{name} already serves version {chosen}")
        return current.next(stable=chosen, weights={chosen: 100}, shadow=())

    return _change(
        name, plan, what="rollback", event="rolled-back", timeout=timeout, progress=progress
    )


def stop_version(name: str, version: int, *, timeout: float = 120.0) -> Deployment:
    """Unload one version that is not the stable one; its share goes to the stable version."""
    target = _version_arg(version)

    def plan(current: Routing | None) -> Routing:
        current = _serving(name, current)
        if target not in current.versions:
            raise InputError(
                f"{name} holds versions {current.versions}; version {target} is not among them"
            )
        if target == current.stable:
            raise InputError(
                f"version {target} is {name}'s stable version: promote another version, set the"
                f" traffic, or stop the whole deployment with undeploy({name!r})"
            )
        weights = {v: w for v, w in current.weights.items() if v != target}
        weights[current.stable] += current.weights.get(target, 0)
        shadow = tuple(v for v in current.shadow if v != target)
        return current.next(weights=weights, shadow=shadow)

    return _change(
        name, plan, what=f"stopping version {target}", event="version-stopped", timeout=timeout
    )


def _version_arg(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"a version is a whole number from 1; got {version!r}")
    return version


def _serving(name: str, current: Routing | None) -> Routing:
    if current is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    return current


def _change(
    name: str,
    plan: Callable[[Routing | None], Routing],
    *,
    what: str,
    event: str,
    runtime: Runtime | None = None,
    port: int | None = None,
    auth: bool = True,
    settings: ServerSettings | None = None,
    clear_guard: bool = False,
    guard_reason: str | None = None,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Deployment:
    """Change what the name's server holds, under the name's lock: reload the running server
    when it can take the change, else (first deploy, a dead server, a new port, other server
    settings, a version needing other packages) start the server again on the same port."""
    store = Store()
    repository = ModelRepository()
    with name_lock(name):
        clean_orphans(name)
        rows = store.deployments(name=name)
        route = store.route(name) if rows else None
        current = _current_routing(name, rows, route)
        routing = plan(current)
        if (
            routing is not current
            and current is not None
            and routing.generation <= current.generation
        ):
            routing = replace(routing, generation=current.generation + 1)
        registered = {int(row["version"]): row for row in repository.list_versions(name)}
        unknown = [v for v in routing.versions if v not in registered]
        if unknown:
            raise InputError(
                f"{name} has no registered version {', '.join(map(str, unknown))}; its versions"
                f" are {sorted(registered) or 'none'}"
            )
        versions = {v: str(registered[v]["sha256"]) for v in routing.versions}
        server = rows[0] if rows else None
        backend = get_runtime(server.runtime) if server else runtime or get_runtime("auto")
        admin_token = (route or {}).get("admin_token") or secrets.token_urlsafe(24)
        wanted = (
            settings if settings is not None else server.settings if server else ServerSettings()
        )
        handle = RuntimeHandle.from_dict(server.handle) if server and server.handle else None
        restart = _restart_reason(backend, handle, server, routing, versions, port, wanted)
        launch_id = None
        if restart is None and routing is current:
            emit(progress, "switch", f"{what}: nothing to change")
            store.add_event(name, "unchanged", f"{what}: {format_weights(routing.weights)} stays")
            return current_record(name)
        if restart is None:
            assert server is not None and handle is not None
            _reload(name, server.url, admin_token, routing, current, what, timeout, progress)
            url, used_port, token = server.url, server.port, server.token
        else:
            token = server.token if server else secrets.token_urlsafe(24) if auth else None
            used_port = port or (server.port if server else None) or _reusable_port(store, name)
            if server is not None and handle is not None:
                emit(progress, "switch", f"starting {name}'s server again: {restart}")
                _stop_handle(server.runtime, handle, name)
            spec = LaunchSpec(
                name=name,
                port=used_port,
                token=token,
                admin_token=admin_token,
                models_root=repository.root,
                serving_dir=serving_dir(name),
                versions=versions,
                settings=wanted,
                progress=progress,
                request_log_dir=requests_dir(name) if wanted.log_requests else None,
                grpc_port=_grpc_port(store, name, server),
                state_dir=state_dir(name),
            )
            handle, launch_id = _start(backend, spec, routing, current, rows, timeout, progress)
            url = handle.url
        reason = guard_reason
        if reason is None and not clear_guard and route is not None:
            reason = route.get("guard_reason")
        store.apply_routing(
            name,
            routing=routing.to_json(),
            admin_token=admin_token,
            guard_reason=reason,
            launch_id=launch_id,
            server={
                "runtime": backend.name,
                "url": url,
                "port": used_port,
                "token": token,
                "handle": handle.to_dict(),
                "settings": wanted,
                "owner": session_owner(),
            },
        )
        store.add_event(
            name, event, f"{what}: {format_weights(routing.weights)}", routing.to_json()
        )
        emit(progress, "ready", f"{url}/v2/models/{name} ({format_weights(routing.weights)})")
    _sync_monitoring(name)
    return current_record(name)


def _sync_monitoring(name: str) -> None:
    """Keep Prometheus' targets equal to what runs; a monitoring failure never fails a deploy
    (it is recorded as an event instead)."""
    from nbdeploy.monitoring import targets

    try:
        targets.sync()
    except (OSError, NbdeployError) as exc:
        Store().add_event(name, "monitoring", f"Prometheus targets not updated: {exc}")


def _current_routing(
    name: str, rows: list[Deployment], route: dict[str, Any] | None
) -> Routing | None:
    """What the name's server holds: the stored routing, or (rows from before versions were
    served side by side) its one active version."""
    if not rows:
        return None
    if route is not None:
        return Routing.from_json(route["routing"])
    newest = max(rows, key=lambda row: row.id)
    return Routing(name, stable=newest.version, weights={newest.version: 100})


def _restart_reason(
    backend: Runtime,
    handle: RuntimeHandle | None,
    server: Deployment | None,
    routing: Routing,
    versions: dict[int, str],
    port: int | None,
    settings: ServerSettings,
) -> str | None:
    """Why the change needs the server started (again), or None when a reload does it."""
    if server is None or handle is None:
        return "first start"
    if backend.status(handle) not in ("running", "starting", "restarting"):
        return "its server is not running"
    if port is not None and port != server.port:
        return f"moving from port {server.port} to {port}"
    if settings != server.settings:
        return "other server settings"
    files = [
        inspect_model_dir(ModelRepository().root / routing.name / str(v), sha)
        for v, sha in sorted(versions.items())
    ]
    if list(environment_of(files)) != list(handle.environment):
        return "these versions need other packages than the running server has"
    if not handle.environment and server.handle.get("environment") is None:
        return "the server predates versions side by side"
    return None


def _grpc_port(store: Store, name: str, server: Deployment | None) -> int:
    """The name's V2 gRPC port: the one its server had (stable like its HTTP port), else a
    free one."""
    earlier = (server.handle if server else {}).get("grpc_port") or store.last_grpc_port(name)
    if earlier and not port_in_use(int(earlier)):
        return int(earlier)
    return free_port()


def _reusable_port(store: Store, name: str) -> int:
    """The name's last port when it is free (its URL comes back), else a free one."""
    last = store.last_port(name)
    if last is not None and not port_in_use(last):
        return last
    return free_port()


def _reload(
    name: str,
    url: str,
    admin_token: str,
    routing: Routing,
    current: Routing | None,
    what: str,
    timeout: float,
    progress: Progress | None,
) -> None:
    """Hand the running server its new routing; on refusal, put the old file back."""
    emit(progress, "launch", f"loading into {name}'s server: {format_weights(routing.weights)}")
    write_routing(routing)
    try:
        AdminClient(url, admin_token, name=name).reload(timeout=timeout)
    except DeployError as exc:
        if current is not None:
            write_routing(current)
        Store().add_event(name, "failed", f"{what}: {exc}")
        serving = format_weights(current.weights) if current else "nothing"
        raise DeployError(
            f"{what} for {name} failed: {_format.first_line(exc)}; the server still serves"
            f" {serving}, untouched"
        ) from None


def _start(
    backend: Runtime,
    spec: LaunchSpec,
    routing: Routing,
    current: Routing | None,
    rows: list[Deployment],
    timeout: float,
    progress: Progress | None,
) -> tuple[RuntimeHandle, int]:
    """Start the name's server with ``routing``; on failure nothing is left running and the
    store says the name is stopped (its old server was stopped before).

    The launch is recorded (a ``starting`` row naming this process) before the server starts
    and gets the server's handle as soon as it exists, so a deployer killed halfway leaves a
    row that whoever comes next finds orphaned and cleans up (see :func:`clean_orphans`).
    """
    deadline = time.monotonic() + PORT_RELEASE_S
    while port_in_use(spec.port) and time.monotonic() < deadline:
        time.sleep(0.1)  # a server that just died may hold its port for a moment
    ensure_port_free(spec.port)
    store = Store()
    launcher = {"launcher": _launcher()}
    launch_id = store.add_deployment(
        name=spec.name,
        version=routing.stable,
        runtime=backend.name,
        state="starting",
        url=local_url(spec.port),
        port=spec.port,
        token=spec.token,
        handle=launcher,
        settings=spec.settings,
        owner=session_owner(),
    )
    write_routing(routing)
    handle = None
    try:
        emit(progress, "launch", f"starting {spec.name} on the {backend.name} runtime")
        handle = backend.start(spec)
        store.update_deployment(launch_id, handle={**handle.to_dict(), **launcher})
        backend.wait_ready(handle, timeout=timeout)
    except BaseException as exc:
        if handle is not None:
            backend.stop(handle, timeout=5)
        if current is not None:
            write_routing(current)
        store.update_deployment(launch_id, state="failed")
        if rows:
            store.retire_all(spec.name, "failed")
        store.add_event(spec.name, "failed", f"the server did not start: {exc}")
        if isinstance(exc, NbdeployError):
            raise
        raise DeployError(f"could not start {spec.name}'s server: {exc}") from exc
    return handle, launch_id


def _launcher() -> dict[str, Any]:
    """This process, as a starting row names it: pid and start time on this host."""
    pid = os.getpid()
    return {"pid": pid, "started": _procs.start_time(pid), "host": socket.gethostname()}


def clean_orphans(name: str | None = None) -> list[int]:
    """Stop servers whose deployer died before recording them, and mark their rows failed;
    return those rows' ids. A launch whose deployer still runs is left alone."""
    store = Store()
    cleaned = []
    for row in store.deployments(name=name, states=("starting",)):
        launcher = row.handle.get("launcher") or {}
        if launcher.get("host") == socket.gethostname() and launcher.get("pid"):
            if _procs.alive(int(launcher["pid"]), launcher.get("started")):
                continue
        elif launcher.get("host") not in (None, socket.gethostname()):
            continue  # another machine's launch (a shared home): not ours to judge
        if "ref" in row.handle:
            _stop_handle(row.runtime, RuntimeHandle.from_dict(row.handle), row.name)
        store.update_deployment(row.id, state="failed")
        store.add_event(
            row.name,
            "orphan",
            f"a launch of version {row.version} whose deployer died halfway was stopped",
        )
        cleaned.append(row.id)
    return cleaned


def _stop_handle(kind: str, handle: RuntimeHandle, name: str) -> None:
    try:
        get_runtime(kind).stop(handle)
    except DeployError as exc:
        Store().add_event(name, "stop-failed", str(exc))


def stop(record: Deployment) -> list[int]:
    """Stop the server of ``record``'s name and retire every version it held."""
    return undeploy(record.name)


def active() -> list[Deployment]:
    """Every running name, as the record of its stable version."""
    clean_orphans()
    names = sorted({row.name for row in Store().deployments()})
    return [record for name in names if (record := _stable_record(name)) is not None]


def current_record(name: str) -> Deployment:
    clean_orphans(name)
    record = _stable_record(name)
    if record is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    return record


def _stable_record(name: str) -> Deployment | None:
    store = Store()
    rows = store.deployments(name=name)
    if not rows:
        return None
    routing = _current_routing(name, rows, store.route(name))
    stable = routing.stable if routing else rows[0].version
    return next((row for row in rows if row.version == stable), rows[0])


def _running_names() -> list[str] | str:
    return sorted({row.name for row in Store().deployments()}) or "none"


def undeploy(name: str) -> list[int]:
    """Stop the name's server; return the versions it held."""
    store = Store()
    with name_lock(check_name(name)):
        clean_orphans(name)
        rows = store.deployments(name=name, states=("active", "starting"))
        if not rows:
            raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
        for handle in {json.dumps(row.handle, sort_keys=True) for row in rows if row.handle}:
            _stop_handle(rows[0].runtime, RuntimeHandle.from_dict(json.loads(handle)), name)
        store.retire_all(name)
        versions = sorted({row.version for row in rows})
        store.add_event(name, "stopped", f"versions {versions} stopped")
    _sync_monitoring(name)
    return versions


# ------------------------------------------------------------------------------- live numbers


def _admin(name: str, timeout: float = 2.0) -> tuple[Deployment, AdminClient, Routing] | None:
    store = Store()
    rows = store.deployments(name=name)
    route = store.route(name) if rows else None
    if not rows or route is None:
        return None
    return (
        rows[0],
        AdminClient(rows[0].url, route["admin_token"], timeout, name=name),
        Routing.from_json(route["routing"]),
    )


def sync(name: str) -> dict[str, Any] | None:
    """The server's live routing; when a guard sent traffic back to the stable version, the
    store learns it here (an event, the reason, the candidate unloaded). None: no answer."""
    found = _admin(name)
    if found is None:
        return None
    _, client, routing = found
    try:
        live = client.routing()
    except DeployError:
        return None
    tripped = live.get("tripped")
    if tripped and int(tripped.get("generation", -1)) == routing.generation:
        reason = f"v{tripped.get('version')} rolled back by a guard: {tripped.get('reason')}"
        guarded = int(tripped.get("version"))

        def plan(current: Routing | None) -> Routing:
            current = _serving(name, current)
            if current.generation != routing.generation:
                return current  # someone changed the routing since; their change stands
            return current.next(
                weights={current.stable: 100},
                shadow=tuple(v for v in current.shadow if v != guarded),
            )

        try:
            _change(name, plan, what=reason, event="guard", guard_reason=reason)
            live = client.routing()
        except DeployError:
            pass
    return live


def traffic(name: str) -> dict[int, int]:
    """``{version: percent}`` the server applies right now (after any guard), else the stored."""
    live = sync(check_name(name))
    if live is not None:
        return {int(v): int(w) for v, w in live["weights"].items()}
    found = _admin(name)
    if found is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    return dict(found[2].weights)


def version_views(name: str) -> tuple[list[VersionView], str | None]:
    """Every version the name's server holds with its share and live numbers, stable first,
    and the last guard trip's reason."""
    live = sync(name)
    found = _admin(name)
    if found is None:
        return [], None
    _, client, routing = found
    weights = {int(v): int(w) for v, w in (live or {}).get("weights", {}).items()} or dict(
        routing.weights
    )
    try:
        stats = client.stats()
    except DeployError:
        stats = {}
    numbers = stats.get("versions") or {}
    agreement = {int(pair["candidate"]): pair.get("agreement") for pair in stats.get("pairs") or []}
    views = []
    for version in sorted(routing.versions, key=lambda v: (v != routing.stable, -v)):
        live_numbers = numbers.get(str(version)) or {}
        views.append(
            VersionView(
                version=version,
                weight=weights.get(version, 0),
                role=routing.role(version),
                requests=live_numbers.get("requests"),
                errors=live_numbers.get("errors"),
                p50_ms=live_numbers.get("p50_ms"),
                p99_ms=live_numbers.get("p99_ms"),
                agreement=agreement.get(version),
            )
        )
    route = Store().route(name)
    return views, (route or {}).get("guard_reason")


def compare(
    name: str,
    X: Any = None,
    y: Any = None,
    *,
    versions: Sequence[int] | None = None,
    batch_size: int = 64,
) -> CompareReport:
    """Versions of ``name`` side by side: over the live (mirrored or split) traffic, or, with
    held-out ``X`` and ``y``, offline on every version the server holds (or ``versions``)."""
    from nbdeploy._tensors import as_feeds
    from nbdeploy.client import V2Client
    from nbdeploy.comparison import live_report, offline_report

    check_name(name)
    sync(name)
    found = _admin(name, timeout=10.0)
    if found is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    record, client, routing = found
    if X is None:
        if y is not None:
            raise InputError("compare(name, X, y) needs X with y; got y without X")
        return live_report(name, client.stats())
    if y is None:
        raise InputError("an offline compare needs the true answers: compare(name, X, y)")
    chosen = [_version_arg(v) for v in versions] if versions is not None else routing.versions
    missing = sorted(set(chosen) - set(routing.versions))
    if missing:
        raise InputError(f"{name} holds versions {routing.versions}; not {missing}")
    artifact = ModelRepository().get(name, routing.stable)
    signature = artifact.signature
    first = signature.outputs[0].name
    kind_of = ((artifact.metadata.get("outputs") or {}).get(first) or {}).get("kind")
    kind = "top1" if kind_of in ("label", "probabilities", "logits") else "max_abs"
    v2 = V2Client(record.url, token=record.token, timeout=60.0)

    def predict_version(version: int, rows: Any) -> tuple[np.ndarray, float]:
        feeds = as_feeds(signature, rows)
        started = time.perf_counter()
        result = v2.infer(name, feeds, version=version, outputs=[first])
        return result[first], time.perf_counter() - started

    try:
        return offline_report(
            name,
            predict_version,
            [(v, routing.role(v), routing.weights.get(v, 0)) for v in chosen],
            X,
            y,
            kind=kind,
            batch_size=batch_size,
            labels=artifact.labels,
        )
    finally:
        v2.close()


def stats(name: str, window: float = 60.0) -> StatsReport:
    """Request rate, errors, latency quantiles, batching and the split between versions over
    the last ``window`` seconds, from the counters the name's server samples every second."""
    from nbdeploy.telemetry import from_series

    if isinstance(window, bool) or not isinstance(window, int | float) or not 1 <= window <= 600:
        raise InputError(f"window must be a number of seconds from 1 to 600; got {window!r}")
    found = _admin(check_name(name))
    if found is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    return from_series(name, found[1].series(window))


def drift_flag(name: str) -> str | None:
    """``input[20] PSI 0.41`` when the stable version's worst feature crossed the drift
    threshold, else None (also when the server did not answer: a flag is never made up)."""
    try:
        found = drift(name)
    except NbdeployError:
        return None
    worst = found.worst
    if worst is None or worst.flag != "drift":
        return None
    return f"{worst.feature} PSI {worst.psi:.2f}"


def drift(name: str, version: int | None = None) -> DriftReport:
    """How far the inputs and outputs a version (the stable one by default) answered lately
    are from the reference recorded at deploy time, feature by feature, worst first."""
    from nbdeploy.drift_profile import report

    found = _admin(check_name(name))
    if found is None:
        raise DeployError(f"no active deployment named {name!r}; running: {_running_names()}")
    _, client, routing = found
    chosen = routing.stable if version is None else _version_arg(version)
    if chosen not in routing.versions:
        raise InputError(f"{name} holds versions {routing.versions}; not {chosen}")
    profile = ModelRepository().get(name, chosen).metadata.get("profile")
    if not profile:
        raise DeployError(
            f"{name} v{chosen} has no reference profile: it was deployed without data to"
            " profile; deploy it with sample= (and calibration= for a reliable reference)"
        )
    live = (client.drift().get("versions") or {}).get(str(chosen)) or {}
    return report(name, chosen, profile, live)
