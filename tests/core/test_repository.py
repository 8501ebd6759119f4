"""Model repository and SQLite store: immutable atomic versions, also under concurrent writers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nbdeploy._errors import InputError, RepositoryError
from nbdeploy._types import Quantization
from nbdeploy.artifact import ModelArtifact
from nbdeploy.repository import ModelRepository
from nbdeploy.store import Store
from nbdeploy.vocabulary import ServerSettings
from tests.helpers.onnx_models import make_artifact

ROOT = Path(__file__).resolve().parents[2]


def test_register_creates_numbered_immutable_versions(nbdeploy_home: Path) -> None:
    repo = ModelRepository()
    first = repo.register(make_artifact(seed=0))
    second = repo.register(make_artifact(seed=1))
    assert (first.version, second.version) == (1, 2)
    version_dir = nbdeploy_home / "models" / "linear" / "2"
    assert second.directory == version_dir
    meta = json.loads((version_dir / "nbdeploy.json").read_text())
    assert meta["version"] == 2
    assert meta["labels"] == ["a", "b", "c"]
    assert meta["signature"]["inputs"][0] == {
        "name": "input",
        "dtype": "float32",
        "datatype": "FP32",
        "shape": [-1, 4],
    }
    assert meta["onnx_sha256"] == second.sha256 != first.sha256
    assert not os.access(version_dir / "model.onnx", os.W_OK) or os.geteuid() == 0
    assert (version_dir / "model.onnx").stat().st_mode & 0o222 == 0
    assert [row["version"] for row in repo.list_versions("linear")] == [2, 1]
    assert repo.get("linear").version == 2
    assert repo.get("linear", 1).sha256 == first.sha256


def test_register_under_another_name_and_reload(nbdeploy_home: Path) -> None:
    registered = ModelRepository().register(make_artifact(), name="renamed")
    loaded = ModelArtifact.load(registered.directory)
    assert loaded.name == "renamed"
    assert loaded.signature == registered.signature
    assert loaded.version == 1


@pytest.mark.parametrize(
    "bad", ["", "Upper", "has space", "../escape", "-lead", "x" * 64, "digits\n", "a/b"]
)
def test_bad_names_are_refused_and_leave_nothing(nbdeploy_home: Path, bad: str) -> None:
    with pytest.raises(InputError, match="invalid model name"):
        ModelRepository().register(make_artifact(), name=bad)
    assert not any((nbdeploy_home / "models").iterdir())
    assert Store().versions() == []


def test_unknown_model_and_version_errors() -> None:
    repo = ModelRepository()
    with pytest.raises(RepositoryError, match="no model named 'ghost'"):
        repo.get("ghost")
    repo.register(make_artifact())
    with pytest.raises(RepositoryError, match=r"has no version 7; versions: \[1\]"):
        repo.get("linear", 7)


def test_failed_variant_is_refused() -> None:
    artifact = make_artifact()
    artifact.quantization = Quantization(mode="int8-dynamic", status="noop", reason="no MatMul")
    with pytest.raises(RepositoryError, match="no MatMul"):
        ModelRepository().register(artifact)


def test_failure_midway_leaves_no_partial_version(nbdeploy_home: Path) -> None:
    artifact = make_artifact()
    artifact.path.parent.joinpath("model.onnx").unlink()
    with pytest.raises(RepositoryError, match="cannot read the model file"):
        ModelRepository().register(artifact)
    leftovers = list((nbdeploy_home / "models" / "linear").iterdir())
    assert leftovers == []
    assert Store().versions() == []


def test_concurrent_processes_get_distinct_versions(nbdeploy_home: Path) -> None:
    """Real processes race to register the same name; every version is whole and distinct."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from nbdeploy.repository import ModelRepository
        from tests.helpers.onnx_models import make_artifact
        repo = ModelRepository()
        for i in range(6):
            print(repo.register(make_artifact(seed=int(sys.argv[2]) * 100 + i)).version, flush=True)
        """
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(nbdeploy_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ROOT), str(worker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for worker in range(4)
    ]
    versions: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        versions += [int(line) for line in out.split()]
    assert sorted(versions) == list(range(1, 25))
    model_dir = nbdeploy_home / "models" / "linear"
    assert sorted(int(p.name) for p in model_dir.iterdir()) == list(range(1, 25))
    for version_dir in model_dir.iterdir():
        meta = json.loads((version_dir / "nbdeploy.json").read_text())
        assert meta["version"] == int(version_dir.name)
        assert ModelArtifact.load(version_dir).sha256 == meta["onnx_sha256"]
    with sqlite3.connect(nbdeploy_home / "nbdeploy.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 24


def test_store_records_what_a_server_holds_in_one_transaction() -> None:
    store = Store()
    server = {
        "runtime": "process",
        "url": "http://127.0.0.1:1234",
        "port": 1234,
        "token": "t",
        "handle": {"ref": "1"},
        "settings": ServerSettings(),
        "owner": "me",
    }
    routing = {"weights": {"1": 90, "2": 10}, "shadow": []}
    active = store.apply_routing("m", routing=routing, admin_token="a", server=server)
    assert sorted(row.version for row in active) == [1, 2]
    assert {row.url for row in active} == {"http://127.0.0.1:1234"}
    first_ids = {row.version: row.id for row in active}
    moved = {**server, "url": "http://127.0.0.1:5678", "port": 5678}
    routing = {"weights": {"2": 100}, "shadow": [3]}
    active = store.apply_routing(
        "m", routing=routing, admin_token="a", server=moved, guard_reason="why"
    )
    assert sorted(row.version for row in active) == [2, 3]
    assert {row.port for row in active} == {5678}
    assert next(r.id for r in active if r.version == 2) == first_ids[2]  # kept, not re-added
    assert store.deployment(first_ids[1]).state == "retired"
    assert store.route("m")["guard_reason"] == "why"
    assert store.route("m")["routing"] == routing
    assert store.last_port("m") == 5678
    retired = store.retire_all("m")
    assert sorted(row.version for row in retired) == [2, 3]
    assert store.deployments(name="m") == [] and store.route("m") is None
    store.add_event("m", "deployed", "version 2", {"port": 1234})
    assert store.events("m")[0]["message"] == "version 2"


def test_store_keeps_server_settings_typed_and_reads_older_files(nbdeploy_home: Path) -> None:
    """Settings have their own column; a store written before it keeps them in the handle."""
    path = nbdeploy_home / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE deployments (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,"
            " version INTEGER NOT NULL, runtime TEXT NOT NULL, state TEXT NOT NULL, url TEXT,"
            " port INTEGER, token TEXT, handle TEXT NOT NULL DEFAULT '{}',"
            " created_at TEXT NOT NULL, updated_at TEXT NOT NULL);"
            "INSERT INTO deployments (name, version, runtime, state, url, port, token, handle,"
            " created_at, updated_at) VALUES ('m', 1, 'process', 'active', 'http://127.0.0.1:9',"
            ' 9, NULL, \'{"ref": "1", "tuning": {"max_batch_size": 4, "batching": false}}\','
            " 't', 't');"
        )
    store = Store(path)
    (old,) = store.deployments(name="m")
    assert old.settings == ServerSettings(max_batch_size=4, batching=False)
    assert old.handle == {"ref": "1"}
    new = store.add_deployment(
        name="m", version=2, runtime="process", state="active", settings=ServerSettings(cpus=1.5)
    )
    assert store.deployment(new).settings.cpus == 1.5


def test_sidecar_files_travel_with_the_model_into_versions_and_variants(tmp_path: Path) -> None:
    from nbdeploy.artifact import store_onnx
    from nbdeploy.optimize import quantize_variants
    from tests.helpers.onnx_models import linear_model

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n")
    proto, _, _ = linear_model()
    artifact = store_onnx(
        proto, name="side", framework="onnx", files={"vocab.txt": vocab, "extra.json": b"{}"}
    )
    assert [p.name for p in artifact.sidecars] == ["extra.json", "vocab.txt"]
    registered = ModelRepository().register(artifact)
    assert (registered.directory / "vocab.txt").read_text() == "hello\nworld\n"
    assert ModelArtifact.load(registered.directory).sidecars == registered.sidecars
    (fp16,) = quantize_variants(artifact, ["fp16"])
    assert [p.name for p in fp16.sidecars] == ["extra.json", "vocab.txt"]
