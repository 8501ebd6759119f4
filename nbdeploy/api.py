"""The public functions every surface (magic, panel, CLI, REST) calls.

A facade: each function states its whole signature and delegates to one core module; nothing
below it imports this module. Deployments come back as :class:`Endpoint` handles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.artifact import ModelArtifact
from nbdeploy.endpoint import Endpoint
from nbdeploy.request_log import check_fraction
from nbdeploy.vocabulary import (
    AUTO_CANDIDATES,
    DeploymentView,
    Fallback,
    Guards,
    Progress,
    QuantizeChoice,
    QuantizeMode,
    RuntimeChoice,
    ServerSettings,
)

if TYPE_CHECKING:
    from nbdeploy.bench import BenchmarkReport
    from nbdeploy.comparison import CompareReport
    from nbdeploy.demo import DemoServer
    from nbdeploy.drift_profile import DriftReport
    from nbdeploy.monitoring.prometheus import MonitoringStatus
    from nbdeploy.retention import PruneReport
    from nbdeploy.telemetry import StatsReport


def export(
    model: Any,
    sample: Any,
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int | None = None,
    tokenizer: Any = None,
) -> ModelArtifact:
    """Export a torch / Keras / TensorFlow / scikit-learn / XGBoost / LightGBM / transformers /
    ONNX model to ONNX, checked on ``sample``.

    The returned artifact records its signature and its parity with the original; an export
    beyond ``atol``/``rtol`` raises :class:`ParityError` showing the numbers. ``tokenizer`` (a
    fast Hugging Face tokenizer) makes a text model's artifact take raw strings.
    """
    from nbdeploy.exporters import export_model

    return export_model(
        model,
        sample,
        name=name,
        labels=labels,
        atol=atol,
        rtol=rtol,
        opset=opset,
        tokenizer=tokenizer,
    )


def quantize(
    artifact: ModelArtifact | str | Path,
    modes: Iterable[QuantizeMode] | QuantizeMode = AUTO_CANDIDATES,
    *,
    calibration: Any = None,
    labels: Any = None,
) -> list[ModelArtifact]:
    """Make quantized variants of an fp32 artifact, each with size, parity and accuracy delta."""
    from nbdeploy.exporters import as_artifact
    from nbdeploy.optimize import quantize_variants

    return quantize_variants(as_artifact(artifact), modes, calibration=calibration, labels=labels)


def benchmark(
    targets: Any,
    sample: Any = None,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    concurrency: Sequence[int] = (1, 4, 16),
    time_budget_s: float = 2.0,
    warmup: int = 5,
    min_runs: int = 20,
    threads: int | None = None,
    baseline: bool = True,
    payloads: Sequence[str] | None = None,
    duration_s: float = 3.0,
) -> BenchmarkReport:
    """Measure latency and throughput on ``sample``: in-process for models and artifacts,
    over HTTP (a closed-loop sweep over ``concurrency``, JSON and binary) for Endpoints.

    ``targets`` may mix both; the rows land in one BenchmarkReport. Without a sample, ONNX
    models get random inputs shaped after their signature (framework models need one).
    ``time_budget_s``, ``min_runs``, ``threads`` and ``baseline`` shape the in-process runs;
    ``payloads`` and ``duration_s`` the HTTP sweep; ``warmup`` calls go untimed in both.
    """
    from nbdeploy.bench import benchmark as run_in_process
    from nbdeploy.bench_http import PAYLOADS, benchmark_endpoint

    items = list(targets) if isinstance(targets, list | tuple) else [targets]
    endpoints = [t for t in items if isinstance(t, Endpoint)]
    others = [t for t in items if not isinstance(t, Endpoint)]
    report = None
    if others or not endpoints:
        report = run_in_process(
            others,
            sample,
            batch_sizes=batch_sizes,
            time_budget_s=time_budget_s,
            warmup=warmup,
            min_runs=min_runs,
            threads=threads,
            baseline=baseline,
        )
    for endpoint in endpoints:
        http = benchmark_endpoint(
            endpoint,
            sample,
            concurrency=concurrency,
            batch_sizes=batch_sizes,
            payloads=payloads or PAYLOADS,
            duration_s=duration_s,
            warmup=warmup,
        )
        _save_endpoint_benchmark(endpoint, http)
        report = http if report is None else report.merge(http)
    return report


def _save_endpoint_benchmark(endpoint: Endpoint, report: BenchmarkReport) -> None:
    """Keep an endpoint's HTTP figures with its deployment, so every surface lists them (and
    they survive a kernel restart)."""
    from nbdeploy.store import Store

    if not any(r.ok and r.p50_ms is not None for r in report.results):
        return
    Store().add_endpoint_benchmark(
        deployment_id=endpoint.deployment_id,
        name=endpoint.name,
        version=endpoint.version,
        report=report.to_dict(),
    )


def register(artifact: ModelArtifact | str | Path, *, name: str | None = None) -> ModelArtifact:
    """Copy an artifact into the model repository as a new immutable version."""
    from nbdeploy.exporters import as_artifact
    from nbdeploy.repository import ModelRepository

    return ModelRepository().register(as_artifact(artifact), name=name)


def model(name: str, version: int | None = None) -> ModelArtifact:
    """A registered version of ``name`` (the newest by default), with its ``nbdeploy.json``."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().get(name, version)


