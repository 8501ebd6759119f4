"""The one small interface every runtime implements, and the records it passes around.

A runtime knows how to run the inference server (``nbdeploy.serve``) for one model version and
how to find it again later; it knows nothing about the store, the notebook or the client.
Handles are plain data so the store can keep them in SQLite and re-attach after a restart.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from nbdeploy._errors import DeployError
from nbdeploy.artifact import sha256_file
from nbdeploy.vocabulary import Progress, ServerSettings, ServerStatus, emit

READY_PATH = "/v2/health/ready"
ONNX_FILE = "model.onnx"
PICKLE_FILE = "model.pkl"
METADATA_FILE = "nbdeploy.json"


@dataclass(frozen=True)
class ModelFiles:
    """What a runtime needs to know about a model version directory before running it."""

    directory: Path
    format: str
    """``onnx`` (``model.onnx``) or ``python`` (a cloudpickled callable, ``model.pkl``)."""
    requirements: tuple[str, ...] = ()
    """``name==version`` pins the serving environment needs beyond the server's packages."""
    python: str | None = None
    """The ``major.minor`` Python a Python model was pickled with."""

    @property
    def needs_environment(self) -> bool:
        """True when the server needs packages beyond its own (a Python model's)."""
        return self.format == "python" or bool(self.requirements)


