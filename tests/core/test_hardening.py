"""The core after failures and in a shared machine: private files, a store that says what is
true after a deployer dies, bounded waits for the database, tokens printed only on request."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy import _settings, cli
from nbdeploy.store import Store, StoreBusyError
from tests.helpers.onnx_models import save_linear

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def linear(tmp_path: Path) -> Path:
    return save_linear(tmp_path / "linear.onnx", seed=0)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_what_holds_tokens_are_private(linear: Path, nbdeploy_home: Path, cleanup) -> None:
    nbdeploy_home.chmod(0o755)  # a home made by an older release
    ep = nbd.deploy(linear, name="private", runtime="process")
    assert mode(nbdeploy_home) == 0o700
    assert mode(nbdeploy_home / "nbdeploy.db") == 0o600
    version_dir = nbdeploy_home / "models" / "private" / "1"
    assert mode(version_dir) == 0o750 and mode(version_dir / "model.onnx") == 0o440
    routing = nbdeploy_home / "serving" / "private" / "routing.json"
    assert mode(routing) == 0o640 and ep.token not in routing.read_text()
    run_dirs = list((nbdeploy_home / "run").iterdir())
    assert run_dirs and all(mode(d) == 0o700 for d in run_dirs)


def test_a_deployer_killed_after_its_server_started_is_cleaned_up(
    linear: Path, nbdeploy_home: Path, cleanup
) -> None:
    """The launch is recorded before the server starts; the next ls stops the orphaned
    server and says so, instead of leaving a token-bearing server nobody lists."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import nbdeploy as nbd
        from nbdeploy.runtimes.process import ProcessRuntime
        def die(self, handle, timeout=120):
            print(handle.ref, handle.started, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        ProcessRuntime.wait_ready = die
        nbd.deploy({str(linear)!r}, name="orphan", runtime="process")
        """
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(nbdeploy_home)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid, started = done.stdout.split()
    from nbdeploy import _procs

    assert _procs.alive(int(pid), started), "the server should have outlived its deployer"
    assert [row.state for row in Store().deployments(name="orphan", states=("starting",))] == [
        "starting"
    ]
    assert nbd.deployments() == []  # what `nbdeploy ls` runs
    assert not _procs.alive(int(pid), started)
    assert Store().deployments(name="orphan", states=("starting",)) == []
    assert [e["kind"] for e in Store().events("orphan")][0] == "orphan"
    again = nbd.deploy(linear, name="orphan", runtime="process")
    assert again.status == "running"


def test_a_launch_whose_deployer_still_runs_is_left_alone(nbdeploy_home: Path) -> None:
    from nbdeploy.deployment import _launcher, clean_orphans

    Store().add_deployment(
        name="busy",
        version=1,
        runtime="process",
        state="starting",
        handle={"launcher": _launcher()},
    )
    assert clean_orphans() == []
    assert len(Store().deployments(name="busy", states=("starting",))) == 1


def test_a_store_held_by_another_process_fails_fast_and_clearly(
    nbdeploy_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbdeploy import store as store_module

    Store().add_event("x", "first", "before")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "conn.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(_settings.db_path()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store_module, "LOCK_WAIT_S", 1.0)
        monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="stayed locked by another process"):
            Store().add_event("x", "second", "while locked")
        assert time.monotonic() - started < 10
        assert [e["kind"] for e in Store().events("x")] == ["first"]  # reads still work
    finally:
        holder.kill()
        holder.wait()
    Store().add_event("x", "third", "after")
    with sqlite3.connect(_settings.db_path()) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_one_broken_row_hides_nothing(linear: Path, cleanup) -> None:
    nbd.deploy(linear, name="healthy", runtime="process")
    Store().add_deployment(
        name="ghost", version=3, runtime="process", state="active", url="http://127.0.0.1:1", port=1
    )
    views = {view.name: view for view in nbd.api.deployment_views()}
    assert views["healthy"].status == "running"
    assert views["ghost"].status == "missing"


def test_only_the_store_opens_the_database_file() -> None:
    """A plain open() of the SQLite file drops its POSIX locks; only store.py touches it."""
    for path in (ROOT / "nbdeploy").rglob("*.py"):
        text = path.read_text()
        if path.name in ("store.py", "_settings.py"):
            continue
        assert "db_path" not in text and "nbdeploy.db" not in text, path


def test_tokens_are_printed_only_on_request(
    linear: Path, cleanup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["deploy", str(linear), "--name", "quiet", "--runtime", "process"]) == 0
    token = nbd.get("quiet").token
    assert token and token not in capsys.readouterr().out
    assert (
        cli.main(["deploy", str(linear), "--name", "quiet", "--runtime", "process", "--json"]) == 0
    )
    assert token not in capsys.readouterr().out
    assert cli.main(["status", "quiet", "--json"]) == 0
    assert token not in capsys.readouterr().out
    assert cli.main(["token", "quiet"]) == 0
    assert capsys.readouterr().out.strip() == token
    assert nbd.get("quiet").predict(np.ones((1, 4), np.float32)).shape == (1, 3)
