"""Prometheus metrics of one server, in a private registry (no process-global state), and
the plain cumulative counters per version that ``/nbdeploy/series`` samples every second.

The metrics every request touches are plain numbers turned into Prometheus families only when
scraped (``Family``): ``prometheus_client``'s own types take a lock and walk every bucket on
each observation, which made up a tenth of a small request's time. Each labelled child has one
writer at a time (the event loop; a version's batch metrics its onnxruntime thread while a
queued batch runs there, the loop when a lone request runs inline, never both at once)."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class Value:
    """One labelled counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Buckets:
    """One labelled histogram: a count per bucket (not cumulative; +Inf last) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Family(Collector):
    """A Prometheus counter, gauge or histogram with labels, kept as plain numbers and made
    into its metric family when the registry is collected."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        *,
        kind: str,
        buckets: tuple[float, ...] = (),
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.kind = kind
        self.buckets = tuple(float(bound) for bound in buckets)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()  # creating children (the gRPC port's thread may too)
        registry.register(self)

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            with self._lock:
                child = self._children.get(values)
                if child is None:
                    child = Buckets(self.buckets) if self.kind == "histogram" else Value()
                    self._children[values] = child
        return child

    def collect(self) -> Iterator[Metric]:
        children = list(self._children.items())
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, child in children:
                counter.add_metric(values, child.value)
            yield counter
        elif self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, child in children:
                gauge.add_metric(values, child.value)
            yield gauge
        else:
            histogram = Metric(self.name, self.documentation, "histogram")
            bounds = [floatToGoString(bound) for bound in (*self.buckets, float("inf"))]
            for values, child in children:
                labels = dict(zip(self.labelnames, values, strict=True))
                count = 0
                for bound, bucket in zip(bounds, child.counts, strict=True):
                    count += bucket
                    histogram.add_sample(f"{self.name}_bucket", {**labels, "le": bound}, count)
                histogram.add_sample(f"{self.name}_count", labels, count)
                histogram.add_sample(f"{self.name}_sum", labels, child.sum)
            yield histogram


class Readings(Collector):
    """Gauges read from the server's live state when scraped: nothing to keep up to date on
    the request path. ``readings`` maps each name to its help text and how to read it."""

    def __init__(self, readings: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, read) in self.readings.items():
            yield GaugeMetricFamily(name, documentation, value=read())


def Counter(name: str, documentation: str, labelnames: list[str], *, registry: Any) -> Family:  # noqa: N802 - named as the type it stands for
    return Family(name, documentation, labelnames, kind="counter", registry=registry)


def Gauge(name: str, documentation: str, labelnames: list[str], *, registry: Any) -> Family:  # noqa: N802
    return Family(name, documentation, labelnames, kind="gauge", registry=registry)


def Histogram(  # noqa: N802
    name: str,
    documentation: str,
    labelnames: list[str],
    *,
    buckets: tuple[float, ...],
    registry: Any,
) -> Family:
    return Family(
        name, documentation, labelnames, kind="histogram", buckets=buckets, registry=registry
    )


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
