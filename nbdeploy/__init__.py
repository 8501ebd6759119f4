"""nbdeploy: from a notebook cell to a quantized, benchmarked, running model endpoint.

Everything public is re-exported here lazily, so ``import nbdeploy`` stays fast and imports
no framework (torch, tensorflow) and no Jupyter package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "export": "nbdeploy.api",
    "quantize": "nbdeploy.api",
    "benchmark": "nbdeploy.api",
    "register": "nbdeploy.api",
    "model": "nbdeploy.api",
    "models": "nbdeploy.api",
    "deploy": "nbdeploy.api",
    "deployments": "nbdeploy.api",
    "get": "nbdeploy.api",
    "undeploy": "nbdeploy.api",
    "rollback": "nbdeploy.api",
    "promote": "nbdeploy.api",
    "set_traffic": "nbdeploy.api",
    "stop_version": "nbdeploy.api",
    "traffic": "nbdeploy.api",
    "compare": "nbdeploy.api",
    "remove": "nbdeploy.api",
    "prune": "nbdeploy.api",
    "stats": "nbdeploy.api",
    "drift": "nbdeploy.api",
    "requests": "nbdeploy.api",
    "push": "nbdeploy.api",
    "kubernetes": "nbdeploy.api",
    "StatsReport": "nbdeploy.telemetry",
    "DriftReport": "nbdeploy.drift_profile",
    "CompareReport": "nbdeploy.comparison",
    "PruneReport": "nbdeploy.retention",
    "Guards": "nbdeploy.vocabulary",
    "VersionView": "nbdeploy.vocabulary",
    "ModelArtifact": "nbdeploy.artifact",
    "Signature": "nbdeploy._types",
    "TensorSpec": "nbdeploy._types",
    "Parity": "nbdeploy._types",
    "Quantization": "nbdeploy._types",
    "BenchmarkReport": "nbdeploy.bench",
    "Endpoint": "nbdeploy.endpoint",
    "Deployment": "nbdeploy.vocabulary",
    "DeploymentView": "nbdeploy.vocabulary",
    "ServerSettings": "nbdeploy.vocabulary",
    "ProgressEvent": "nbdeploy.vocabulary",
    "DeployPanel": "nbdeploy.jupyter.panel",
    "Monitor": "nbdeploy.jupyter.monitor",
    "NbdeployError": "nbdeploy._errors",
    "ExportError": "nbdeploy._errors",
    "ParityError": "nbdeploy._errors",
    "QuantizeError": "nbdeploy._errors",
    "BenchmarkError": "nbdeploy._errors",
    "RepositoryError": "nbdeploy._errors",
    "DeployError": "nbdeploy._errors",
    "InputError": "nbdeploy._errors",
    "InferenceError": "nbdeploy._errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from nbdeploy._errors import (
        BenchmarkError,
        DeployError,
        ExportError,
        InferenceError,
        InputError,
        NbdeployError,
        ParityError,
        QuantizeError,
        RepositoryError,
    )
    from nbdeploy._types import Parity, Quantization, Signature, TensorSpec
    from nbdeploy.api import (
        benchmark,
        compare,
        deploy,
        deployments,
        drift,
        export,
        get,
        model,
        models,
        promote,
        prune,
        quantize,
        register,
        remove,
        requests,
        rollback,
        set_traffic,
        stats,
        stop_version,
        traffic,
        undeploy,
    )
    from nbdeploy.artifact import ModelArtifact
    from nbdeploy.bench import BenchmarkReport
    from nbdeploy.comparison import CompareReport
    from nbdeploy.drift_profile import DriftReport
    from nbdeploy.endpoint import Endpoint
    from nbdeploy.jupyter.monitor import Monitor
    from nbdeploy.jupyter.panel import DeployPanel
    from nbdeploy.retention import PruneReport
    from nbdeploy.telemetry import StatsReport
    from nbdeploy.vocabulary import (
        Deployment,
        DeploymentView,
        Guards,
        ProgressEvent,
        ServerSettings,
        VersionView,
    )


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdeploy``: register the ``%deploy`` family of magics, and put ``DeployPanel``
    and ``Monitor`` in the namespace (when ipywidgets is installed and the names are free)."""
    from nbdeploy.jupyter.magics import load_ipython_extension as load

    load(ipython)
    try:
        from nbdeploy.jupyter.monitor import Monitor
        from nbdeploy.jupyter.panel import DeployPanel
    except ImportError:
        return
    widgets = {"DeployPanel": DeployPanel, "Monitor": Monitor}
    ipython.push(
        {name: value for name, value in widgets.items() if name not in ipython.user_ns},
        interactive=False,
    )


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nbdeploy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
