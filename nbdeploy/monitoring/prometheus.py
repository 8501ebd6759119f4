"""A real Prometheus server on 127.0.0.1 that scrapes every deployment nbdeploy runs.

The binary is the system's ``prometheus`` (Debian package) or the path in
``NBDEPLOY_PROMETHEUS``. Its config, data, log and pid file live in ``NBDEPLOY_HOME/monitoring``;
the process is recognised by pid and start time, so ``down`` never signals a stranger that
inherited the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nbdeploy import _procs
from nbdeploy._errors import DeployError
from nbdeploy.monitoring import grafana, targets
from nbdeploy.monitoring._files import (
    STATE_FILE,
    locked,
    monitoring_dir,
    private_dir,
    read_state,
    recorded_pid,
)
from nbdeploy.monitoring._files import write_private as _write_private

DEFAULT_PORT = 9090
READY_TIMEOUT_S = 30.0
BINARY_SETTING = "NBDEPLOY_PROMETHEUS"


@dataclass
class MonitoringStatus:
    """What ``nbdeploy monitoring status`` reports; plain data (``to_dict`` is JSON-ready)."""

    running: bool
    url: str | None = None
    pid: int | None = None
    targets: list[str] = field(default_factory=list)
    """Deployment names in the target files (what Prometheus is told to scrape)."""
    health: dict[str, str] = field(default_factory=dict)
    """Each scraped deployment's health as Prometheus last saw it ("up", "down", "unknown")."""
    files: dict[str, str] = field(default_factory=dict)
    started: bool = False
    """True when this call started the server (False: it was already running, or is down)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binary() -> str:
    """The prometheus executable; DeployError saying how to install it when there is none."""
    configured = os.environ.get(BINARY_SETTING)
    found = shutil.which(configured or "prometheus")
    if found is None:
        where = (
            f"{BINARY_SETTING}={configured!r} is not an executable"
            if configured
            else ("no `prometheus` on PATH")
        )
        raise DeployError(
            f"cannot start Prometheus: {where}; install it with `apt-get install prometheus`"
            f" (the README's commands do) or set {BINARY_SETTING} to its path"
        )
    return found


def _running_state() -> dict[str, Any] | None:
    state = read_state()
    return state if recorded_pid(state) is not None else None


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port(last: int | None) -> int:
    """The last port used (a Grafana keeps its datasource URL), else 9090, else any free one."""
    for candidate in (last, DEFAULT_PORT):
        if candidate and _port_free(candidate):
            return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _files(root: Path) -> dict[str, str]:
    files = {
        "config": root / "prometheus.yml",
        "targets": root / "targets",
        "tokens": root / "tokens",
        "data": root / "data",
        "log": root / "prometheus.log",
        "pid": root / STATE_FILE,
        "grafana": grafana.grafana_dir(),
    }
    return {key: str(path) for key, path in files.items()}


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(pid: int, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _procs.alive(pid):
            raise DeployError(
                f"Prometheus exited while starting; last lines of {log}:\n" + _log_tail(log)
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    _procs.terminate(pid, timeout=5)
    raise DeployError(
        f"Prometheus did not become ready within {READY_TIMEOUT_S:.0f} s; last"
        f" lines of {log}:\n" + _log_tail(log)
    )


def up(port: int | None = None) -> MonitoringStatus:
    """Start Prometheus on 127.0.0.1 (``port`` or a stable default), or report the running one.

    The target files are synced from the store first and the Grafana files written with this
    server's URL.
    """
    with locked(".up.lock"):
        if _running_state() is not None:
            return status()
        return _start(port)


def _start(port: int | None) -> MonitoringStatus:
    """Spawn the server (under the ``up`` lock, so two callers never start two)."""
    executable = binary()
    root = monitoring_dir()
    targets.sync()
    previous = read_state()
    chosen = port or _choose_port(previous.get("port") if previous else None)
    if port and not _port_free(port):
        raise DeployError(f"cannot start Prometheus: 127.0.0.1:{port} is already in use")
    url = _url(chosen)
    data = private_dir(root / "data")
    log = root / "prometheus.log"
    command = [
        executable,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{chosen}",
        f"--web.external-url={url}/",
        "--storage.tsdb.retention.time=15d",
    ]
    pid, started = _procs.spawn(command, log_path=log, cwd=root, env=os.environ)
    log.chmod(0o600)
    _write_private(
        root / STATE_FILE,
        json.dumps({"pid": pid, "started": started, "port": chosen, "binary": executable}) + "\n",
    )
    _wait_ready(pid, url, log)
    grafana.write_files(url)
    result = status()
    result.started = True
    return result


def down() -> bool:
    """Stop the Prometheus ``up`` started; False when none was running."""
    state = read_state()
    if state is None:
        return False
    running = recorded_pid(state)
    if running is not None:
        _procs.terminate(running[0], timeout=10)
    _write_private(
        monitoring_dir() / STATE_FILE, json.dumps({**state, "pid": None, "started": None}) + "\n"
    )
    return running is not None


def _health(url: str) -> dict[str, str]:
    """Each nbdeploy target's health from Prometheus' own API (empty when it does not answer)."""
    try:
        response = httpx.get(f"{url}/api/v1/targets", timeout=5.0, trust_env=False)
        active = response.json()["data"]["activeTargets"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}
    return {
        t["labels"]["deployment"]: t.get("health", "unknown")
        for t in active
        if t.get("labels", {}).get("job") == targets.JOB and "deployment" in t.get("labels", {})
    }


def status() -> MonitoringStatus:
    """Whether nbdeploy's Prometheus runs, where, and which deployments it scrapes."""
    root = monitoring_dir()
    names = sorted(path.stem for path in (root / "targets").glob("*.json"))
    state = _running_state()
    if state is None:
        return MonitoringStatus(running=False, targets=names, files=_files(root))
    url = _url(state["port"])
    return MonitoringStatus(
        running=True,
        url=url,
        pid=state["pid"],
        targets=names,
        health=_health(url),
        files=_files(root),
    )


def prometheus_url() -> str:
    """The running server's URL, else the one it had (or will have by default)."""
    state = read_state() or {}
    return _url(state.get("port") or DEFAULT_PORT)


def grafana_instructions() -> str:
    """Write the Grafana files for the current Prometheus URL and say how to use them."""
    url = prometheus_url()
    files = grafana.write_files(url)
    return grafana.instructions(url, files, running=_running_state() is not None)
