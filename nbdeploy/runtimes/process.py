"""The embedded runtime: the very same server as a local subprocess, for machines without Docker.

Each launch gets a run directory ``NBDEPLOY_HOME/run/<name>-<port>-<ns>/`` holding the server's
log and a small JSON pidfile (pid and start time, also kept in the handle), so a restarted
kernel can find the server again and never kills a recycled pid. Stopping a server removes
its pidfile and keeps its log, for after a crash, until ``prune``. The server reads the model repository and the name's routing file in place.

A server holding only ONNX models runs with this interpreter. One holding a Python model never does: it runs in a
virtual environment made from the same wheelhouses as its image (the server's packages and the
model's requirements, installed offline), cached under ``NBDEPLOY_CACHE/venvs/<key>`` by the
pins it holds, with a copy of the server's sources (as in the image) as its only nbdeploy code.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nbdeploy import _procs, _settings
from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import (
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    ensure_port_free,
    environment_of,
    local_url,
    probe_ready,
)
from nbdeploy.vocabulary import Progress, ServerStatus, emit

PIDFILE = "handle.json"
LOGFILE = "server.log"
VENV_COMPLETE = ".nbdeploy-complete"


def run_root() -> Path:
    path = _settings.home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ProcessRuntime(Runtime):
    """Run ``python -m nbdeploy.serve`` in its own session: with this interpreter for an ONNX
    model, in a virtual environment made for it for a Python model."""

    name = "process"

    def start(self, spec: LaunchSpec) -> RuntimeHandle:
        ensure_port_free(spec.port)
        files = spec.model_files()
        environment = environment_of(files)
        python = sys.executable
        needs_venv = any(f.format == "python" for f in files)
        if needs_venv:
            requirements = sorted({r for f in files for r in f.requirements})
            python = str(python_environment(requirements, spec.progress))
        run_dir = run_root() / f"{spec.name}-{spec.port}-{time.time_ns()}"
        run_dir.mkdir(mode=0o700, parents=True)
        if needs_venv:
            import_path = str(_server_sources(run_dir / "app"))
        else:
            import_path = str(Path(__file__).resolve().parents[2])
        log_path = run_dir / LOGFILE
        command = [
            python,
            "-m",
            "nbdeploy.serve",
            "--model-repository",
            str(Path(spec.models_root).resolve()),
            "--routing",
            str(Path(spec.serving_dir).resolve() / "routing.json"),
            "--host",
            "127.0.0.1",
            "--port",
            str(spec.port),
            *spec.settings.server_args(),
        ]
        if spec.request_log_dir is not None:
            command += ["--request-log-dir", str(spec.request_log_dir)]
        if spec.state_dir is not None:
            command += ["--state-dir", str(spec.state_dir)]
        if spec.grpc_port is not None:
            ensure_port_free(spec.grpc_port)
            command += ["--grpc-port", str(spec.grpc_port)]
        where = "in a virtual environment" if needs_venv else "as a local process"
        spec.say(f"starting the {spec.name} server {where} on port {spec.port}")
        pid, started = _procs.spawn(
            command,
            log_path=log_path,
            cwd=run_dir,
            env=_server_env(spec.token, spec.admin_token, import_path),
        )
        handle = RuntimeHandle(
            runtime=self.name,
            ref=str(pid),
            name=spec.name,
            version=max(spec.versions),
            port=spec.port,
            url=local_url(spec.port),
            log_path=str(log_path),
            environment=list(environment),
            started=started,
            grpc_port=spec.grpc_port,
        )
        record = {"handle": handle.to_dict(), "start_time": started}
        (run_dir / PIDFILE).write_text(json.dumps(record, indent=2))
        return handle

    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        """Stop the server if the pid is still the process that was started (never a recycled
        pid: without a known start time nothing is signalled); its log stays until prune."""
        started = handle.started or _recorded_start_time(handle)
        if started is not None and _procs.alive(int(handle.ref), started):
            _procs.terminate(int(handle.ref), timeout=timeout)
        run_dir = _run_dir(handle)
        if run_dir is not None:
            (run_dir / PIDFILE).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "app", ignore_errors=True)

    def status(self, handle: RuntimeHandle) -> ServerStatus:
        run_dir = _run_dir(handle)
        if run_dir is None or not (run_dir / PIDFILE).is_file():
            return "missing"
        started = handle.started or _recorded_start_time(handle)
        if started is None or not _procs.alive(int(handle.ref), started):
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


def _server_env(token: str | None, admin_token: str, import_path: str) -> dict[str, str]:
    """This environment, plus the tokens and an import path that finds the server's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (import_path, env.get("PYTHONPATH")) if p)
    env["NBDEPLOY_TOKEN"] = token or ""
    env["NBDEPLOY_ADMIN_TOKEN"] = admin_token
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _server_sources(app: Path) -> Path:
    """``app/nbdeploy/serve`` as in the image (next to an empty ``nbdeploy/__init__.py``), so a
    virtual environment that has only the server's packages imports the server alone."""
    from nbdeploy.runtimes.image import serve_sources

    (app / "nbdeploy").mkdir(parents=True, exist_ok=True)
    (app / "nbdeploy" / "__init__.py").write_text("")
    for relative, data in serve_sources().items():
        target = app / "nbdeploy" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return app