def inspect_model_dir(model_dir: Path, sha256: str | None = None) -> ModelFiles:
    """The format and requirements of a model version directory; raise DeployError when it
    holds no model, or when a Python model's ``model.pkl`` no longer has the sha256 recorded at
    registration (``sha256``: the store's record), since loading it would run unchecked code.
    """
    directory = Path(model_dir)
    onnx, pickled = directory / ONNX_FILE, directory / PICKLE_FILE
    if not onnx.is_file() and not pickled.is_file():
        raise DeployError(
            f"expected a model version directory holding model.onnx (or a Python model's"
            f" model.pkl); got {directory}"
        )
    try:
        data = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, ValueError):
        data = {}
    metadata = data.get("metadata") if isinstance(data, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    requirements = tuple(str(r) for r in metadata.get("requirements") or ())
    if onnx.is_file():
        return ModelFiles(directory, "onnx", requirements)
    if sha256 is not None:
        actual = sha256_file(pickled)
        if actual != sha256:
            raise DeployError(
                f"refusing to run {pickled}: its sha256 {actual[:16]}... differs from the"
                f" {sha256[:16]}... recorded at registration; a Python model file is code, and"
                " this one changed after it was registered"
            )
    python = metadata.get("python")
    return ModelFiles(directory, "python", requirements, str(python) if python else None)


@dataclass
class LaunchSpec:
    """What to run: the one server of a name on one local port, holding the versions its
    routing file (``serving_dir/routing.json``) names, read from ``models_root/<name>/<v>/``.

    ``versions`` maps each version to its model file's sha256 as registered (a Python model
    whose file changed since is refused). ``admin_token`` guards the routes that reload the
    routing; ``token`` the inference routes (None: open).
    """

    name: str
    port: int
    token: str | None
    admin_token: str
    models_root: Path
    serving_dir: Path
    versions: dict[int, str]
    settings: ServerSettings = field(default_factory=ServerSettings)
    progress: Progress | None = None
    request_log_dir: Path | None = None
    """Where the server appends its sampled request log (with ``settings.log_requests``)."""
    grpc_port: int | None = None
    """Where the same server speaks V2 over gRPC (None: not at all)."""
    state_dir: Path | None = None
    """Where the server keeps a guard trip across its restarts (writable by it)."""

    def say(self, line: str) -> None:
        emit(self.progress, "launch", line)

    def model_files(self) -> list[ModelFiles]:
        """Format and requirements of every version, each Python model's file checked."""
        return [
            inspect_model_dir(self.models_root / self.name / str(version), sha256)
            for version, sha256 in sorted(self.versions.items())
        ]


def environment_of(files: list[ModelFiles]) -> tuple[str, ...]:
    """What a server holding these versions needs beyond its own packages: every version's
    requirements, and a marker when one is a Python model; a change of it needs a new server."""
    requirements = sorted({r for f in files for r in f.requirements})
    python = ["python-model"] if any(f.format == "python" for f in files) else []
    return (*python, *requirements)


@dataclass
class RuntimeHandle:
    """Where a launched server lives: ``ref`` is a container id or a pid, as text."""

    runtime: str
    ref: str
    name: str
    version: int
    port: int
    url: str
    log_path: str | None = None
    environment: list[str] = field(default_factory=list)
    """The server's :func:`environment_of`, to know when a new version needs a new server."""
    started: str | None = None
    """The process's start time (``/proc/<pid>/stat``), so a recycled pid is never signalled."""
    network: str | None = None
    """A container's network mode; surfaces show it, since ``host`` shares the host's."""
    grpc_port: int | None = None
    """The server's V2 gRPC port, None when it has none."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeHandle:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["version"] = int(values["version"])
        values["port"] = int(values["port"])
        values["ref"] = str(values["ref"])
        values["environment"] = list(values.get("environment") or [])
        return cls(**values)


def local_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something already listens on (or holds) ``127.0.0.1:port``.

    SO_REUSEADDR mirrors what the server does, so leftover TIME_WAIT connections do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def ensure_port_free(port: int) -> None:
    """Raise a readable error before launching when ``port`` is taken."""
    if not 0 < port < 65536:
        raise DeployError(f"port must be between 1 and 65535; got {port}")
    if port_in_use(port):
        raise DeployError(
            f"port {port} on 127.0.0.1 is already in use; pick another port or pass port=None "
            "to get a free one"
        )


# Local servers are asked directly: an HTTP_PROXY in the environment never sees the probes.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe_ready(url: str, timeout: float = 0.5) -> bool:
    """True when the server at ``url`` answers its readiness route with 200."""
    try:
        with _DIRECT.open(url + READY_PATH, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Runtime(ABC):
    """Start, stop, inspect and re-find inference servers of one kind."""

    name: ClassVar[str]
    unavailable_hint: ClassVar[str] = ""

    @classmethod
    def available(cls) -> bool:
        """Whether this runtime can start servers on this machine right now."""
        return True

    @abstractmethod
    def start(self, spec: LaunchSpec) -> RuntimeHandle:
        """Launch the server for ``spec`` and return at once; see :meth:`wait_ready`."""

    @abstractmethod
    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        """Stop the server (gracefully, then by force after ``timeout`` s) and clean up."""

    @abstractmethod
    def status(self, handle: RuntimeHandle) -> ServerStatus:
        """One of ``starting``, ``running``, ``exited``, ``restarting``, ``missing``."""

    @abstractmethod
    def logs(self, handle: RuntimeHandle, tail: int = 200) -> str:
        """The last ``tail`` lines the server wrote; empty when it is gone."""

    def address(self, handle: RuntimeHandle) -> str:
        return local_url(handle.port)

    def wait_ready(self, handle: RuntimeHandle, timeout: float = 120) -> None:
        """Block until the server answers ready; raise with its log tail if it dies or stalls."""
        deadline = time.monotonic() + timeout
        url = self.address(handle)
        while time.monotonic() < deadline:
            if probe_ready(url):
                return
            state = self.status(handle)
            if state in ("exited", "missing"):
                raise DeployError(
                    f"the {self.name} server for {handle.name} {state} before it "
                    f"was ready; last log lines:\n{_tail(self.logs(handle, tail=30))}"
                )
            time.sleep(0.1)
        raise DeployError(
            f"the {self.name} server for {handle.name} was not ready at {url} "
            f"after {timeout:.0f} s; last log lines:\n{_tail(self.logs(handle, tail=30))}"
        )


def _tail(text: str) -> str:
    return text.strip() or "(no output)"
