"""Where the monitoring files live and how they are written: atomically, readable by the owner only.

Prometheus re-reads its file-based service discovery on its own, and a file rewritten in place
can be read half-written; so every file is written to a temporary sibling and renamed over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbdeploy import _procs
from nbdeploy._settings import home

STATE_FILE = "prometheus.pid"
"""JSON ``{"pid", "started", "port", "binary"}``: the Prometheus nbdeploy started, if any."""


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (it holds bearer tokens); missing parents
    are made the same way."""
    if not path.parent.is_dir():
        private_dir(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def monitoring_dir() -> Path:
    """``NBDEPLOY_HOME/monitoring``, created on first use."""
    return private_dir(home() / "monitoring")


def write_private(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically with mode 0600; False when it already held it."""
    try:
        if path.read_text() == text:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return False
    except OSError:
        pass
    private_dir(path.parent)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return True


@contextlib.contextmanager
def locked(name: str = ".lock") -> Iterator[Path]:
    """The monitoring directory, held exclusively through the lock file ``name`` (two processes
    syncing, or starting Prometheus, at once take turns)."""
    root = monitoring_dir()
    with open(os.open(root / name, os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state() -> dict[str, Any] | None:
    """The recorded Prometheus (``pid`` None once stopped), or None when there is no record."""
    try:
        data = json.loads((monitoring_dir() / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_pid(state: dict[str, Any] | None) -> tuple[int, str | None] | None:
    """The recorded pid and start time when that process still runs, else None."""
    if state is None or not isinstance(state.get("pid"), int):
        return None
    pid, started = state["pid"], state.get("started")
    return (pid, started) if _procs.alive(pid, started) else None
