"""The words every layer shares: choices a user makes, the name rule, and the records that
cross layers (a deployment, its server settings, what surfaces show of it, progress events).

Surfaces (the magic, the panel, the CLI, the REST routes, the labextension) take their choices
from here, so adding a quantize mode or a runtime kind is one edit here plus its
implementation (``nbdeploy/optimize.py`` for a mode, ``nbdeploy/runtimes/<kind>.py`` for a
runtime). This module imports nothing else from nbdeploy but the error types.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from nbdeploy._errors import InputError

# --------------------------------------------------------------------------------- choices

QuantizeMode = Literal["int8", "int8-dynamic", "int8-static", "fp16"]
"""A variant ``nbd.quantize`` can make; ``int8`` picks static QDQ for conv models."""
QUANTIZE_MODES: tuple[QuantizeMode, ...] = get_args(QuantizeMode)

QuantizeChoice = Literal["none", "auto", "int8", "int8-dynamic", "int8-static", "fp16"]
"""What ``deploy(quantize=...)`` accepts: no variant, the fastest accurate one, or one mode."""
QUANTIZE_CHOICES: tuple[QuantizeChoice, ...] = ("none", "auto", *QUANTIZE_MODES)
AUTO_CANDIDATES: tuple[QuantizeMode, ...] = ("int8", "fp16")
"""The variants ``quantize="auto"`` weighs against fp32 (and the default of ``nbd.quantize``)."""

RuntimeKind = Literal["docker", "process"]
"""Where an endpoint runs; each kind is implemented by ``nbdeploy/runtimes/<kind>.py``."""
RUNTIME_KINDS: tuple[RuntimeKind, ...] = get_args(RuntimeKind)
RuntimeChoice = Literal["auto", "docker", "process"]
RUNTIME_CHOICES: tuple[str, ...] = ("auto", *RUNTIME_KINDS)

Fallback = Literal["python"]
"""What ``deploy(fallback=...)`` does when ONNX export fails: serve the model object itself."""
FALLBACKS: tuple[Fallback, ...] = get_args(Fallback)

ModelFormat = Literal["onnx", "python"]
"""How a served version runs: an ONNX graph in onnxruntime, or a pickled Python callable."""
MODEL_FORMATS: tuple[ModelFormat, ...] = get_args(ModelFormat)

DeploymentState = Literal["starting", "active", "retired", "failed"]
"""The store's word for a deployment: launched but not ready, serving, stopped, never served."""
DEPLOYMENT_STATES: tuple[DeploymentState, ...] = get_args(DeploymentState)

ServerStatus = Literal["starting", "running", "exited", "restarting", "missing"]
"""What the runtime says of a deployment's server, asked live."""
SERVER_STATUSES: tuple[ServerStatus, ...] = get_args(ServerStatus)


TrafficRole = Literal["stable", "canary", "shadow", "idle"]
"""What a version does inside its name's server: takes traffic back when a guard trips (stable),
takes a share of it (canary), gets a mirrored copy of every request (shadow), or waits (idle)."""
TRAFFIC_ROLES: tuple[TrafficRole, ...] = get_args(TrafficRole)


def check_choice(value: Any, choices: tuple[str, ...], what: str) -> Any:
    """``value`` if it is one of ``choices``, else an InputError listing them."""
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


# ------------------------------------------------------------------------------- the name

NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
NAME_HINT = (
    "use 1-63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit"
    " (e.g. 'digits-cnn')"
)


def check_name(name: Any) -> str:
    """A model or deployment name: it becomes a directory, an image tag, a V2 model name and a
    URL path segment, so the whole of it must match one safe rule."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise InputError(f"invalid model name {name!r}: {NAME_HINT}")
    return name


def safe_name(text: str, fallback: str = "model") -> str:
    """A valid name made from free text (a file stem, a class name)."""
    cleaned = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:63].strip("-._")
    return cleaned or fallback


# -------------------------------------------------------------------------------- records

PROXY_PREFIX = "nbdeploy/proxy"
"""Where the Jupyter server extension proxies a deployment, relative to Jupyter's base URL."""


