"""The embedded runtime: the very same server as a local subprocess, for machines without Docker.

Each launch gets a run directory ``NBDEPLOY_HOME/run/<name>-v<version>-<port>/`` holding a
one-model repository (a symlink to the version directory), the server's log and a small JSON
pidfile, so a restarted kernel can find the server again and never kills a recycled pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nbdeploy import _settings
from nbdeploy._errors import DeployError
from nbdeploy.runtimes import ensure_port_free
from nbdeploy.runtimes.base import (
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    Status,
    local_url,
    probe_ready,
)

PIDFILE = "handle.json"
LOGFILE = "server.log"

# Children started by this interpreter, so their exit status is collected (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


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
            *spec.server_args(),
        ]
        spec.say(f"starting {spec.name} v{spec.version} as a local process on port {spec.port}")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                env=_server_env(spec.token),
                start_new_session=True,
            )
        _children[proc.pid] = proc
        handle = RuntimeHandle(
            runtime=self.name,
            ref=str(proc.pid),
            name=spec.name,
            version=spec.version,
            port=spec.port,
            url=local_url(spec.port),
            log_path=str(log_path),
        )
        record = {"handle": handle.to_dict(), "start_time": _start_time(proc.pid)}
        (run_dir / PIDFILE).write_text(json.dumps(record, indent=2))
        return handle

    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        pid = int(handle.ref)
        if _alive(pid, _recorded_start_time(handle)):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid, None):
                time.sleep(0.05)
            if _alive(pid, None):
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _alive(pid, None):
                    if time.monotonic() > deadline:
                        raise DeployError(f"server process {pid} did not die after SIGKILL")
                    time.sleep(0.05)
        _children.pop(pid, None)
        run_dir = _run_dir(handle)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def status(self, handle: RuntimeHandle) -> Status:
        run_dir = _run_dir(handle)
        if run_dir is None or not (run_dir / PIDFILE).is_file():
            return "missing"
        if not _alive(int(handle.ref), _recorded_start_time(handle)):
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

    def find(self, name: str) -> list[RuntimeHandle]:
        handles = []
        for pidfile in sorted(run_root().glob(f"*/{PIDFILE}")):
            try:
                record = json.loads(pidfile.read_text())
                handle = RuntimeHandle.from_dict(record["handle"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if handle.name == name:
                handles.append(handle)
        return handles


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


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, start_time: str | None) -> bool:
    """True when ``pid`` runs and is not a zombie (reaping our own), and is the same process."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc").is_dir()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == start_time


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the server's whole session (it leads its own), falling back to the pid alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
