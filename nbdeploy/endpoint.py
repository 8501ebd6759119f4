"""Endpoint: the handle a user holds on one running deployment."""

from __future__ import annotations

import sqlite3
from functools import cached_property
from typing import Any

import numpy as np

from nbdeploy import deployment
from nbdeploy._errors import DeployError
from nbdeploy._tensors import as_feeds
from nbdeploy._types import Signature
from nbdeploy.client import V2Client
from nbdeploy.runtimes import Runtime, RuntimeHandle, get_runtime
from nbdeploy.vocabulary import (
    PROXY_PREFIX,
    Deployment,
    DeploymentView,
    LatencySource,
    ServerSettings,
    ServerStatus,
    VersionView,
)


class Endpoint:
    """A name's V2 inference endpoint on 127.0.0.1, over its stable version's record.

    The URL stays the same for the life of the name: redeploys, canaries, promotions and
    rollbacks change what the server holds, not where it listens.
    """

    def __init__(self, record: Deployment) -> None:
        self.record = record

    name = property(lambda self: self.record.name)
    version = property(lambda self: self.record.version)
    runtime = property(lambda self: self.record.runtime)
    url = property(lambda self: self.record.url)
    token = property(lambda self: self.record.token)
    deployment_id = property(lambda self: self.record.id)
    created_at = property(lambda self: self.record.created_at)

    @property
    def settings(self) -> ServerSettings:
        """The server settings it was launched with (batching, CPUs, memory), kept on rollback."""
        return self.record.settings

    @property
    def handle(self) -> RuntimeHandle:
        return RuntimeHandle.from_dict(self.record.handle)

    @property
    def grpc_url(self) -> str | None:
        """``127.0.0.1:PORT`` of the same server's V2 gRPC service (what
        ``tritonclient.grpc.InferenceServerClient`` takes), None when it has none."""
        port = self.record.handle.get("grpc_port")
        return f"127.0.0.1:{port}" if port else None

    @property
    def headers(self) -> dict[str, str]:
        """Headers any HTTP client needs for the model routes (the bearer token, if any)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @cached_property
    def client(self) -> V2Client:
        return V2Client(self.url, token=self.token)

    @cached_property
    def signature(self) -> Signature:
        return self.artifact.signature

    @cached_property
    def artifact(self) -> Any:
        """The registered version this endpoint serves (a ModelArtifact)."""
        from nbdeploy.repository import ModelRepository

        return ModelRepository().get(self.name, self.version)

    def _runtime(self) -> Runtime:
        return get_runtime(self.runtime)

    @property
    def status(self) -> ServerStatus:
        """``running``, ``starting``, ``restarting``, ``exited`` or ``missing``, asked live."""
        try:
            return self._runtime().status(self.handle)
        except (DeployError, KeyError, ValueError, TypeError):  # gone, or a row without a handle
            return "missing"

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata the server reports (name, versions, inputs, outputs)."""
        return self.client.metadata(self.name)

    def logs(self, tail: int = 200) -> str:
        return self._runtime().logs(self.handle, tail=tail)

    def predict(
        self, x: Any, *, outputs: list[str] | None = None, binary: bool = True
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run the model on ``x``: an array, a list, a tuple of arrays, a dict of named inputs,
        or a pandas DataFrame (for a model with one input per column, the columns it names are
        sent, as strings for string inputs; extra columns are ignored, missing ones are an
        InputError naming them).

        Returns one array for a single-output model, else a dict of arrays by output name.
        """
        feeds = as_feeds(self.signature, x)
        result = self.client.infer(self.name, feeds, outputs=outputs, binary=binary)
        return next(iter(result.values())) if len(result) == 1 else result

    def predict_frame(self, x: Any) -> Any:
        """The answers for ``x`` (a DataFrame, or anything :meth:`predict` takes) as a pandas
        DataFrame with one row per input row, indexed like ``x`` when it is a DataFrame.

        Columns: for a classifier, ``label`` (the predicted class, under the ``labels`` given at
        deploy when there are any) and one ``p(<class>)`` column per class holding the
        probabilities exactly as the endpoint returned them (for a model that returns logits,
        their softmax); for a regressor, ``prediction`` (or ``prediction_0``, ``prediction_1``,
        ... for several targets). What each output is comes from what the export recorded
        (``metadata["outputs"]``).
        """
        result = self.predict(x)
        if not isinstance(result, dict):
            result = {self.signature.outputs[0].name: result}
        artifact = self._artifact_or_none()
        record = (artifact.metadata.get("outputs") if artifact else None) or {}
        labels = artifact.labels if artifact else None
        index = x.index if hasattr(x, "index") and hasattr(x, "columns") else None
        return prediction_frame(result, record, index=index, labels=labels)

    @property
    def traffic(self) -> dict[int, int]:
        """``{version: percent}`` of unversioned requests, as the server applies it now."""
        return deployment.traffic(self.name)

    @property
    def versions(self) -> list[VersionView]:
        """Every version the server holds, stable first, with its share and live numbers."""
        return deployment.version_views(self.name)[0]

    def stop(self) -> None:
        """Stop this name's server and retire every version it held."""
        deployment.stop(self.record)

    @property
    def network(self) -> str | None:
        """A container's network mode (``host`` or ``bridge``), None for a local process."""
        return self.record.handle.get("network")

    def view(self) -> DeploymentView:
        """What every surface shows of this deployment, with its live status."""
        from nbdeploy.demo import demo_url

        artifact = self._artifact_or_none()
        latency, source = served_latency(self.record, artifact)
        versions, guard = deployment.version_views(self.name)
        return DeploymentView(
            name=self.name,
            version=self.version,
            runtime=self.runtime,
            format=artifact.metadata.get("format", "onnx") if artifact else "onnx",
            state=self.record.state,
            status=self.status,
            owner=self.record.owner,
            url=self.url,
            infer_url=self.record.infer_url,
            proxy_path=f"{PROXY_PREFIX}/{self.name}/",
            created_at=self.created_at,
            variant=artifact.variant if artifact else None,
            p50_ms=latency["p50_ms"] if latency else None,
            p99_ms=latency["p99_ms"] if latency else None,
            latency_source=source,
            demo_url=demo_url(self.name),
            versions=versions,
            guard=guard,
            network=self.network,
            drift=deployment.drift_flag(self.name),
        )

    def _artifact_or_none(self) -> Any:
        """The served version, or None when its files are gone (one broken row hides nothing)."""
        from nbdeploy._errors import NbdeployError

        try:
            return self.artifact
        except (NbdeployError, OSError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return self.view().to_dict()

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} v{self.version} {self.runtime} {self.url}>"

    def _repr_html_(self) -> str:
        import html

        from nbdeploy.demo import links

        try:
            through = links(self.name)["endpoint"]
        except DeployError:  # stopped meanwhile: only the direct address is left to show
            through = None
        direct = f"<code>{html.escape(self.record.infer_url)}</code>"
        where = (
            f"<a href='{html.escape(through)}' target='_blank'>through Jupyter</a> &middot; {direct}"
            if through and not through.startswith("http://127.0.0.1")
            else direct
        )
        return (
            f"<b>{html.escape(self.name)}</b> v{self.version} &middot; {self.runtime} &middot; "
            f"{where} &middot; {self.status}"
        )

    def demo(self, *, top_k: int = 5) -> Any:
        """This endpoint's demo as an inline widget (the Voila demo page's own code), calling it
        from the kernel; ``nbd.demo(name)`` serves the shareable page."""
        from nbdeploy.demo import inline_demo

        return inline_demo(self.name, top_k=top_k)


def prediction_frame(
    outputs: dict[str, np.ndarray],
    record: dict[str, dict[str, Any]] | None = None,
    *,
    index: Any = None,
    labels: list[str] | None = None,
) -> Any:
    """Outputs of a batch as a DataFrame: ``label`` and ``p(<class>)`` columns for a classifier,
    ``prediction`` for a regressor (see :meth:`Endpoint.predict_frame`).

    ``record`` is ``metadata["outputs"]``; outputs it does not name (older exports) are
    classified by the export's own rule. Probabilities are copied as returned, never
    renormalised.
    """
    import pandas as pd

    from nbdeploy.exporters import output_kind

    kinds = {
        name: (record or {}).get(name, {}).get("kind") or output_kind(values)
        for name, values in outputs.items()
    }

    def first(kind: str) -> str | None:
        return next((name for name, k in kinds.items() if k == kind), None)

    columns: dict[str, Any] = {}
    scores = first("probabilities") or first("logits")
    classes: list[Any] = []
    probabilities = None
    if scores is not None:
        values = np.asarray(outputs[scores])
        values = values.reshape(len(values), -1)
        if kinds[scores] == "logits":
            shifted = np.exp(values - values.max(axis=1, keepdims=True))
            values = shifted / shifted.sum(axis=1, keepdims=True)
        probabilities = values
        recorded = (record or {}).get(scores, {}).get("classes")
        classes = next(
            (list(c) for c in (labels, recorded) if c and len(c) == values.shape[1]),
            list(range(values.shape[1])),
        )
    label = first("label")
    if label is not None:
        values = np.asarray(outputs[label]).reshape(-1)
        found = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
        recorded = [str(c) for c in (record or {}).get(label, {}).get("classes") or []]
        if labels and classes == list(labels) and len(recorded) == len(classes):
            found = [classes[recorded.index(str(v))] if str(v) in recorded else v for v in found]
        columns["label"] = found
    elif probabilities is not None:
        columns["label"] = [classes[i] for i in probabilities.argmax(axis=1)]
    if probabilities is not None:
        for i, name in enumerate(classes):
            columns[f"p({name})"] = probabilities[:, i]
    if not columns:
        value = first("value") or next(iter(outputs))
        values = np.asarray(outputs[value])
        values = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
        if values.shape[1] == 1:
            columns["prediction"] = values[:, 0]
        else:
            for i in range(values.shape[1]):
                columns[f"prediction_{i}"] = values[:, i]
    rows = len(next(iter(columns.values())))
    if index is not None and len(index) != rows:
        index = None
    return pd.DataFrame(columns, index=index)


def served_latency(
    record: Deployment, artifact: Any
) -> tuple[dict[str, Any] | None, LatencySource | None]:
    """The latency to list for a deployment and where it was measured: the latest HTTP
    benchmark of this deployment when there is one (``endpoint``), else the artifact's
    in-process benchmark (``in-process``), else nothing."""
    from nbdeploy.store import Store

    try:
        saved = Store().endpoint_benchmark(record.id, name=record.name, version=record.version)
    except sqlite3.Error:
        saved = None
    latency = benchmark_latency(saved["report"], None) if saved else None
    if latency is not None:
        return latency, "endpoint"
    latency = benchmark_latency(artifact.benchmark, artifact.variant) if artifact else None
    return latency, "in-process" if latency is not None else None


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
