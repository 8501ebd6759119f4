"""Endpoint images: pinned wheelhouse, shared server image, small model layer, real builds."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
from pathlib import Path

import pytest

from nbdeploy._errors import DeployError, InputError
from nbdeploy.runtimes import image
from nbdeploy.vocabulary import ProgressEvent
from tests.helpers.runtimes import model_version, needs_docker, shared_cache_dir


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = shared_cache_dir(tmp_path_factory)
    monkeypatch.setenv("NBDEPLOY_CACHE", str(path))
    return path


@pytest.fixture
def client():
    import docker

    engine = docker.from_env()
    yield engine
    engine.close()


def test_requirements_pin_the_host_versions_and_their_dependencies() -> None:
    pins = dict(line.split("==") for line in image.pinned_requirements())
    for package in ("onnxruntime", "numpy", "starlette", "uvicorn", "prometheus-client"):
        assert pins[package] == importlib.metadata.version(package)
    # onnxruntime needs protobuf, starlette needs anyio, uvicorn needs h11: pinned too.
    for dependency in ("protobuf", "anyio", "h11"):
        assert pins[dependency] == importlib.metadata.version(dependency)
    assert "colorama" not in pins  # click wants it on Windows only; the image is Linux


def test_missing_package_is_a_readable_error() -> None:
    with pytest.raises(DeployError, match="not-a-real-package-xyz.*not installed"):
        image.pinned_requirements(("not-a-real-package-xyz",))


def test_model_image_tag_is_a_valid_docker_reference() -> None:
    tag = image.model_image_tag("My_Model.v2", 3, "ab" * 32)
    assert tag == "nbdeploy-model-my_model.v2:3-abababababab"


def test_model_image_refuses_bad_names_and_missing_models(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="invalid model name"):
        image.build_model_image(tmp_path, "../escape", 1, "0" * 64)
    with pytest.raises(DeployError, match="holding model.onnx"):
        image.build_model_image(tmp_path, "fine", 1, "0" * 64)


def test_wheelhouse_holds_cp311_manylinux_wheels_of_the_host_versions(cache: Path) -> None:
    house = image.wheelhouse()
    assert house.parent == cache / "wheelhouse"
    wheels = {path.name for path in house.glob("*.whl")}
    ort_version = importlib.metadata.version("onnxruntime")
    ort_wheel = [w for w in wheels if w.startswith(f"onnxruntime-{ort_version}-")]
    assert ort_wheel and "cp311" in ort_wheel[0] and "manylinux" in ort_wheel[0]
    pinned = (house / "requirements.txt").read_text().split()
    assert pinned == image.pinned_requirements()
    assert len(wheels) == len(pinned)
    lines: list[ProgressEvent] = []
    assert image.wheelhouse(lines.append) == house
    assert lines == []  # complete: nothing downloaded again


def test_server_sources_skip_bytecode() -> None:
    sources = image.serve_sources()
    assert "serve/__main__.py" in sources
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in sources)


@pytest.mark.usefixtures("cache")
@needs_docker
@pytest.mark.docker
def test_server_and_model_images(tmp_path: Path, client) -> None:
    server = image.ensure_server_image()
    server_image = client.images.get(server)
    assert server_image.labels["nbdeploy.role"] == "server"
    assert server_image.labels["nbdeploy.managed"] == "true"
    config = server_image.attrs["Config"]
    assert config["User"] == str(image.USER_ID)
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    assert "nbdeploy.serve" in " ".join(config["Entrypoint"])

    rebuilt: list[ProgressEvent] = []
    assert image.ensure_server_image(rebuilt.append) == server
    assert rebuilt == []  # the shared server image is reused, not rebuilt

    version_dir, sha, _w, _b = model_version(tmp_path, name="imgtest", version=2)
    events: list[ProgressEvent] = []
    tag = image.build_model_image(version_dir, "imgtest", 2, sha, events.append)
    log = [event.message for event in events]
    try:
        model_image = client.images.get(tag)
        assert model_image.labels["nbdeploy.name"] == "imgtest"
        assert model_image.labels["nbdeploy.version"] == "2"
        assert model_image.labels["nbdeploy.sha256"] == sha
        assert model_image.labels["nbdeploy.managed"] == "true"
        assert any(f"FROM {server}" in line for line in log)
        assert not any("pip install" in line for line in log)
        # The model layer is the only one added, and it is about the size of the model.
        server_layers = server_image.attrs["RootFS"]["Layers"]
        assert model_image.attrs["RootFS"]["Layers"][:-1] == server_layers
        added = model_image.attrs["Size"] - server_image.attrs["Size"]
        assert 0 < added < 64 * 1024
        assert (
            _file_in_image(client, tag, "/models/imgtest/2/model.onnx")
            == (version_dir / "model.onnx").read_bytes()
        )
        # The same model again is not rebuilt.
        again: list[str] = []
        assert image.build_model_image(version_dir, "imgtest", 2, sha, again.append) == tag
        assert again == []
    finally:
        client.images.remove(tag, force=True)


@pytest.mark.usefixtures("cache")
@needs_docker
@pytest.mark.docker
def test_build_failure_raises_with_the_build_log(
    tmp_path: Path, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base image without Python makes the build fail; the error carries its last lines."""
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        tar.addfile(info, io.BytesIO(b""))
    tag = "nbdeploy-test/no-python:latest"
    client.api.import_image_from_data(
        empty.getvalue(), repository="nbdeploy-test/no-python", tag="latest"
    )
    base_id = client.images.get(tag).id
    monkeypatch.setenv("NBDEPLOY_BASE_IMAGE", tag)
    lines: list[ProgressEvent] = []
    try:
        with pytest.raises(
            DeployError, match=r"building image nbdeploy-server:\S+ failed"
        ) as error:
            image.ensure_server_image(lines.append)
        assert "python3" in str(error.value)  # the failing step's own output is in the message
        assert lines and lines[-1].detail and lines[-1].message in str(error.value)
    finally:
        _remove_with_descendants(client, base_id)


def _remove_with_descendants(client, image_id: str) -> None:
    """Remove an image and the layers a failed build left on top of it."""
    children = [i for i in client.images.list(all=True) if i.attrs.get("Parent") == image_id]
    for child in children:
        _remove_with_descendants(client, child.id)
    client.images.remove(image_id, force=True)


def _file_in_image(client, tag: str, path: str) -> bytes:
    container = client.containers.create(tag)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile(archive.getmembers()[0])
            assert member is not None
            return member.read()
    finally:
        container.remove(force=True)