def models(name: str | None = None) -> list[dict[str, Any]]:
    """Every registered model version (of ``name``, or of all), newest first, as plain dicts."""
    from nbdeploy.repository import ModelRepository

    return ModelRepository().list_versions(name)


def deploy(
    model: Any,
    sample: Any = None,
    *,
    name: str | None = None,
    quantize: QuantizeChoice | None = None,
    runtime: RuntimeChoice = "auto",
    labels: Sequence[str] | None = None,
    port: int | None = None,
    auth: bool = True,
    calibration: Any = None,
    tokenizer: Any = None,
    fallback: Fallback | None = None,
    requirements: Sequence[str] | None = None,
    batch_safe: bool = False,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    batching: bool = True,
    cpus: float | None = None,
    memory: str | None = "1g",
    memory_budget_bytes: int | None = None,
    max_concurrency: int | None = None,
    request_timeout_s: float | None = None,
    log_requests: float | None = None,
    canary: int | None = None,
    shadow: bool = False,
    guards: Guards | Mapping[str, Any] | None = None,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Export/quantize as asked, register a version and serve it as a local V2 endpoint.

    ``model`` is a framework model (with ``sample``), a ModelArtifact, an ``.onnx`` path, or a
    Python callable (a function, or an object with ``predict`` / ``predict_proba``), which is
    served as a Python model with its ``requirements`` (detected and pinned when None);
    ``batch_safe`` lets the server merge concurrent requests into one call of it.
    ``fallback="python"`` serves a framework model that way when its ONNX export fails.
    ``tokenizer`` (a fast Hugging Face tokenizer) makes a text model take raw strings.
    Each name has one server on one URL for its whole life. Deploying an existing name loads
    the new version next to the serving one and moves all traffic to it once it is warm; with
    ``canary=P`` it answers P% of requests, with ``shadow=True`` it gets a mirrored copy of
    every request (clients still get the stable version's answers). ``guards``
    (``max_error_rate``, ``min_agreement``, ``max_p99_ms``) send a canary's traffic back to the
    stable version by itself when its live numbers cross one. ``max_batch_size``, ``max_queue_delay_ms``, ``batching``, ``cpus`` and
    ``memory`` tune the server; ``memory_budget_bytes`` (what decoded requests may hold at
    once, default 40% of ``memory``), ``max_concurrency`` (503 beyond) and
    ``request_timeout_s`` (504 beyond) bound it; ``log_requests=0.01``
    keeps 1% of the requests with their answers (``nbd.requests(name)`` reads them back); ``progress`` receives a ProgressEvent per step.
    """
    from nbdeploy import deployment

    settings = ServerSettings(
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        batching=batching,
        cpus=cpus,
        memory=memory,
        memory_budget_bytes=memory_budget_bytes,
        max_concurrency=max_concurrency,
        request_timeout_s=request_timeout_s,
        log_requests=check_fraction(log_requests),
    )
    record = deployment.deploy(
        model,
        sample=sample,
        name=name,
        quantize=quantize,
        runtime=runtime,
        labels=labels,
        port=port,
        auth=auth,
        calibration=calibration,
        tokenizer=tokenizer,
        fallback=fallback,
        requirements=requirements,
        batch_safe=batch_safe,
        settings=settings,
        canary=canary,
        shadow=shadow,
        guards=guards,
        timeout=timeout,
        progress=progress,
    )
    return Endpoint(record)


if TYPE_CHECKING:
    from nbdeploy.manifests import ManifestKind, Manifests
    from nbdeploy.shipping import PushResult


def push(
    name: str, *, registry: str, version: int | None = None, progress: Progress | None = None
) -> PushResult:
    """Build (or reuse) an image baking ``name`` v``version`` (newest by default) in, with the
    name's server settings as its default arguments and no token, tag it
    ``REGISTRY/nbdeploy-NAME:VERSION-SHA``, push it with the Docker SDK (credentials from the
    user's Docker config) and record the reference and digest in the store."""
    from nbdeploy import shipping

    return shipping.push(name, registry=registry, version=version, progress=progress)


def kubernetes(
    name: str,
    kind: ManifestKind = "deployment",
    *,
    version: int | None = None,
    namespace: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    cpu_target: int = 70,
    output_dir: str | Path | None = None,
) -> Manifests:
    """Manifests for the image ``push`` recorded: ``kind="deployment"`` (Deployment, Service,
    HorizontalPodAutoscaler, PodDisruptionBudget) or ``kind="kserve"`` (an InferenceService);
    the token comes from the Secret ``nbdeploy-NAME-token``. ``.yaml()`` renders them,
    ``.kubectl()`` lists the commands; written to ``output_dir`` when given."""
    from nbdeploy import manifests

    return manifests.kubernetes(
        name,
        kind,
        version=version,
        namespace=namespace,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
        output_dir=output_dir,
    )


def deployments() -> list[Endpoint]:
    """Every active deployment, one Endpoint per name."""
    from nbdeploy import deployment

    return [Endpoint(record) for record in deployment.active()]


def deployment_views() -> list[DeploymentView]:
    """What every surface lists: each active deployment with its live status and latency."""
    return [endpoint.view() for endpoint in deployments()]


def get(name: str) -> Endpoint:
    """The active deployment called ``name``; works again after a kernel restart."""
    from nbdeploy import deployment

    return Endpoint(deployment.current_record(name))


def undeploy(name: str) -> list[int]:
    """Stop the deployment called ``name`` (its server and its demo page); returns the
    versions it held."""
    from nbdeploy import deployment
    from nbdeploy.demo import stop_demo as stop_demo_server

    stopped = deployment.undeploy(name)
    stop_demo_server(name)
    return stopped


def promote(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Give the newest canary or shadow of ``name`` (or ``version``) all traffic."""
    from nbdeploy import deployment

    return Endpoint(deployment.promote(name, version, timeout=timeout, progress=progress))


def set_traffic(
    name: str,
    weights: Mapping[int, int],
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Split ``name``'s traffic as ``{version: percent}`` (whole percents adding up to 100)."""
    from nbdeploy import deployment

    return Endpoint(deployment.set_traffic(name, weights, timeout=timeout, progress=progress))


def rollback(
    name: str,
    version: int | None = None,
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> Endpoint:
    """Give the stable version all traffic back from a canary or shadow; without one, serve
    an earlier version (the previous one by default). The URL stays the same."""
    from nbdeploy import deployment

    return Endpoint(deployment.rollback(name, version, timeout=timeout, progress=progress))


def stop_version(name: str, version: int) -> Endpoint:
    """Unload one version of ``name`` that is not its stable one."""
    from nbdeploy import deployment

    return Endpoint(deployment.stop_version(name, version))


def traffic(name: str) -> dict[int, int]:
    """``{version: percent}`` of ``name``'s unversioned traffic, as its server applies it."""
    from nbdeploy import deployment

    return deployment.traffic(name)


def compare(
    name: str,
    X: Any = None,
    y: Any = None,
    *,
    versions: Sequence[int] | None = None,
    batch_size: int = 64,
) -> CompareReport:
    """The versions of ``name`` side by side: agreement, latency and errors over the live
    traffic, or with ``X`` and ``y`` an offline A/B with accuracy (or rmse) per version."""
    from nbdeploy import deployment

    return deployment.compare(name, X, y, versions=versions, batch_size=batch_size)


def stats(name: str, window: float = 60.0) -> StatsReport:
    """``name``'s request rate, error rate, latency p50/p95/p99, batch size, queue time and
    per-version split over the last ``window`` seconds (a StatsReport: table, plot, to_dict)."""
    from nbdeploy import deployment

    return deployment.stats(name, window)


def drift(name: str, version: int | None = None) -> DriftReport:
    """Per feature of ``name``'s inputs and outputs, how far its live traffic is from the data
    it was deployed with (population stability index), worst first (a DriftReport)."""
    from nbdeploy import deployment

    return deployment.drift(name, version)


def requests(name: str, version: int | None = None, limit: int | None = None) -> Any:
    """The requests ``name`` logged (deployed with ``log_requests=``) as a DataFrame: one row
    per input row with its time, the version that answered, the inputs and the outputs."""
    from nbdeploy import request_log

    return request_log.load(name, version, limit)


def monitoring_up(port: int | None = None) -> MonitoringStatus:
    """Start a Prometheus on 127.0.0.1 scraping every deployment (or report the running one)."""
    from nbdeploy.monitoring import prometheus, targets

    targets.sync()
    return prometheus.up(port)


def monitoring_down() -> bool:
    """Stop the Prometheus ``monitoring_up`` started; False when none ran."""
    from nbdeploy.monitoring import prometheus

    return prometheus.down()


def monitoring_status() -> MonitoringStatus:
    """Whether Prometheus runs, where, and the health of each deployment's target."""
    from nbdeploy.monitoring import prometheus

    return prometheus.status()


def monitoring_grafana() -> str:
    """How to point a Grafana at the dashboard and data source files nbdeploy writes."""
    from nbdeploy.monitoring import prometheus

    return prometheus.grafana_instructions()


def remove(name: str, version: int | None = None, *, force: bool = False) -> list[int]:
    """Delete registered versions of ``name`` (one, or all) with their files and images;
    serving versions are refused unless ``force`` (which stops the deployment first)."""
    from nbdeploy import retention

    return retention.remove(name, version, force=force)


def prune(*, keep: int = 2, dry_run: bool = False) -> PruneReport:
    """Delete versions that serve nothing beyond the ``keep`` newest of each name, images no
    deployment uses and demo files of stopped names."""
    from nbdeploy import retention

    return retention.prune(keep=keep, dry_run=dry_run)


def framework_of(model: Any) -> str | None:
    """The framework ``model`` belongs to (``torch``, ``sklearn``, ``onnx``, ...), or None
    when nbdeploy cannot export it; recognised without importing any framework."""
    from nbdeploy._errors import ExportError
    from nbdeploy.exporters import framework_of as detect

    try:
        return detect(model)
    except ExportError:
        return None


def demo(name: str, *, port: int | None = None, open_browser: bool = False) -> DemoServer:
    """Start (or reuse) the Voila demo page of deployment ``name``."""
    from nbdeploy.demo import launch_demo

    return launch_demo(name, port=port, open_browser=open_browser)


def stop_demo(name: str) -> bool:
    """Stop the demo server of ``name``; True if one was running."""
    from nbdeploy.demo import stop_demo as stop

    return stop(name)


def demo_url(name: str, *, jupyter_root: str | None = None) -> str | None:
    """Where the demo of ``name`` can be opened, or None when there is none.

    With ``jupyter_root`` (the root dir of a Jupyter server running Voila's extension) and the
    demo notebook under it, a path relative to Jupyter's base URL, which works for remote
    users too; otherwise the URL of a running demo server on 127.0.0.1.
    """
    from nbdeploy.demo import demo_url as find

    return find(name, jupyter_root)


def links(name: str) -> dict[str, str | None]:
    """Where to open deployment ``name``: ``endpoint`` and ``demo`` go through the Jupyter
    server this kernel runs under when its nbdeploy extension is loaded (paths under its base
    URL), else straight to 127.0.0.1; ``endpoint_direct`` / ``demo_direct`` are the latter.
    ``demo`` and ``demo_direct`` are None while there is no demo to open."""
    from nbdeploy.demo import links as find

    return find(name)


def record_jupyter_server(*, base_url: str, root_dir: str, voila: bool) -> Path:
    """Note where the Jupyter server of this process is (its nbdeploy extension calls this)."""
    from nbdeploy.demo import record_jupyter_server as record

    return record(base_url=base_url, root_dir=root_dir, voila=voila)


def forget_jupyter_server() -> None:
    """Remove this process's Jupyter server note (on the server's shutdown)."""
    from nbdeploy.demo import forget_jupyter_server as forget

    forget()


def select_variant(
    fp32: ModelArtifact, variants: list[ModelArtifact], report: BenchmarkReport
) -> ModelArtifact:
    """The variant ``quantize="auto"`` would serve: the fastest at batch 1 whose top-1
    agreement with fp32 is at least 99% (fp32 itself when none is)."""
    from nbdeploy.optimize import select_auto

    return select_auto(fp32, variants, report.latency_ms(batch_size=1))
