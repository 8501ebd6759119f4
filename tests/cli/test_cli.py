"""The command line as a user runs it: a real subprocess for --help, main() for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbdeploy import cli
from nbdeploy.repository import ModelRepository
from tests.helpers.onnx_models import make_artifact, save_linear


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nbdeploy.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in (
        "bench",
        "ls",
        "models",
        "deploy",
        "status",
        "logs",
        "stop",
        "rollback",
        "quickstart",
    ):
        assert command in out


def test_bench_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_linear(tmp_path / "linear.onnx")
    assert cli.main(["bench", str(path), "--json", "--batch-sizes", "1,4", "--budget", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [(r["engine"], r["batch_size"]) for r in report["results"]]
    assert rows == [("onnxruntime", 1), ("onnxruntime", 4)]
    assert all(r["p50_ms"] > 0 for r in report["results"])


def test_bench_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_linear(tmp_path / "linear.onnx")
    assert cli.main(["bench", str(path), "--batch-sizes", "2", "--budget", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "p50" in out.lower()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "missing.onnx"], "missing.onnx"),
        (["bench", "{onnx}", "--batch-sizes", "0"], "batch sizes must be positive"),
        (["bench", "{onnx}", "--batch-sizes", "a,b"], "comma-separated positive integers"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_readable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    onnx_path = save_linear(tmp_path / "linear.onnx")
    argv = [a.replace("{onnx}", str(onnx_path)) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_not_onnx_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("not a model")
    assert cli.main(["bench", str(bogus)]) == 2
    assert "error" in capsys.readouterr().err


def test_models_and_empty_ls(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ls"]) == 0
    assert "No deployments" in capsys.readouterr().out
    assert cli.main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    ModelRepository().register(make_artifact())
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["version"], r["variant"]) for r in rows] == [("linear", 1, "fp32")]
    assert cli.main(["models"]) == 0
    assert "linear" in capsys.readouterr().out


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return save_linear(tmp_path / "linear.onnx", seed=0)


def test_cli_deploy_status_logs_stop(onnx_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["deploy", str(onnx_file), "--name", "cli", "--runtime", "process"]) == 0
    assert "cli v1 is serving at http://127.0.0.1:" in capsys.readouterr().out
    assert cli.main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "cli" in listing and "running" in listing
    assert cli.main(["status", "cli", "--json"]) == 0
    assert '"status": "running"' in capsys.readouterr().out
    assert cli.main(["logs", "cli"]) == 0
    assert capsys.readouterr().out.strip()
    assert cli.main(["stop", "cli"]) == 0
    assert "stopped cli" in capsys.readouterr().out
    assert cli.main(["stop", "cli"]) == 2
    assert "no active deployment named 'cli'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["deploy", str(onnx_file)])
    assert "--name" in capsys.readouterr().err


def test_quickstart_leaves_another_sessions_deployment_alone(
    onnx_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbdeploy import api, quickstart

    assert quickstart.NAME == "example-digits"
    with monkeypatch.context() as patch:
        patch.setattr("nbdeploy.deployment.session_owner", lambda: "kernel k1 on elsewhere")
        api.deploy(str(onnx_file), name="example-digits", runtime="process")
    try:
        code = cli.main(["quickstart", "--name", "example-digits", "--runtime", "process"])
        assert code == 2
        assert capsys.readouterr().err.strip() == (
            "nbdeploy quickstart: error: a deployment named 'example-digits' is running, made by"
            " kernel k1 on elsewhere; choose another name with --name, or stop it first"
            " (nbdeploy stop example-digits)"
        )
        assert [ep.name for ep in api.deployments()] == ["example-digits"]
    finally:
        api.undeploy("example-digits")
