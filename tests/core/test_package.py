"""Package-level promises: public names, one version everywhere, no heavy imports on import."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import nbdeploy
import nbdeploy.serve

PUBLIC = [
    "export",
    "quantize",
    "benchmark",
    "register",
    "models",
    "deploy",
    "deployments",
    "get",
    "undeploy",
    "rollback",
    "ModelArtifact",
    "Signature",
    "BenchmarkReport",
    "Endpoint",
    "DeployPanel",
    "NbdeployError",
    "InferenceError",
    "Deployment",
    "DeploymentView",
    "ServerSettings",
    "ProgressEvent",
]


def test_public_names_resolve() -> None:
    for name in PUBLIC:
        assert getattr(nbdeploy, name) is not None, name
    assert callable(nbdeploy.export) and nbdeploy.export.__module__ == "nbdeploy.api"


def test_one_version_for_package_and_server_image() -> None:
    assert nbdeploy.__version__ == nbdeploy.serve.__version__ == version("nbdeploy")


def test_import_pulls_in_no_framework_or_jupyter() -> None:
    code = (
        "import sys, nbdeploy\n"
        "heavy = ('torch', 'tensorflow', 'keras', 'sklearn', 'onnxruntime', 'IPython', 'ipywidgets',"
        " 'jupyter_server', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
