"""Versions side by side from the command line: canary deploys, traffic, compare, promote,
rollback, rm and prune, through ``cli.main`` against real deployments (process runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy import cli
from tests.helpers.onnx_models import save_linear

NAME = "cli-twin"
ROW = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture
def onnx_files(tmp_path: Path) -> list[str]:
    return [str(save_linear(tmp_path / f"v{seed}.onnx", seed=seed)) for seed in (0, 1, 2)]


@pytest.fixture(autouse=True)
def stop_all() -> Iterator[None]:
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``nbdeploy ARGV``: exit code, stdout, stderr (argparse's own exits included)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_the_version_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nbdeploy.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("promote", "traffic", "rollback", "compare", "rm", "prune"):
        assert command in out
    deploy = subprocess.run(
        [sys.executable, "-m", "nbdeploy.cli", "deploy", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--canary", "--shadow", "--max-error-rate", "--min-agreement", "--max-p99-ms"):
        assert option in deploy


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["deploy", "m.onnx", "--name", "n", "--canary", "10", "--shadow"],
            "argument --shadow: not allowed with argument --canary",
        ),
        (["deploy", "m.onnx", "--name", "n", "--canary", "ten"], "invalid int value: 'ten'"),
        (["deploy", "m.onnx", "--name", "n", "--max-p99-ms", "x"], "invalid float value: 'x'"),
        (["traffic", "n", "1=50", "2"], "expected VERSION=PERCENT pairs such as 1=90 2=10"),
        (["traffic", "n", "1=50", "1=50"], "each version may be given once"),
        (["promote"], "the following arguments are required: name"),
        (["promote", "n", "--version", "two"], "invalid int value: 'two'"),
        (["rm", "n", "--version", "x"], "invalid int value: 'x'"),
        (["prune", "--keep", "many"], "invalid int value: 'many'"),
        (["promote", "ghost"], "no active deployment named 'ghost'"),
        (["traffic", "ghost"], "no active deployment named 'ghost'"),
        (["compare", "ghost"], "'ghost'"),
    ],
)
def test_bad_input_is_one_readable_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_canary_traffic_compare_promote_rollback(
    onnx_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = ("deploy", "--name", NAME, "--runtime", "process")
    assert run(capsys, deploy[0], onnx_files[0], *deploy[1:])[0] == 0

    code, out, err = run(capsys, deploy[0], onnx_files[1], *deploy[1:], "--canary", "10")
    assert code == 0, err
    assert f"{NAME} v2 is serving at http://127.0.0.1:" in out
    assert "  traffic: v1 90% · v2 10% (canary)" in out

    code, out, _ = run(capsys, "ls")
    assert code == 0
    header, _, row = out.splitlines()
    assert "TRAFFIC" in header and "GUARD" not in header
    assert "1:90 2:10" in row
    code, out, _ = run(capsys, "ls", "--json")
    (listed,) = json.loads(out)
    assert [(v["version"], v["weight"], v["role"]) for v in listed["versions"]] == [
        (1, 90, "stable"),
        (2, 10, "canary"),
    ]
    assert listed["guard"] is None

    code, out, _ = run(capsys, "traffic", NAME)
    assert code == 0
    assert out.splitlines()[0].startswith(f"{NAME}: stable v1 at http://127.0.0.1:")
    assert "canary" in out and "90%" in out and "10%" in out

    code, out, err = run(capsys, "traffic", NAME, "1=50", "2:50")
    assert code == 0, err
    assert out.startswith(f"traffic set: {NAME}: stable v1")
    assert nbd.traffic(NAME) == {1: 50, 2: 50}
    code, _, err = run(capsys, "traffic", NAME, "1=50", "2=20")
    assert code == 2 and "100" in err
    assert nbd.traffic(NAME) == {1: 50, 2: 50}

    endpoint = nbd.get(NAME)
    for _ in range(6):
        endpoint.predict(ROW)
    code, out, _ = run(capsys, "compare", NAME, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["source"] == "live" and report["reference"] == 1
    assert sorted(v["version"] for v in report["versions"]) == [1, 2]
    code, out, _ = run(capsys, "compare", NAME)
    assert code == 0 and out.strip()

    code, out, err = run(capsys, "promote", NAME, "--json")
    assert code == 0, err
    promoted = json.loads(out)
    assert promoted["version"] == 2
    assert {v["version"]: v["weight"] for v in promoted["versions"]}[2] == 100

    code, out, err = run(capsys, "rollback", NAME)
    assert code == 0, err
    assert out.startswith(f"rolled back: {NAME}: stable v1")
    assert nbd.get(NAME).version == 1


def test_guard_column_rm_and_prune(
    onnx_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = ("--name", NAME, "--runtime", "process", "--no-auth")
    assert run(capsys, "deploy", onnx_files[0], *deploy)[0] == 0
    assert run(capsys, "deploy", onnx_files[1], *deploy)[0] == 0
    code, _, err = run(
        capsys,
        "deploy",
        onnx_files[2],
        *deploy,
        "--canary",
        "50",
        "--max-p99-ms",
        "0.000001",
        "--min-requests",
        "2",
    )
    assert code == 0, err
    endpoint = nbd.get(NAME)
    for _ in range(40):
        endpoint.predict(ROW)
        if endpoint.view().guard:
            break
    code, out, _ = run(capsys, "ls")
    header, _, row = out.splitlines()
    assert header.split()[-1] == "GUARD" and "p99" in row

    code, out, err = run(capsys, "prune", "--keep", "1", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["dry_run"] is True
    assert (NAME, 1) in {(r["name"], r["version"]) for r in planned["removed"]}
    assert [m["version"] for m in nbd.models(NAME)] == [3, 2, 1], "a dry run removes nothing"

    nbd.undeploy(NAME)
    code, out, err = run(capsys, "rm", NAME, "--version", "1")
    assert code == 0, err
    assert out.strip() == f"removed {NAME} version 1"
    assert [m["version"] for m in nbd.models(NAME)] == [3, 2]

    code, out, err = run(capsys, "prune", "--keep", "1")
    assert code == 0, err
    assert [m["version"] for m in nbd.models(NAME)] == [3]
