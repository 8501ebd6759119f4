"""The embedded runtime: the very same server as a local subprocess, for machines without Docker.

Each launch gets a run directory ``NBDEPLOY_HOME/run/<name>-v<version>-<port>/`` holding a
one-model repository (a symlink to the version directory), the server's log and a small JSON
pidfile, so a restarted kernel can find the server again and never kills a recycled pid.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from nbdeploy import _procs, _settings
from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import (
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    ensure_port_free,
    local_url,
    probe_ready,
)
from nbdeploy.vocabulary import ServerStatus

PIDFILE = "handle.json"
LOGFILE = "server.log"


def run_root() -> Path:
    path = _settings.home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ProcessRuntime(Runtime):
    """Run ``python -m nbdeploy.serve`` with this interpreter, in its own session."""

    name = "process"

    def start(self, spec: LaunchSpec) -> RuntimeHandle:
        ensure_port_free(spec.port)
        model_dir = Path(spec.model_dir).resolve()
        if not (model_dir / "model.onnx").is_file():
            raise DeployError(
                f"expected a model version directory holding model.onnx; got {model_dir}"
            )
        run_dir = run_root() / f"{spec.name}-v{spec.version}-{spec.port}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        repository = run_dir / "models"
        (repository / spec.name).mkdir(parents=True)
        (repository / spec.name / str(spec.version)).symlink_to(model_dir, target_is_directory=True)
        log_path = run_dir / LOGFILE
        command = [
            sys.executable,
            "-m",
            "nbdeploy.serve",
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(spec.port),
            *spec.settings.server_args(),
        ]
        spec.say(f"starting {spec.name} v{spec.version} as a local process on port {spec.port}")
        pid, started = _procs.spawn(
            command, log_path=log_path, cwd=run_dir, env=_server_env(spec.token)
        )
        handle = RuntimeHandle(
            runtime=self.name,
            ref=str(pid),
            name=spec.name,
            version=spec.version,
            port=spec.port,
            url=local_url(spec.port),
            log_path=str(log_path),
        )
        record = {"handle": handle.to_dict(), "start_time": started}
        (run_dir / PIDFILE).write_text(json.dumps(record, indent=2))
        return handle

    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        pid = int(handle.ref)
        if _procs.alive(pid, _recorded_start_time(handle)):
            _procs.terminate(pid, timeout=timeout)
        run_dir = _run_dir(handle)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def status(self, handle: RuntimeHandle) -> ServerStatus:
        run_dir = _run_dir(handle)
        if run_dir is None or not (run_dir / PIDFILE).is_file():
            return "missing"
        if not _procs.alive(int(handle.ref), _recorded_start_time(handle)):
            return "exited"
        return "running" if probe_ready(self.address(handle)) else "starting"

    def logs(self, handle: RuntimeHandle, tail: int = 200) -> str:
        if not handle.log_path or not Path(handle.log_path).is_file():
            return ""
        with open(handle.log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 1_000_000))
            lines = log.read().decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-tail:]) if tail > 0 else ""


def _server_env(token: str | None) -> dict[str, str]:
    """This environment, plus the token and an import path that finds this nbdeploy."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["NBDEPLOY_TOKEN"] = token or ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_dir(handle: RuntimeHandle) -> Path | None:
    return Path(handle.log_path).parent if handle.log_path else None


def _recorded_start_time(handle: RuntimeHandle) -> str | None:
    run_dir = _run_dir(handle)
    try:
        record: dict[str, Any] = json.loads((run_dir / PIDFILE).read_text())  # type: ignore[operator]
    except (OSError, ValueError, TypeError):
        return None
    return record.get("start_time")


RUNTIME = ProcessRuntime
