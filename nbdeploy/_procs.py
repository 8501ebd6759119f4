"""Background processes nbdeploy starts (inference servers, Voila): spawn, recognise, stop.

A bare pid can be reused once its process is gone, so a process is recognised by its pid and
its start time from ``/proc``. Children of this interpreter are reaped, so none lingers as a
zombie that still looks alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from nbdeploy._errors import DeployError
from nbdeploy.vocabulary import Progress, emit

_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    command: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str]
) -> tuple[int, str | None]:
    """Start ``command`` in its own session, output appended to ``log_path``.

    Returns the pid and its start time (the pair that identifies the process later).
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc.pid, start_time(proc.pid)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int, started: str | None = None) -> bool:
    """True when ``pid`` runs, is no zombie, and (given ``started``) is the same process."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return not Path("/proc").is_dir()
    if fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate(pid: int, *, timeout: float, term_group: bool = True) -> None:
    """SIGTERM, wait up to ``timeout`` seconds for a graceful exit, then SIGKILL the session.

    ``term_group=False`` sends the polite signal to the leader only, for programs (Voila) that
    shut their own children down.
    """
    _signal(pid, signal.SIGTERM, group=term_group)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if alive(pid):
        _signal(pid, signal.SIGKILL, group=True)
        deadline = time.monotonic() + 5
        while alive(pid):
            if time.monotonic() > deadline:
                raise DeployError(f"process {pid} did not die after SIGKILL")
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def run_logged(command: Sequence[str], progress: Progress | None, failure: str) -> None:
    """Run a tool (pip, venv) to completion, its output lines reported as progress detail;
    a non-zero exit raises DeployError("<failure> (<tool> exited N); last lines: ...")."""
    lines: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            emit(progress, "image", line.rstrip(), detail=True)
    if proc.returncode != 0:
        raise DeployError(
            f"{failure} ({' '.join(command[2:4])} exited {proc.returncode}); last lines:\n"
            + "\n".join(lines)
        )
