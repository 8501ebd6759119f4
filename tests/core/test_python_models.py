"""Python models: a callable pickled with cloudpickle, checked in a fresh interpreter, served by
the same V2 server in a virtual environment (process runtime) or its own image layer (Docker)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nbdeploy._errors import DeployError, ExportError, InputError
from nbdeploy.artifact import ModelArtifact, sha256_file
from nbdeploy.exporters._python import export_python, is_python_model
from nbdeploy.repository import ModelRepository
from nbdeploy.runtimes import RuntimeHandle, free_port, get_runtime
from nbdeploy.runtimes.base import Runtime
from nbdeploy.runtimes.process import ProcessRuntime
from tests.helpers import python_models as pm
from tests.helpers.runtimes import needs_docker, shared_cache_dir, single_version_spec

TOKEN = "py-token"
CLOUDPICKLE = f"cloudpickle=={importlib.metadata.version('cloudpickle')}"
SKLEARN = f"scikit-learn=={importlib.metadata.version('scikit-learn')}"


# --- helpers ---------------------------------------------------------------------------------


def register(artifact: ModelArtifact) -> ModelArtifact:
    return ModelRepository().register(artifact)


@pytest.fixture
def started() -> Iterator[list[tuple[Runtime, RuntimeHandle]]]:
    """Servers to stop after the test, whatever happened."""
    handles: list[tuple[Runtime, RuntimeHandle]] = []
    yield handles
    for runtime, handle in handles:
        runtime.stop(handle, timeout=5)


def serve(
    runtime: Runtime, registered: ModelArtifact, started: list[tuple[Runtime, RuntimeHandle]]
) -> RuntimeHandle:
    spec = single_version_spec(
        registered.directory, registered.sha256, port=free_port(), token=TOKEN
    )
    handle = runtime.start(spec)
    started.append((runtime, handle))
    runtime.wait_ready(handle, timeout=300)
    return handle


def infer(
    handle: RuntimeHandle, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    return httpx.post(
        f"{handle.url}/v2/models/{handle.name}/infer",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )


def fp32(name: str, x: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        out["name"]: np.asarray(out["data"]).reshape(out["shape"])
        for out in response.json()["outputs"]
    }


# --- export ----------------------------------------------------------------------------------


def test_function_model_artifact_layout_signature_and_requirements() -> None:
    x, _ = pm.iris(8)
    artifact = export_python(pm.scaled_softmax, x, name="flowers", batch_safe=True)

    assert sorted(p.name for p in artifact.directory.iterdir()) == ["model.pkl", "nbdeploy.json"]
    assert artifact.path.name == "model.pkl" and artifact.framework == "python"
    stored = json.loads((artifact.directory / "nbdeploy.json").read_text())
    assert stored["model_file"] == "model.pkl"
    metadata = stored["metadata"]
    assert metadata["format"] == "python"
    assert metadata["method"] == "function"
    assert metadata["batch_safe"] is True
    assert metadata["pkl_sha256"] == sha256_file(artifact.path) == stored["onnx_sha256"]
    # numpy is the server's own; the helper module is not installed, so it travels by value
    assert metadata["requirements"] == [CLOUDPICKLE]
    assert metadata["pickled_by_value"] == ["tests"]
    assert metadata["python"] == "{}.{}".format(*sys.version_info[:2])

    sig = artifact.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("input", "float32", (-1, 4))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [
        ("label", "str", (-1,)),
        ("probabilities", "float32", (-1, 3)),
    ]
    assert metadata["outputs"] == {
        "label": {"kind": "label"},
        "probabilities": {"kind": "probabilities"},
    }
    assert artifact.parity is not None and artifact.parity.passed
    assert artifact.parity.max_abs_error == 0.0 and artifact.parity.samples == 8
    # The same function again is the same artifact (content-addressed).
    assert (
        export_python(pm.scaled_softmax, x, name="flowers", batch_safe=True).path == artifact.path
    )


def test_predict_proba_object_records_classes_and_its_requirements() -> None:
    x, _ = pm.iris(10)
    model = pm.threshold_classifier()
    artifact = export_python(model, x, name="irises")
    metadata = artifact.metadata

    assert metadata["method"] == "predict_proba"
    assert [c["method"] for c in metadata["calls"]] == ["predict", "predict_proba"]
    assert metadata["requirements"] == [CLOUDPICKLE, SKLEARN]
    assert artifact.labels == ["setosa", "versicolor", "virginica"]
    assert metadata["outputs"] == {
        "label": {"kind": "label", "classes": artifact.labels},
        "probabilities": {"kind": "probabilities", "classes": artifact.labels},
    }
    assert metadata["batch_safe"] is False
    # predict_proba alone when asked
    alone = export_python(model, x, name="irises", method="predict_proba")
    assert [s.name for s in alone.signature.outputs] == ["output"]
    assert alone.metadata["outputs"]["output"]["kind"] == "probabilities"


def test_requirements_given_are_pinned_and_checked() -> None:
    x, _ = pm.iris(4)
    artifact = export_python(
        pm.threshold_classifier(), x, name="pinned", requirements=["scikit-learn", "numpy"]
    )
    assert artifact.metadata["requirements"] == [CLOUDPICKLE, SKLEARN]  # numpy is the server's
    assert SKLEARN in artifact.metadata["requirements_detected"]
    with pytest.raises(InputError, match="the server ships numpy=="):
        export_python(pm.scaled_softmax, x, requirements=["numpy==1.0.0"])
    with pytest.raises(InputError, match="not installed here.*give one"):
        export_python(pm.scaled_softmax, x, requirements=["surely-not-installed-pkg"])
    with pytest.raises(InputError, match="does not satisfy it"):
        export_python(pm.scaled_softmax, x, requirements=["scikit-learn<1"])


def test_sample_types_give_the_signature() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"size": [0.5, -1.0, 2.0, 0.1], "colour": pd.Categorical(["red", "blue", "red", "green"])}
    )
    table = export_python(pm.frame_score, frame, name="table")
    sig = table.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [
        ("size", "float64", (-1, 1)),
        ("colour", "str", (-1, 1)),
    ]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [
        ("score", "float64", (-1,)),
        ("big", "str", (-1,)),
    ]
    assert table.metadata["call"]["style"] == "frame"
    assert "pandas==" + importlib.metadata.version("pandas") in table.metadata["requirements"]
    assert [c["kind"] for c in table.metadata["columns"]] == ["numeric", "categorical"]
    assert table.parity.passed  # rebuilt into a DataFrame (category dtype included) by the server

    texts = export_python(pm.shout, ["hello", "Wörld"], name="texts")
    assert [(s.name, s.dtype, s.shape) for s in texts.signature.inputs] == [("text", "str", (-1,))]
    assert [(s.name, s.dtype) for s in texts.signature.outputs] == [
        ("upper", "str"),
        ("length", "int64"),
    ]
    assert texts.input_kind == "text"

    a, b = np.ones((3, 2), np.float32), np.arange(9, dtype=np.float64).reshape(3, 3)
    both = export_python(pm.pair, (a, b), name="both")
    assert [(s.name, s.dtype, s.shape) for s in both.signature.inputs] == [
        ("input_0", "float32", (-1, 2)),
        ("input_1", "float64", (-1, 3)),
    ]
    assert [s.name for s in both.signature.outputs] == ["output"]


def test_batch_safe_is_checked_on_the_sample() -> None:
    x, _ = pm.iris(6)
    with pytest.raises(
        ExportError, match="batch_safe=True, but row 0 .* export with batch_safe=False"
    ):
        export_python(pm.centred, x, batch_safe=True)
    assert export_python(pm.centred, x).metadata["batch_safe"] is False


def test_a_model_that_fails_on_its_sample_is_one_readable_line() -> None:
    with pytest.raises(ExportError, match="raised ValueError: measurements must be below") as error:
        export_python(pm.scaled_softmax, np.full((2, 4), 1e6, np.float32))
    assert "this line is not shown" not in str(error.value)
    with pytest.raises(InputError, match="needs a sample"):
        export_python(pm.scaled_softmax, None)
    with pytest.raises(InputError, match="not a Python model"):
        export_python("model.onnx", np.zeros((1, 4)))


def test_is_python_model() -> None:
    assert is_python_model(pm.scaled_softmax)
    assert is_python_model(pm.threshold_classifier())
    assert is_python_model(lambda x: x)
    assert not is_python_model(pm.ThresholdClassifier)  # a class, not a model
    assert not is_python_model("path/to/model.onnx")
    assert not is_python_model(Path("model.onnx"))


def test_notebook_code_is_pickled_by_value_and_loads_without_the_notebook(tmp_path: Path) -> None:
    """A function and a class defined in ``__main__`` (a notebook) referring to a local module
    and importing scipy inside its body: detected, pinned, checked in a fresh interpreter."""
    (tmp_path / "helpers_local.py").write_text(
        "OFFSET = 0.25\n\ndef bump(x):\n    return x + OFFSET\n"
    )
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import helpers_local
        from nbdeploy.exporters._python import export_python

        class Model:
            def __init__(self, k):
                self.k = k
            def __call__(self, x):
                from scipy.special import expit
                return expit(helpers_local.bump(x) * self.k)

        art = export_python(Model(2.0), np.zeros((3, 2)), name="nb")
        print(json.dumps({"requirements": art.metadata["requirements"],
                          "by_value": art.metadata.get("pickled_by_value"),
                          "passed": art.parity.passed, "method": art.metadata["method"]}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requirements"] == [CLOUDPICKLE, f"scipy=={importlib.metadata.version('scipy')}"]
    assert result["by_value"] == ["helpers_local"]
    assert result["passed"] is True and result["method"] == "__call__"


def test_importing_the_exporter_loads_no_cloudpickle() -> None:
    code = (
        "import sys, nbdeploy, nbdeploy.exporters._python, nbdeploy.serve.python_model;"
        "assert 'cloudpickle' not in sys.modules; assert 'pandas' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- served in a virtual environment (process runtime) ----------------------------------------


def test_function_model_served_in_its_own_venv(started) -> None:
    x, _ = pm.iris(12)
    registered = register(export_python(pm.scaled_softmax, x[:8], name="flowers", batch_safe=True))
    runtime = ProcessRuntime()
    handle = serve(runtime, registered, started)

    # Never the kernel's interpreter: the server runs the venv's python, with sys.prefix there.
    command = Path(f"/proc/{handle.ref}/cmdline").read_text().split("\0")
    venvs = Path(os.environ["NBDEPLOY_CACHE"]) / "venvs"
    assert Path(command[0]).parent.parent.parent == venvs
    assert command[0] != sys.executable
    prefix = str(Path(command[0]).parent.parent)
    assert f"loaded in {prefix} (Python" in runtime.logs(handle)
    assert prefix != sys.prefix

    meta = httpx.get(
        f"{handle.url}/v2/models/flowers", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert meta["platform"] == "python_cloudpickle"
    assert meta["parameters"]["format"] == "python"
    assert meta["parameters"]["dynamic_batching"] is True  # declared batch-safe

    got = outputs_of(infer(handle, [fp32("input", x)]))
    want = pm.scaled_softmax(x)
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)

    # Wrong types and shapes are refused before the user's code runs.
    strings = {"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}
    wrong = infer(handle, [strings])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == (
        "input 'input' of model 'flowers' expects datatype FP32, the request gives BYTES"
    )
    assert infer(handle, [fp32("input", x[:, :3])]).status_code == 400
    assert "expects inputs ['input']" in infer(handle, [fp32("x", x)]).json()["error"]
    missing = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [None] * 4}
    assert "NaN" in infer(handle, [missing]).json()["error"]
    # The user's own error: a 400 with its first line, no traceback.
    raised = infer(handle, [fp32("input", np.full((1, 4), 5e3, np.float32))])
    assert raised.status_code == 400
    assert raised.json() == {
        "error": "model 'flowers' raised ValueError: measurements must be below 1000 cm"
    }
    # and the server keeps serving
    assert (
        outputs_of(infer(handle, [fp32("input", x[:1])]))["label"].tolist()
        == want["label"][:1].tolist()
    )


def test_strings_model_served_in_the_same_venv(started) -> None:
    registered = register(export_python(pm.shout, ["a", "bc"], name="shout", batch_safe=True))
    handle = serve(ProcessRuntime(), registered, started)
    text = {"name": "text", "shape": [3], "datatype": "BYTES", "data": ["hey", "Grüße", ""]}
    got = outputs_of(infer(handle, [text]))
    assert got["upper"].tolist() == ["HEY", "GRÜSSE", ""]
    assert got["length"].tolist() == [3, 5, 0]
    numbers = infer(handle, [fp32("text", np.ones(2, np.float32))])
    assert numbers.status_code == 400 and "expects datatype BYTES" in numbers.json()["error"]


def test_predict_proba_object_served_with_scikit_learn_installed_offline(started) -> None:
    x, _ = pm.iris()
    model = pm.threshold_classifier()
    registered = register(export_python(model, x[:10], name="irises"))
    runtime = ProcessRuntime()
    handle = serve(runtime, registered, started)
    venv = Path(Path(f"/proc/{handle.ref}/cmdline").read_text().split("\0")[0]).parent.parent
    assert (venv / ".nbdeploy-complete").read_text().count("scikit-learn==") == 1

    rows = x[100:140]
    got = outputs_of(infer(handle, [fp32("input", rows)]))
    assert got["label"].tolist() == model.predict(rows).tolist()
    np.testing.assert_allclose(
        got["probabilities"], model.predict_proba(rows), rtol=1e-5, atol=1e-7
    )
    assert (model.predict(rows) != model.model.predict(rows)).any()  # the threshold matters

    # The classification extension names the classes recorded from classes_.
    top = infer(
        handle,
        [fp32("input", rows[:1])],
        outputs=[{"name": "probabilities", "parameters": {"classification": 1}}],
    )
    assert outputs_of(top)["probabilities"].ravel()[0].split(":")[-1] in model.model.classes_

    raised = infer(handle, [fp32("input", -rows[:2])])
    assert raised.status_code == 400
    assert (
        raised.json()["error"]
        == "model 'irises' raised ValueError: measurements cannot be negative"
    )
    meta = httpx.get(
        f"{handle.url}/v2/models/irises", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert meta["parameters"]["dynamic_batching"] is False  # not declared batch-safe


def test_a_changed_pickle_is_refused_by_the_runtime_and_by_the_server(tmp_path: Path) -> None:
    x, _ = pm.iris(4)
    registered = register(export_python(pm.scaled_softmax, x, name="flowers"))
    copy = tmp_path / "repo" / "flowers" / "1"
    shutil.copytree(registered.directory, copy)
    (copy / "model.pkl").chmod(0o644)
    with open(copy / "model.pkl", "ab") as handle:
        handle.write(b"\x00")  # one byte appended: still loads with pickle, no longer the same

    spec = single_version_spec(copy, registered.sha256, port=free_port(), token=None)
    with pytest.raises(DeployError, match="refusing to run .*model.pkl: its sha256 .* differs"):
        ProcessRuntime().start(spec)

    # The server itself checks the sha256 recorded in nbdeploy.json before unpickling.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbdeploy.serve",
            "--model-repository",
            str(tmp_path / "repo"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "REFUSING to load flowers v1" in done.stdout
    assert "the file changed after registration" in done.stdout


# --- Docker ----------------------------------------------------------------------------------


@pytest.fixture
def docker_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Runtime:
    monkeypatch.setenv("NBDEPLOY_CACHE", str(shared_cache_dir(tmp_path_factory)))
    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    return get_runtime("docker")


@needs_docker
@pytest.mark.docker
def test_python_model_image_is_hardened_layered_and_answers(docker_env, started) -> None:
    from nbdeploy.runtimes import image

    runtime = docker_env
    x, _ = pm.iris(8)
    registered = register(export_python(pm.scaled_softmax, x, name="pyimg", batch_safe=True))
    handle = serve(runtime, registered, started)
    got = outputs_of(infer(handle, [fp32("input", x)]))
    assert got["label"].tolist() == pm.scaled_softmax(x)["label"].tolist()
    raised = infer(handle, [fp32("input", np.full((1, 4), 5e3, np.float32))])
    assert raised.status_code == 400 and "raised ValueError" in raised.json()["error"]

    container = runtime.container(handle)
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert config["User"] == "10001"
    assert container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert container.exec_run(["touch", "/app/x"]).exit_code != 0

    # Layers: server, + the requirements layer (cloudpickle); the model is mounted, not baked.
    client = runtime.client
    requirements_image = client.images.get(container.image.id)
    assert requirements_image.labels["nbdeploy.role"] == "requirements"
    assert any(t.startswith(image.REQUIREMENTS_REPOSITORY + ":") for t in requirements_image.tags)
    server_image = client.images.get(requirements_image.labels["nbdeploy.server"])
    server_layers = server_image.attrs["RootFS"]["Layers"]
    assert requirements_image.attrs["RootFS"]["Layers"][:-1] == server_layers
    assert container.exec_run(["ls", "/models/pyimg/1/model.pkl"]).exit_code == 0
    added = requirements_image.attrs["Size"] - server_image.attrs["Size"]
    assert 0 < added < 2 * 1024**2, added  # cloudpickle alone
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('cloudpickle') else 3)"
    assert container.exec_run(["python", "-c", probe]).exit_code == 0
    # An ONNX model's server image carries no cloudpickle.
    onnx_probe = client.containers.run(
        server_image.id,
        entrypoint=["python", "-c", probe],
        network_mode="none",
        remove=True,
        detach=True,
    )
    assert onnx_probe.wait(timeout=60)["StatusCode"] == 3
    print(
        f"\nimage sizes: server (ONNX models) {server_image.attrs['Size'] / 1e6:.1f} MB,"
        f" Python model {requirements_image.attrs['Size'] / 1e6:.1f} MB"
        f" (requirements layer {added / 1e3:.0f} kB)"
    )
