"""Watching a server run: a per-second series of cumulative counters, drift of the data each
version answers, and the opt-in request log.

- :class:`Sampler` copies every version's :class:`~nbdeploy.serve.metrics.VersionCounters`
  once a second into a ring of ``RING`` samples (``GET /nbdeploy/series``): the host computes
  rates and quantiles from differences, like Prometheus does from its scrapes.
- :class:`Observer` hands each answered request's arrays to one worker thread that feeds the
  version's :class:`~nbdeploy.serve.profile.LiveProfile` and appends sampled requests to the
  request log. The event loop only enqueues; a full queue drops (and counts) instead of
  waiting, so monitoring never delays or fails a client.
- :class:`DriftCollector` turns the live profiles into Prometheus gauges at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .metrics import LATENCY_BUCKETS, Metrics
from .served import Served

log = logging.getLogger("nbdeploy.serve")

RING = 600
INTERVAL_S = 1.0
QUEUE_REQUESTS = 4096
# How often the monitoring thread takes what the requests left for it.
POLL_S = 0.1
# Arrays waiting for the worker may hold at most this many bytes; more requests are dropped.
QUEUE_BYTES = 64 << 20
LOG_FILE = "requests.jsonl"
LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 3

Arrays = dict[str, np.ndarray]


class Sampler:
    """A ring of per-second copies of every version's cumulative counters."""

    def __init__(self, metrics: Metrics, interval_s: float = INTERVAL_S) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.ring: deque[dict[str, Any]] = deque(maxlen=RING)

    def sample(self) -> dict[str, Any]:
        """Every version's counters now: ``{"t", "versions": {(model, version): {...}}}``."""
        counters = list(self.metrics.counters.items())
        return {"t": time.time(), "versions": {key: c.snapshot() for key, c in counters}}

    async def run(self) -> None:
        """Sample every ``interval_s`` (on schedule, not drifting) until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self.ring.append(self.sample())
            due += self.interval_s
            now = loop.time()
            if due < now:  # the loop was blocked for more than a step: skip the lost ones
                due = now + self.interval_s
            await asyncio.sleep(due - now)

    def series(self, model: str, window: float) -> dict[str, Any]:
        """The samples of the last ``window`` seconds of ``model``, the newest taken now."""
        now = self.sample()
        since = now["t"] - window
        samples = [s for s in self.ring if s["t"] >= since]
        samples.append(now)
        return {
            "name": model,
            "now": now["t"],
            "interval_s": self.interval_s,
            "buckets": list(LATENCY_BUCKETS),
            "samples": [
                {
                    "t": round(s["t"], 3),
                    "versions": {
                        str(version): values
                        for (name, version), values in sorted(s["versions"].items())
                        if name == model
                    },
                }
                for s in samples
            ],
        }


@dataclass
class _Job:
    served: Served
    inputs: Arrays
    outputs: Arrays
    logged: bool
    t: float
    size: int


class Observer:
    """Drift observation and request logging on one worker thread, fed from the event loop
    through a bounded queue.

    The event loop only appends to a deque (no lock hand-over, no thread wake-up per
    request); the worker wakes every ``POLL_S``, joins the rows of all the requests a version
    answered since, and bins them in one pass, so the cost per request shrinks as the load
    grows instead of competing with the requests for the CPU."""

    def __init__(
        self,
        metrics: Metrics,
        request_log: RequestLog | None = None,
        fraction: float | None = None,
    ) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.fraction = fraction if request_log is not None else None
        self.dropped: dict[tuple[str, int], int] = {}
        self._pending: deque[_Job] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[tuple[str, int]] = set()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._work, name="monitoring", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish what is queued (the last requests get logged too), then end the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=30)
        self._thread = None
        if self.request_log is not None:
            self.request_log.close()

    def submit(self, served: Served, inputs: Arrays, outputs: Arrays) -> None:
        """Queue one answered request's arrays, if anything wants them; never blocks."""
        logged = self.fraction is not None and random.random() < self.fraction
        if served.profile is None and not logged:
            return
        size = sum(array.nbytes for array in inputs.values())
        size += sum(array.nbytes for array in outputs.values())
        with self._lock:
            fits = len(self._pending) < QUEUE_REQUESTS and (
                self._queued_bytes + size <= QUEUE_BYTES or not self._queued_bytes
            )
            if fits:
                self._queued_bytes += size
                self._pending.append(_Job(served, inputs, outputs, logged, time.time(), size))
                return
        model = served.model
        key = (model.name, model.version)
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self.metrics.monitoring_dropped.labels(model.name, str(model.version)).inc()

    def _take(self) -> list[_Job]:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            self._queued_bytes = 0
        return jobs

    def _work(self) -> None:
        while True:
            stopping = self._stopping.wait(POLL_S)
            jobs = self._take()
            if jobs:
                self._handle(jobs)
            if stopping:
                return

    def _handle(self, jobs: list[_Job]) -> None:
        by_version: dict[int, list[_Job]] = {}
        for job in jobs:
            if job.served.profile is not None:
                by_version.setdefault(id(job.served), []).append(job)
        for group in by_version.values():
            self._guarded(group[0].served, self._observe, group)
        if self.request_log is not None:
            for job in jobs:
                if job.logged:
                    self._guarded(job.served, self._log, job)

    def _guarded(self, served: Served, function: Callable[[Any], None], argument: Any) -> None:
        try:
            function(argument)
        except Exception:
            key = (served.model.name, served.version)
            if key not in self._warned:  # once per version: a bad profile would flood
                self._warned.add(key)
                log.exception("%s v%d: monitoring requests failed", *key)

    @staticmethod
    def _observe(group: list[_Job]) -> None:
        """One pass over the rows of ``group`` (one version's requests), joined when their
        tensors line up, else request by request."""
        profile = group[0].served.profile
        assert profile is not None
        if len(group) > 1:
            try:
                inputs = _joined([job.inputs for job in group])
                outputs = _joined([job.outputs for job in group])
            except ValueError:  # shapes that do not join (images of several sizes)
                pass
            else:
                profile.observe(inputs, outputs)
                return
        for job in group:
            profile.observe(job.inputs, job.outputs)

    def _log(self, job: _Job) -> None:
        assert self.request_log is not None
        self.request_log.write(
            {
                "t": round(job.t, 6),
                "version": job.served.version,
                "inputs": {name: jsonable(array) for name, array in job.inputs.items()},
                "outputs": {name: jsonable(array) for name, array in job.outputs.items()},
            }
        )


