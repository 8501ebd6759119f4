"""Live numbers of a deployment: request rate, errors, latency quantiles, batching and the
split between versions, from the counters its server samples every second.

The server keeps a ring of cumulative counters (``GET /nbdeploy/series``, like Prometheus
counters sampled once a second); these functions take differences over a window, so the
numbers mean the same as ``rate()`` and ``histogram_quantile()`` over the same window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nbdeploy import _format

QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class VersionStats:
    """One version's numbers over the window (None where nothing was measured)."""

    version: int
    requests: int
    errors: int
    request_rate: float
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    batch_size: float | None
    queue_ms: float | None
    share: float | None
    """Its part of all requests answered in the window."""


@dataclass
class Point:
    """One step of the time series: when, and per version the rate and p99 over that step."""

    t: float
    request_rate: dict[int, float]
    p99_ms: dict[int, float | None]
    error_rate: dict[int, float | None]
    p50_ms: dict[int, float | None] = field(default_factory=dict)
    batch_size: dict[int, float | None] = field(default_factory=dict)
    queue_ms: dict[int, float | None] = field(default_factory=dict)


@dataclass
class StatsReport:
    """What ``nbd.stats(name)`` returns: totals and per-version numbers, and a series."""

    name: str
    window_s: float
    total: VersionStats
    versions: list[VersionStats]
    series: list[Point] = field(default_factory=list)
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for point in data["series"]:
            for key in ("request_rate", "p99_ms", "error_rate", "p50_ms", "batch_size", "queue_ms"):
                point[key] = {str(k): v for k, v in point[key].items()}
        return data

    def summary(self) -> str:
        total = self.total
        if not total.requests:
            return f"{self.name}: no requests in the last {self.window_s:.0f} s"
        errors = f"{total.error_rate:.1%} errors" if total.error_rate is not None else ""
        return (
            f"{self.name}: {total.request_rate:.1f} req/s over {self.window_s:.0f} s,"
            f" p50 {_format.ms(total.p50_ms)} ms, p99 {_format.ms(total.p99_ms)} ms, {errors}"
        ).rstrip(", ")

    def table(self) -> str:
        return _format.text_table(*self.table_rows()) + "\n" + self.summary()

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the table, for surfaces that draw it their own way."""
        rows = [
            [
                "all" if row is self.total else f"v{row.version}",
                f"{row.request_rate:.2f}",
                "-" if row.error_rate is None else f"{row.error_rate:.1%}",
                _format.ms(row.p50_ms) or "-",
                _format.ms(row.p95_ms) or "-",
                _format.ms(row.p99_ms) or "-",
                "-" if row.batch_size is None else f"{row.batch_size:.2f}",
                _format.ms(row.queue_ms) or "-",
                "-" if row.share is None else f"{row.share:.0%}",
            ]
            for row in (self.total, *self.versions)
        ]
        header = ["", "req/s", "errors", "p50 ms", "p95 ms", "p99 ms", "batch", "queue ms", "share"]
        return header, rows

    def __str__(self) -> str:
        return self.table()

    def plot(self) -> Any:
        """Request rate and p99 over the window, one line per version."""
        import matplotlib.pyplot as plt

        figure, (rates, latency) = plt.subplots(1, 2, figsize=(9, 2.8))
        start = self.series[0].t if self.series else 0.0
        for row in self.versions:
            times = [p.t - start for p in self.series]
            rates.plot(
                times,
                [p.request_rate.get(row.version, 0.0) for p in self.series],
                label=f"v{row.version}",
            )
            latency.plot(
                times,
                [_nan(p.p99_ms.get(row.version)) for p in self.series],
                label=f"v{row.version}",
            )
        rates.set_title("requests / s", fontsize="small")
        latency.set_title("p99 latency (ms)", fontsize="small")
        for axis in (rates, latency):
            axis.set_xlabel("seconds", fontsize="x-small")
            axis.tick_params(labelsize="x-small")
        if self.versions:
            rates.legend(fontsize="x-small")
        figure.suptitle(self.summary(), fontsize="small")
        figure.tight_layout()
        return figure

    def _repr_html_(self) -> str:
        import html

        picture = ""
        try:
            import matplotlib.pyplot as plt

            figure = self.plot()
            picture = _format.figure_img(figure, f"stats of {self.name}", dpi=80)
            plt.close(figure)
        except ImportError:
            pass
        return f"<pre>{html.escape(self.table())}</pre>{picture}"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def from_series(name: str, series: dict[str, Any], step_s: float = 5.0) -> StatsReport:
    """The report for a server's ``/nbdeploy/series`` answer."""
    samples = series.get("samples") or []
    bounds = [float(b) for b in series.get("buckets") or []]
    if len(samples) < 2:
        empty = _stats(0, None, None, 0.0, bounds)
        return StatsReport(name=name, window_s=0.0, total=empty, versions=[])
    first, last = samples[0], samples[-1]
    window = max(1e-9, float(last["t"]) - float(first["t"]))
    versions = sorted({int(v) for sample in samples for v in sample["versions"]})
    rows = [_stats(v, first, last, window, bounds) for v in versions]
    total = _total(rows, first, last, window, bounds, versions)
    answered = sum(row.requests for row in rows)
    for row in rows:
        row.share = row.requests / answered if answered else None
    total.share = 1.0 if answered else None
    return StatsReport(
        name=name,
        window_s=window,
        total=total,
        versions=rows,
        series=_points(samples, bounds, versions, step_s),
    )


