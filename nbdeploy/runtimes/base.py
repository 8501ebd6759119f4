"""The one small interface every runtime implements, and the records it passes around.

A runtime knows how to run the inference server (``nbdeploy.serve``) for one model version and
how to find it again later; it knows nothing about the store, the notebook or the client.
Handles are plain data so the store can keep them in SQLite and re-attach after a restart.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from nbdeploy._errors import DeployError

Status = Literal["starting", "running", "exited", "restarting", "missing"]
STATUSES: tuple[str, ...] = ("starting", "running", "exited", "restarting", "missing")

READY_PATH = "/v2/health/ready"


@dataclass
class LaunchSpec:
    """What to run: one model version directory (holding ``model.onnx``) on one local port."""

    name: str
    version: int
    model_dir: Path
    sha256: str
    port: int
    token: str | None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    batching: bool = True
    cpus: float | None = None
    memory: str | None = "1g"
    threads: int | None = None
    progress: Callable[[str], None] | None = None

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
        return args

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeHandle:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["version"] = int(values["version"])
        values["port"] = int(values["port"])
        values["ref"] = str(values["ref"])
        return cls(**values)


def local_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def probe_ready(url: str, timeout: float = 0.5) -> bool:
    """True when the server at ``url`` answers its readiness route with 200."""
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Runtime(ABC):
    """Start, stop, inspect and re-find inference servers of one kind."""

    name: str

    @abstractmethod
    def start(self, spec: LaunchSpec) -> RuntimeHandle:
        """Launch the server for ``spec`` and return at once; see :meth:`wait_ready`."""

    @abstractmethod
    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        """Stop the server (gracefully, then by force after ``timeout`` s) and clean up."""

    @abstractmethod
    def status(self, handle: RuntimeHandle) -> Status:
        """One of ``starting``, ``running``, ``exited``, ``restarting``, ``missing``."""

    @abstractmethod
    def logs(self, handle: RuntimeHandle, tail: int = 200) -> str:
        """The last ``tail`` lines the server wrote; empty when it is gone."""

    @abstractmethod
    def find(self, name: str) -> list[RuntimeHandle]:
        """Every server this runtime launched for deployment ``name``, running or not."""

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
                    f"the {self.name} server for {handle.name} v{handle.version} {state} before it "
                    f"was ready; last log lines:\n{_tail(self.logs(handle, tail=30))}"
                )
            time.sleep(0.1)
        raise DeployError(
            f"the {self.name} server for {handle.name} v{handle.version} was not ready at {url} "
            f"after {timeout:.0f} s; last log lines:\n{_tail(self.logs(handle, tail=30))}"
        )


def _tail(text: str) -> str:
    return text.strip() or "(no output)"
