"""A DeploymentView to render without a running deployment (surface tests with scripted data)."""

from __future__ import annotations

from typing import Any

from nbdeploy.vocabulary import DeploymentView, VersionView


def deployment_view(
    name: str, versions: list[VersionView] | None = None, **fields: Any
) -> DeploymentView:
    """A running process deployment called ``name`` on port 9, its fields overridable."""
    values: dict[str, Any] = {
        "name": name,
        "version": 1,
        "runtime": "process",
        "format": "onnx",
        "state": "active",
        "status": "running",
        "owner": "",
        "url": "http://127.0.0.1:9",
        "infer_url": f"http://127.0.0.1:9/v2/models/{name}/infer",
        "proxy_path": f"nbdeploy/proxy/{name}/",
        "created_at": "2026-01-01T00:00:00",
        "variant": "fp32",
        "p50_ms": None,
        "p99_ms": None,
        "latency_source": None,
        "demo_url": None,
        "versions": versions if versions is not None else [VersionView(1, 100, "stable", 0, 0)],
    }
    return DeploymentView(**{**values, **fields})