def _counters(sample: dict[str, Any] | None, version: int) -> dict[str, Any]:
    found = (sample or {}).get("versions", {}).get(str(version)) or {}
    return {
        "ok": found.get("ok", 0),
        "errors": found.get("errors", 0),
        "latency": found.get("latency") or [],
        "batch_rows": found.get("batch_rows", 0),
        "batches": found.get("batches", 0),
        "queue_s": found.get("queue_s", 0.0),
        "queued": found.get("queued", 0),
    }


def _delta(end: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    latency = [b - a for a, b in zip(_pad(start["latency"], end), end["latency"], strict=False)]
    return {key: (latency if key == "latency" else max(0, end[key] - start[key])) for key in end}


def _pad(values: list[Any], like: dict[str, Any]) -> list[Any]:
    return values if values else [0] * len(like["latency"])


def _stats(
    version: int,
    first: dict[str, Any] | None,
    last: dict[str, Any] | None,
    window: float,
    bounds: list[float],
) -> VersionStats:
    if first is None or last is None:
        return VersionStats(version, 0, 0, 0.0, None, None, None, None, None, None, None)
    change = _delta(_counters(last, version), _counters(first, version))
    return _from_change(version, change, window, bounds)


def _from_change(
    version: int, change: dict[str, Any], window: float, bounds: list[float]
) -> VersionStats:
    answered = change["ok"] + change["errors"]
    quantiles = [_quantile(q, change["latency"], bounds) for q in QUANTILES]
    return VersionStats(
        version=version,
        requests=answered,
        errors=change["errors"],
        request_rate=answered / window if window else 0.0,
        error_rate=change["errors"] / answered if answered else None,
        p50_ms=quantiles[0],
        p95_ms=quantiles[1],
        p99_ms=quantiles[2],
        batch_size=change["batch_rows"] / change["batches"] if change["batches"] else None,
        queue_ms=1000 * change["queue_s"] / change["queued"] if change["queued"] else None,
        share=None,
    )


def _total(
    rows: list[VersionStats],
    first: dict[str, Any],
    last: dict[str, Any],
    window: float,
    bounds: list[float],
    versions: list[int],
) -> VersionStats:
    summed: dict[str, Any] = {}
    for version in versions:
        change = _delta(_counters(last, version), _counters(first, version))
        for key, value in change.items():
            if key == "latency":
                old = summed.get(key) or [0] * len(value)
                summed[key] = [a + b for a, b in zip(old, value, strict=False)]
            else:
                summed[key] = summed.get(key, 0) + value
    if not summed:
        return VersionStats(0, 0, 0, 0.0, None, None, None, None, None, None, None)
    return _from_change(0, summed, window, bounds)


def _quantile(q: float, cumulative: list[int], bounds: list[float]) -> float | None:
    """Like Prometheus' ``histogram_quantile``: linear within the bucket holding rank q*n, in
    milliseconds; the +Inf bucket answers its lower bound."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower_count, lower_bound = 0, 0.0
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i >= len(bounds):
                return 1000 * (bounds[-1] if bounds else 0.0)
            upper = bounds[i]
            inside = count - lower_count
            fraction = (rank - lower_count) / inside if inside else 1.0
            return 1000 * (lower_bound + (upper - lower_bound) * fraction)
        lower_count = count
        lower_bound = bounds[i] if i < len(bounds) else lower_bound
    return None


def _points(
    samples: list[dict[str, Any]], bounds: list[float], versions: list[int], step_s: float
) -> list[Point]:
    """Rate, p99 and error rate per version for each ``step_s`` of the window."""
    points = []
    start = samples[0]
    for sample in samples[1:]:
        span = float(sample["t"]) - float(start["t"])
        if span < step_s and sample is not samples[-1]:
            continue
        rows = {v: _stats(v, start, sample, span, bounds) for v in versions}
        points.append(
            Point(
                t=float(sample["t"]),
                request_rate={v: row.request_rate for v, row in rows.items()},
                p99_ms={v: row.p99_ms for v, row in rows.items()},
                error_rate={v: row.error_rate for v, row in rows.items()},
                p50_ms={v: row.p50_ms for v, row in rows.items()},
                batch_size={v: row.batch_size for v, row in rows.items()},
                queue_ms={v: row.queue_ms for v, row in rows.items()},
            )
        )
        start = sample
    return points
