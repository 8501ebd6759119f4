"""Prometheus metrics of one server, in a private registry (no process-global state), and
the plain cumulative counters per version that ``/nbdeploy/series`` samples every second."""

from __future__ import annotations

import bisect
import itertools
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class VersionCounters:
    """Cumulative numbers of one model version since the server started, like Prometheus
    counters but cheap to copy: answered requests, their latency per bucket, batching and
    queueing. Each field has one writer (the event loop, or the version's onnxruntime thread
    for the batch fields), so plain integers need no lock."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.batch_rows = 0
        self.batches = 0
        self.queue_s = 0.0
        self.queued = 0

    def answered(self, seconds: float, *, error: bool) -> None:
        if error:
            self.errors += 1
        else:
            self.ok += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as ``/nbdeploy/series`` shows them (latency cumulative, as ``le``)."""
        return {
            "ok": self.ok,
            "errors": self.errors,
            "latency": list(itertools.accumulate(self.latency)),
            "batch_rows": self.batch_rows,
            "batches": self.batches,
            "queue_s": round(self.queue_s, 6),
            "queued": self.queued,
        }


class Metrics:
    """HTTP traffic by route template, and batching behaviour by model version."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nbdeploy_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nbdeploy_http_request_duration_seconds",
            "Time from receiving a request to sending its response.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "nbdeploy_batch_size",
            "Rows (axis 0) in each onnxruntime run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "nbdeploy_batch_requests",
            "Infer requests merged into each onnxruntime run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "nbdeploy_queue_duration_seconds",
            "Time an infer request waited for its onnxruntime run to start.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "nbdeploy_inference_duration_seconds",
            "Duration of each onnxruntime run, including merging and splitting the batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pending = Gauge(
            "nbdeploy_pending_requests",
            "Infer requests queued or running in onnxruntime right now.",
            ["model", "version"],
            registry=self.registry,
        )
        # Label names avoid ``deployment`` and ``runtime``: Prometheus targets carry those.
        self.model_requests = Counter(
            "nbdeploy_model_requests",
            "Infer requests answered by each model version: ok (2xx) or error (5xx, or the"
            " model failed to run); refused requests (other 4xx) and mirrored calls are not"
            " counted.",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "nbdeploy_model_request_duration_seconds",
            "Time to answer an infer request, by the model version that answered it.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.monitoring_dropped = Counter(
            "nbdeploy_monitoring_dropped",
            "Answered requests not observed for drift or the request log because the"
            " monitoring queue was full.",
            ["model", "version"],
            registry=self.registry,
        )
        self.counters: dict[tuple[str, int], VersionCounters] = {}
        # labelled children by their labels: ``labels()`` takes a lock and builds keys each call
        self._children: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def version_counters(self, model: str, version: int) -> VersionCounters:
        """The cumulative counters of one version, created on first use and kept for the
        life of the server (a version unloaded and loaded again continues its counts)."""
        key = (model, version)
        found = self.counters.get(key)
        if found is None:
            found = self.counters[key] = VersionCounters()
        return found

    def answered(self, model: str, version: int, seconds: float, *, error: bool) -> None:
        """One infer request answered by ``model`` v``version`` in ``seconds``."""
        key = ("model", model, version, error)
        children = self._children.get(key)
        if children is None:
            labels = (model, str(version))
            children = self._children[key] = (
                self.model_requests.labels(*labels, "error" if error else "ok"),
                self.model_latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)
        self.version_counters(model, version).answered(seconds, error=error)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = ("http", method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
