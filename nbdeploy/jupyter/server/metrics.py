"""Summarise an endpoint's Prometheus ``/metrics`` text into the few numbers a sidebar shows.

The endpoint exports raw counters and histograms; quantiles are estimated from the histogram
buckets the same way Prometheus' ``histogram_quantile`` does (linear within a bucket), so the
numbers agree with what a Grafana panel on the same endpoint would show.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "nbdeploy_http_requests"
LATENCY = "nbdeploy_http_request_duration_seconds"
BATCH_ROWS = "nbdeploy_batch_size"
BATCH_REQUESTS = "nbdeploy_batch_requests"
QUEUE = "nbdeploy_queue_duration_seconds"
COMPUTE = "nbdeploy_inference_duration_seconds"
PENDING = "nbdeploy_pending_requests"


class Histogram:
    """Cumulative bucket counts (merged over label sets), with their sum and count."""

    def __init__(self) -> None:
        self.buckets: dict[float, float] = defaultdict(float)
        self.count = 0.0
        self.total = 0.0

    def add(self, sample_name: str, labels: dict[str, str], value: float) -> None:
        if sample_name.endswith("_bucket"):
            self.buckets[float(labels["le"])] += value
        elif sample_name.endswith("_count"):
            self.count += value
        elif sample_name.endswith("_sum"):
            self.total += value

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile; None without observations."""
        if not self.count or not self.buckets:
            return None
        bounds = sorted(self.buckets)
        rank = q * self.buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        for upper in bounds:
            cumulative = self.buckets[upper]
            if cumulative >= rank:
                if math.isinf(upper):
                    return lower
                if cumulative == below:
                    return upper
                return lower + (upper - lower) * (rank - below) / (cumulative - below)
            lower, below = upper, cumulative
        return lower

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        def scaled(value: float | None) -> float | None:
            return None if value is None else round(value * scale, 4)

        return {
            "count": int(self.count),
            "mean": scaled(self.mean),
            "p50": scaled(self.quantile(0.5)),
            "p99": scaled(self.quantile(0.99)),
        }


def _is_infer(labels: dict[str, str]) -> bool:
    return labels.get("route", "").endswith("/infer")


def summarize(text: str) -> dict[str, Any]:
    """Request counts by status, infer latency (ms), batch sizes and queue/compute times."""
    by_status: dict[str, int] = defaultdict(int)
    infer_by_status: dict[str, int] = defaultdict(int)
    histograms = {
        name: Histogram() for name in (LATENCY, BATCH_ROWS, BATCH_REQUESTS, QUEUE, COMPUTE)
    }
    pending = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                by_status[labels.get("status", "?")] += int(sample.value)
                if _is_infer(labels):
                    infer_by_status[labels.get("status", "?")] += int(sample.value)
            elif family.name == LATENCY:
                if _is_infer(labels):
                    histograms[LATENCY].add(sample.name, labels, sample.value)
            elif family.name in histograms:
                histograms[family.name].add(sample.name, labels, sample.value)
            elif family.name == PENDING:
                pending += sample.value
    return {
        "requests": {
            "total": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "infer_total": sum(infer_by_status.values()),
            "infer_by_status": dict(sorted(infer_by_status.items())),
        },
        "latency_ms": histograms[LATENCY].summary(scale=1000.0),
        "batch_size": histograms[BATCH_ROWS].summary(),
        "requests_per_batch": histograms[BATCH_REQUESTS].summary(),
        "queue_ms": histograms[QUEUE].summary(scale=1000.0),
        "inference_ms": histograms[COMPUTE].summary(scale=1000.0),
        "pending": int(pending),
    }
