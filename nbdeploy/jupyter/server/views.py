"""Plain-JSON views of deployments for the REST API (blocking: call them in a worker thread).

Each row is the core's :class:`~nbdeploy.vocabulary.DeploymentView` (the record the
labextension's ``IDeployment`` mirrors), with the demo link made reachable through Jupyter
when Voila's server extension can render it; none of them changes anything.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nbdeploy import api
from nbdeploy.endpoint import Endpoint


def deployment_row(endpoint: Endpoint, *, voila_root: str | None = None) -> dict[str, Any]:
    """One sidebar row: identity, live status, URLs, demo and the last benchmark's latency."""
    view = endpoint.view()
    return replace(view, demo_url=api.demo_url(endpoint.name, jupyter_root=voila_root)).to_dict()


def list_deployments(*, voila_root: str | None = None) -> list[dict[str, Any]]:
    return [deployment_row(endpoint, voila_root=voila_root) for endpoint in api.deployments()]


def deployment_detail(endpoint: Endpoint, *, voila_root: str | None = None) -> dict[str, Any]:
    """A row plus the registered metadata, the signature and every registered version
    (``registered``; the row's ``versions`` are the ones its server holds)."""
    model = api.model(endpoint.name, endpoint.version).to_dict()
    signature = model.pop("signature")
    serving = {v.version for v in endpoint.versions} or {endpoint.version}
    registered = [
        {
            "version": row["version"],
            "variant": row.get("variant"),
            "framework": row.get("framework"),
            "size_bytes": row.get("size_bytes"),
            "sha256": row.get("sha256"),
            "created_at": row.get("created_at"),
            "serving": row["version"] in serving,
        }
        for row in api.models(endpoint.name)
    ]
    return {
        **deployment_row(endpoint, voila_root=voila_root),
        "signature": signature,
        "model": model,
        "registered": registered,
    }