def python_environment(requirements: Sequence[str], progress: Progress | None = None) -> Path:
    """The Python of a virtual environment holding the server's packages and ``requirements``
    (and their dependencies), installed offline from the wheelhouses the image is built from.

    Layered like the image: one environment with the server's packages, shared by every Python
    model, and one per set of requirements on top of it (a ``.pth`` file puts the server's
    ``site-packages`` on its path; ``pip check`` confirms every dependency is met). Each is
    made once under ``cache_dir()/venvs/<key>`` (a lock serialises concurrent launches; a
    marker file says it is complete) and reused by every launch that needs it.
    """
    from nbdeploy.runtimes.image import cache_dir, host_target, requirements_wheelhouse, wheelhouse

    target = host_target()
    server = wheelhouse(progress, target)
    extra = requirements_wheelhouse(requirements, progress, target)
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    root = cache_dir() / "venvs"
    root.mkdir(parents=True, exist_ok=True)
    server_pins = (server / "requirements.txt").read_text().split()
    extra_pins = (extra / "requirements.txt").read_text().split()
    server_env = _environment(
        root,
        ["server", sorted(server_pins), base, sys.version],
        progress,
        lambda env: _pip(
            env, ["-r", str(server / "requirements.txt"), "--find-links", str(server)], progress
        ),
    )

    def on_server(env: Path) -> None:
        (_site_packages(env) / "_nbdeploy_server.pth").write_text(f"{_site_packages(server_env)}\n")
        _pip(
            env,
            ["--no-deps", "--find-links", str(extra), "-r", str(extra / "requirements.txt")],
            progress,
        )
        _run(
            [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "check"],
            progress,
        )

    model_env = _environment(
        root, ["model", server_env.name, sorted(extra_pins)], progress, on_server
    )
    return model_env / "bin" / "python"


def _environment(root: Path, identity: list[Any], progress: Progress | None, fill: Any) -> Path:
    """``root/<key>``: a virtual environment without pip, filled by ``fill`` once."""
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    venv = root / key
    if (venv / VENV_COMPLETE).is_file():
        return venv
    with _locked(root / f".{key}.lock"):
        if (venv / VENV_COMPLETE).is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        emit(progress, "image", f"creating a virtual environment for the {identity[0]}: {venv}")
        try:
            _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], progress)
            fill(venv)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / VENV_COMPLETE).write_text(json.dumps(identity, indent=1) + "\n")
    return venv


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise DeployError(f"the virtual environment {venv} has no site-packages directory")
    return found[0]


def _pip(venv: Path, arguments: list[str], progress: Progress | None) -> None:
    """Install offline into ``venv`` with this interpreter's pip."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--no-index",
            *arguments,
        ],
        progress,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], progress: Progress | None) -> None:
    _procs.run_logged(command, progress, "creating the model's virtual environment failed")


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
