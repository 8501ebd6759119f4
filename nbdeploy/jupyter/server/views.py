"""Plain-JSON views of deployments for the REST API (blocking: call them in a worker thread).

Each view reads what the core already knows (the store, the version's ``nbdeploy.json``, the
runtime's live status); none of them changes anything.
"""

from __future__ import annotations

from typing import Any

from nbdeploy import api
from nbdeploy._errors import NbdeployError
from nbdeploy.artifact import ModelArtifact
from nbdeploy.endpoint import Endpoint

PROXY_PREFIX = "nbdeploy/proxy"


def proxy_path(name: str) -> str:
    """Where the endpoint answers behind Jupyter, relative to Jupyter's base URL."""
    return f"{PROXY_PREFIX}/{name}/"


def benchmark_latency(report: dict[str, Any] | None, variant: str | None) -> dict[str, Any] | None:
    """p50/p99 of the benchmark row that best describes the served model, if any was measured.

    Prefers rows of the served variant, then batch size 1, then a single client, then
    onnxruntime over other engines (an eager framework baseline is not what is served).
    """
    rows = [
        row
        for row in (report or {}).get("results") or []
        if row.get("status", "ok") == "ok" and row.get("p50_ms") is not None
    ]
    if not rows:
        return None

    def rank(row: dict[str, Any]) -> tuple[Any, ...]:
        return (
            variant is None or row.get("variant") != variant,
            row.get("batch_size") != 1,
            row.get("concurrency", 1) != 1,
            row.get("engine") != "onnxruntime",
            row.get("batch_size") or 0,
        )

    best = min(rows, key=rank)
    return {
        "p50_ms": best.get("p50_ms"),
        "p99_ms": best.get("p99_ms"),
        "batch_size": best.get("batch_size"),
        "target": best.get("target"),
        "engine": best.get("engine"),
    }


def demo_url(name: str, voila_root: str | None = None) -> str | None:
    """Where the demo of ``name`` can be opened, or None when there is none.

    With ``voila_root`` (the root dir of a Jupyter server running Voila's server extension) and
    the demo notebook under it, a path relative to Jupyter's base URL, which works for remote
    users too; otherwise the URL of a Voila server :mod:`nbdeploy.demo` runs on 127.0.0.1.
    """
    from nbdeploy import demo

    if voila_root is not None and demo.demo_path(name).exists():
        try:
            return demo.voila_extension_path(name, voila_root)
        except NbdeployError:
            pass
    return next((server.url for server in demo.running_demos() if server.name == name), None)


def _registered(endpoint: Endpoint) -> ModelArtifact:
    return api.model(endpoint.name, endpoint.version)


def deployment_row(
    endpoint: Endpoint, artifact: ModelArtifact | None = None, *, voila_root: str | None = None
) -> dict[str, Any]:
    """One sidebar row: identity, live status, URLs, demo and the last benchmark's latency."""
    artifact = artifact or _registered(endpoint)
    latency = benchmark_latency(artifact.benchmark, artifact.variant)
    return {
        "name": endpoint.name,
        "version": endpoint.version,
        "runtime": endpoint.runtime,
        "status": endpoint.status,
        "url": endpoint.url,
        "infer_url": f"{endpoint.url}/v2/models/{endpoint.name}/infer",
        "proxy_path": proxy_path(endpoint.name),
        "created": endpoint.created_at,
        "variant": artifact.variant,
        "p50_ms": latency["p50_ms"] if latency else None,
        "p99_ms": latency["p99_ms"] if latency else None,
        "benchmark": latency,
        "demo_url": demo_url(endpoint.name, voila_root),
    }


def list_deployments(*, voila_root: str | None = None) -> list[dict[str, Any]]:
    return [deployment_row(endpoint, voila_root=voila_root) for endpoint in api.deployments()]


def deployment_detail(endpoint: Endpoint, *, voila_root: str | None = None) -> dict[str, Any]:
    """A row plus the registered metadata, the signature and every registered version."""
    artifact = _registered(endpoint)
    model = artifact.to_dict()
    signature = model.pop("signature")
    versions = [
        {
            "version": row["version"],
            "variant": row.get("variant"),
            "framework": row.get("framework"),
            "size_bytes": row.get("size_bytes"),
            "sha256": row.get("sha256"),
            "created": row.get("created_at"),
            "serving": row["version"] == endpoint.version,
        }
        for row in api.models()
        if row["name"] == endpoint.name
    ]
    return {
        **deployment_row(endpoint, artifact, voila_root=voila_root),
        "signature": signature,
        "model": model,
        "versions": versions,
    }