def _joined(parts: list[Arrays]) -> Arrays:
    """The tensors every part has, joined along axis 0 (ValueError if one cannot be)."""
    names = set(parts[0]).intersection(*parts[1:])
    joined = {}
    for name in names:
        arrays = [part[name] for part in parts]
        if any(array.ndim == 0 for array in arrays):
            raise ValueError(f"{name} has no rows")
        joined[name] = np.concatenate(arrays)
    return joined


def jsonable(array: np.ndarray) -> Any:
    """``array`` as nested lists, strings for BYTES (undecodable bytes replaced)."""
    if array.dtype.kind in "OSU":
        flat = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


class RequestLog:
    """JSON lines appended to ``DIR/requests.jsonl``, rotated by size like logging's
    RotatingFileHandler (``requests.jsonl.1`` the previous file, up to ``backups``).

    Files are 0640 when the directory is shared with a group (the host user reads what the
    container's user writes through a setgid group directory), else 0600."""

    def __init__(
        self, directory: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
    ) -> None:
        self.directory = directory
        self.path = directory / LOG_FILE
        self.max_bytes = max_bytes
        self.backups = backups
        shared = directory.stat().st_mode & (stat.S_ISGID | stat.S_IRWXG)
        self.mode = 0o640 if shared else 0o600
        self._fd: int | None = None
        self._size = 0

    def open(self) -> None:
        """Open (or create) the log for appending; raises OSError when it cannot."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        with contextlib.suppress(OSError):  # a file another user created keeps its mode
            os.fchmod(fd, self.mode)
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            self.open()
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        assert self._fd is not None
        os.write(self._fd, line)
        self._size += len(line)

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{LOG_FILE}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{LOG_FILE}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{LOG_FILE}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.open()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class DriftCollector(Collector):
    """``nbdeploy_drift_score`` and ``nbdeploy_drift_window_rows``, computed when scraped
    from the live profiles of the versions loaded at that moment."""

    def __init__(self, served: Callable[[], Iterable[Served]]) -> None:
        self._served = served

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score, rows = self._families()
        for served in self._served():
            profile = served.profile
            if profile is None:
                continue
            labels = [served.model.name, str(served.version)]
            rows.add_metric(labels, profile.rows)
            for feature in profile.scores():
                if feature["psi"] is not None:
                    score.add_metric([*labels, feature["feature"], feature["kind"]], feature["psi"])
        yield score
        yield rows

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "nbdeploy_drift_score",
                "Population stability index of each profiled input and output feature over the"
                " live window, against the reference profile recorded at deploy time.",
                labels=["model", "version", "feature", "kind"],
            ),
            GaugeMetricFamily(
                "nbdeploy_drift_window_rows",
                "Rows in the live drift window of each profiled version.",
                labels=["model", "version"],
            ),
        )


def drift_json(served: Iterable[Served], model: str, dropped: dict[tuple[str, int], int]) -> dict:
    """``GET /nbdeploy/drift``: each profiled version of ``model`` with its live window."""
    versions = {}
    for item in sorted(served, key=lambda s: s.version):
        profile = item.profile
        if item.model.name != model or profile is None:
            continue
        versions[str(item.version)] = {
            "rows": profile.rows,
            "window": profile.window,
            "dropped": dropped.get((model, item.version), 0),
            "features": profile.scores(),
        }
    return {"name": model, "versions": versions}
