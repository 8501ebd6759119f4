"""The example notebooks, executed end to end by a real kernel (nbclient) on the process runtime."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

pytestmark = pytest.mark.slow


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """Execute a notebook in ``tmp_path``; afterwards stop whatever it left running."""
    monkeypatch.setenv("NBDEPLOY_RUNTIME", "process")

    def run(name: str) -> nbformat.NotebookNode:
        from nbclient import NotebookClient

        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=240,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
        return notebook

    yield run
    import nbdeploy as nbd
    from nbdeploy.demo import running_demos, stop_demo

    leftovers = [endpoint.name for endpoint in nbd.deployments()]
    demos = [server.name for server in running_demos()]
    for name in leftovers:
        nbd.undeploy(name)
    for name in demos:
        stop_demo(name)
    assert leftovers == [], "the notebook should stop its deployments"
    assert demos == [], "the notebook should stop its demo server"


def text_of(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_example_notebooks_are_clean_and_use_the_runtime_setting():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3", path.name
        sources = "\n".join(cell.source for cell in notebook.cells)
        assert 'os.environ.get("NBDEPLOY_RUNTIME", "auto")' in sources, path.name
        assert all(not cell.get("outputs") for cell in notebook.cells), f"{path.name} has outputs"


def test_quickstart_torch(run_notebook):
    import nbdeploy as nbd

    notebook = run_notebook("quickstart_torch.ipynb")
    text = text_of(notebook)
    assert "test accuracy" in text and "int8:" in text
    assert "DemoServer(name='example-digits', url='http://127.0.0.1:" in text
    versions = [row for row in nbd.models() if row["name"] == "example-digits"]
    assert len(versions) == 1 and versions[0]["variant"].startswith("int8")


def test_keras_tabular(run_notebook):
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    notebook = run_notebook("keras_tabular.ipynb")
    assert "endpoint accuracy" in text_of(notebook)
    spec = demo_spec(ModelRepository().get("example-breast-cancer"))
    assert spec["kind"] == "tabular"
    assert spec["preprocessing"]["feature_names"][0] == "mean radius"
    assert spec["labels"] == ["malignant", "benign"]


def test_onnx_file(run_notebook, tmp_path):
    notebook = run_notebook("onnx_file.ipynb")
    text = text_of(notebook)
    assert "example-iris-cli v1 is serving at http://127.0.0.1:" in text
    assert "stopped example-iris-cli" in text
    assert "agrees with scikit-learn on all 150 rows" in text
    assert (tmp_path / "iris.onnx").is_file()


def test_tabular_pipeline(run_notebook):
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    notebook = run_notebook("tabular_pipeline.ipynb")
    text = text_of(notebook)
    assert "endpoint agrees with scikit-learn on 100% of 143 held-out rows" in text
    assert "('size', 'BYTES')" in text
    assert "DemoServer(name='example-tabular-pipeline', url='http://127.0.0.1:" in text
    spec = demo_spec(ModelRepository().get("example-tabular-pipeline"))
    assert "mean radius" in json.dumps(spec) and "medium" in json.dumps(spec)


def test_text_and_python_models(run_notebook):
    notebook = run_notebook("text_and_python_models.ipynb")
    text = text_of(notebook)
    assert "text BYTES -> ['negative', 'positive']" in text
    assert "endpoint says: ['positive', 'negative']" in text
    assert "python ['positive', 'negative']" in text


def test_canary_and_compare(run_notebook):
    notebook = run_notebook("canary_and_compare.ipynb")
    text = text_of(notebook)
    assert "{1: 90, 2: 10}" in text
    assert "v2 agrees with v1 on" in text
    assert "-> traffic {1: 100}" in text or "-> traffic {2: 100}" in text
    assert "{'1'} {1: 100}" in text  # the shadow never answered a client
    assert "True" in text  # the URL never changed