@dataclass(frozen=True)
class ServerSettings:
    """How a deployment's server is tuned; kept across redeploys and rollbacks of a name."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    batching: bool = True
    cpus: float | None = None
    memory: str | None = "1g"
    threads: int | None = None
    memory_budget_bytes: int | None = None
    """What decoded requests may hold at once; default: 40% of the memory the server is given."""
    max_concurrency: int | None = None
    """Inference requests in flight before the server answers 503; default: the server's."""
    request_timeout_s: float | None = None
    """A request not answered in time gets a 504; default: the server's."""
    log_requests: float | None = None
    """The fraction of answered requests the server logs with their answers (None: off)."""

    def server_args(self) -> list[str]:
        """Tuning flags for ``python -m nbdeploy.serve``, shared by every runtime."""
        args = [
            "--max-batch-size",
            str(self.max_batch_size),
            "--max-queue-delay-ms",
            str(self.max_queue_delay_ms),
        ]
        if not self.batching:
            args.append("--no-batching")
        threads = self.threads or (max(1, int(self.cpus)) if self.cpus else None)
        if threads:
            args += ["--threads", str(threads)]
        for flag, value in (
            ("--memory-budget-bytes", self.memory_budget_bytes),
            ("--max-concurrency", self.max_concurrency),
            ("--request-timeout-s", self.request_timeout_s),
            ("--log-requests", self.log_requests),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServerSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class Guards:
    """Limits a canary carries; the server returns traffic to the stable version by itself
    when the canary's live numbers cross one (None: not checked). ``min_requests`` is how many
    requests (or compared rows) the numbers need before they count."""

    max_error_rate: float | None = None
    min_agreement: float | None = None
    max_p99_ms: float | None = None
    min_requests: int = 20

    def __post_init__(self) -> None:
        for key, low, high in (
            ("max_error_rate", 0.0, 1.0),
            ("min_agreement", 0.0, 1.0),
            ("max_p99_ms", 0.0, None),
        ):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"guard {key} must be a number; got {value!r}")
            if not (value >= low and (high is None or value <= high)):
                span = f"between {low:g} and {high:g}" if high is not None else "0 or more"
                raise InputError(f"guard {key} must be {span}; got {value!r}")
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int):
            raise InputError(f"guard min_requests must be an integer; got {self.min_requests!r}")
        if self.min_requests < 1:
            raise InputError(f"guard min_requests must be at least 1; got {self.min_requests}")

    @property
    def empty(self) -> bool:
        return (
            self.max_error_rate is None and self.min_agreement is None and self.max_p99_ms is None
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Guards:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    @classmethod
    def parse(cls, value: Any) -> Guards | None:
        """``Guards``, a mapping of its fields, or None; anything else is an InputError."""
        if value is None or isinstance(value, Guards):
            return value
        if not isinstance(value, dict):
            raise InputError(f"guards must be a dict of limits or nbd.Guards; got {value!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise InputError(
                f"unknown guard {', '.join(map(str, unknown))}: use {', '.join(known)}"
            )
        return cls(**value)


@dataclass(frozen=True)
class VersionView:
    """One version inside a name's server, as surfaces show it: its share of unversioned
    traffic and its live numbers from the server's window (None when the server did not say)."""

    version: int
    weight: int
    role: TrafficRole
    requests: int | None = None
    errors: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    agreement: float | None = None
    """Share of compared rows on which it answered like the stable version."""


@dataclass(frozen=True)
class Deployment:
    """One launch of one version of a name, as the store keeps it.

    ``handle`` is the runtime's own plain data (container id or pid, log path); ``token`` is
    the bearer token the server checks, None when it was deployed without auth.
    """

    id: int
    name: str
    version: int
    runtime: RuntimeKind
    state: DeploymentState
    url: str
    port: int
    token: str | None = None
    handle: dict[str, Any] = field(default_factory=dict)
    settings: ServerSettings = field(default_factory=ServerSettings)
    owner: str = ""
    """Who deployed it (see :func:`session_owner`): a kernel or process on a host."""
    created_at: str = ""
    updated_at: str = ""

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"


LatencySource = Literal["endpoint", "in-process"]
"""Where a deployment's listed latency was measured: over HTTP on the endpoint, or in-process."""
LATENCY_SOURCES: tuple[LatencySource, ...] = get_args(LatencySource)


@dataclass(frozen=True)
class DeploymentView:
    """What every surface shows of a deployment: ``nbdeploy ls --json``, the magic's table, the
    REST list and the labextension's ``IDeployment`` (a test keeps them field for field)."""

    name: str
    version: int
    runtime: str
    format: str
    state: str
    status: str
    owner: str
    url: str
    infer_url: str
    proxy_path: str
    created_at: str
    variant: str | None
    p50_ms: float | None
    p99_ms: float | None
    latency_source: LatencySource | None
    """Where p50/p99 come from: ``endpoint`` (an HTTP benchmark of this deployment, one client,
    batch 1 preferred), ``in-process`` (the artifact's onnxruntime benchmark, no HTTP), or None
    when nothing was measured (surfaces then show no figure, never 0)."""
    demo_url: str | None
    versions: list[VersionView] = field(default_factory=list)
    """Every version the name's server holds, stable first, with its share of traffic."""
    guard: str | None = None
    """Why a guard sent traffic back to the stable version, since the last deploy or promote."""
    network: str | None = None
    """A container's network mode (``host`` or ``bridge``), None for a local process."""
    drift: str | None = None
    """When the stable version's live inputs or outputs drifted from its reference: the worst
    feature and its score (``input[20] PSI 0.41``); None when nothing crossed the threshold."""

    @property
    def runtime_text(self) -> str:
        """``docker (host network)``: the runtime, and a container's network, as surfaces say it."""
        return runtime_text(self.runtime, self.network)

    @property
    def traffic(self) -> dict[int, int]:
        return {v.version: v.weight for v in self.versions}

    @property
    def made_elsewhere(self) -> bool:
        """Deployed by another kernel or process than this one (see :func:`made_elsewhere`)."""
        return made_elsewhere(self.owner)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session_owner() -> str:
    """This session's name for the deployments it makes: the Jupyter kernel's id when the
    process is a kernel (its connection file names it), else the process; with the host."""
    import os
    import socket
    import sys

    kernel = next(
        (
            arg.rsplit("kernel-", 1)[1].removesuffix(".json")
            for arg in sys.argv
            if "kernel-" in arg and arg.endswith(".json")
        ),
        None,
    )
    who = f"kernel {kernel}" if kernel else f"process {os.getpid()}"
    return f"{who} on {socket.gethostname()}"


def made_elsewhere(owner: str) -> bool:
    """True for a deployment another kernel or process made, which surfaces ask about before
    stopping or replacing it; an unknown owner (older records) counts as this session's."""
    return bool(owner) and owner != session_owner()


# ------------------------------------------------------------------------------- progress

Stage = Literal[
    "export", "quantize", "benchmark", "register", "image", "launch", "ready", "switch", "demo"
]
STAGE_FRACTIONS: dict[str, float] = {
    "export": 0.15,
    "quantize": 0.35,
    "benchmark": 0.5,
    "register": 0.6,
    "image": 0.7,
    "launch": 0.8,
    "ready": 0.95,
    "switch": 0.97,
    "demo": 0.99,
}
"""How far along a deploy is when it reaches a stage, for progress bars."""


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work, emitted by the core and rendered by each surface.

    ``detail`` marks raw tool output (pip, docker build) that belongs in a log view rather
    than among the stages.
    """

    stage: Stage
    message: str
    detail: bool = False

    @property
    def fraction(self) -> float:
        return STAGE_FRACTIONS.get(self.stage, 0.0)

    def __str__(self) -> str:
        return self.message if self.detail else f"{self.stage}: {self.message}"


Progress = Callable[[ProgressEvent], None]


def emit(progress: Progress | None, stage: Stage, message: str, *, detail: bool = False) -> None:
    """Report one step to ``progress`` when the caller asked for progress."""
    if progress is not None:
        progress(ProgressEvent(stage, message, detail))


def runtime_text(runtime: str, network: str | None) -> str:
    """``docker (host network)``: a runtime, and a container's network, as surfaces say it."""
    return f"{runtime} ({network} network)" if network else runtime
