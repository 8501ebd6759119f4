"""Dynamic batching: concurrent requests to one model version become one onnxruntime run.

Requests wait in a queue for at most ``max_queue_delay`` after the oldest one arrived, or until
``max_batch_size`` rows of the same shape are waiting. The wait is adaptive: it happens only
while as many requests are expected as the previous run merged, so a lone client never waits
and concurrent clients are gathered into one run as soon as they are all back. Then the group is concatenated along
axis 0, run on the model version's own worker thread (so the event loop never blocks) and the
outputs are split back into views, one per request. Requests whose non-batch dimensions differ
are never merged. A quick run (a small input on an ONNX model whose recent small runs took
under ``INLINE_RUN_S``) is made on the event loop itself, as a bare route would: handing it to the
thread and back would cost more than the run. Such a request does not even queue (unless a
group is on the model's thread): it runs at once, alone, since merging runs of a few
microseconds would save less than the queue costs. If a merged run fails, every request in it is
retried alone so that one bad request cannot fail the others. A request whose client went away (its handler was cancelled)
is dropped from the queue without running; one already running is waited for, so that the
memory it uses stays accounted until onnxruntime is done with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ClientError
from .metrics import Metrics
from .model import ModelVersion
from .settings import INLINE_RUN_S

log = logging.getLogger("nbdeploy.serve")

Result = dict[str, np.ndarray]

# A group of at most INLINE_BYTES of input runs on the event loop while the model's recent
# runs of such groups took under INLINE_RUN_S (a moving average; ``--inline-run-us``, 0 = never);
# slower models use their thread. A run is timed by the CPU time of the thread that runs it:
# a core taken by another process, or a thread's wait for the GIL (a quick model's run on its
# thread waits for the busy event loop to let go of it), would otherwise make a quick model
# look slow and keep it off the loop. Each run counts for at most 2 * INLINE_RUN_S.
INLINE_BYTES = 64 << 10


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    outputs: frozenset[str]
    rows: int
    key: tuple[Any, ...] | None
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.perf_counter)
    running: bool = False
    finished: asyncio.Event | None = None  # set once run (queued requests only)


class Batcher:
    """The queue and worker thread of one model version."""

    def __init__(
        self,
        model: ModelVersion,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        enabled: bool,
        inline_s: float = INLINE_RUN_S,
    ) -> None:
        self.model = model
        self.enabled = enabled and model.batchable and max_batch_size > 1
        self.max_rows = max_batch_size
        self.delay = max_queue_delay_s
        self._waiting: deque[_Item] = deque()
        self._last_group = 1
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ort-{model.name}-v{model.version}"
        )
        labels = (model.name, str(model.version))
        self._rows_metric = metrics.batch_rows.labels(*labels)
        self._requests_metric = metrics.batch_requests.labels(*labels)
        self._queue_metric = metrics.queue_time.labels(*labels)
        self._compute_metric = metrics.compute_time.labels(*labels)
        self._pending_metric = metrics.pending.labels(*labels)
        self._counters = metrics.version_counters(model.name, model.version)
        # Seconds per small run (moving average), measured on the thread first: a slow model's
        # first run never blocks the loop. Python models always use their thread.
        self._inline_s = inline_s
        self._small_run_s = inline_s if type(model) is ModelVersion else float("inf")
        self._on_thread = 0  # groups running on the model's thread now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._serve(), name=f"batcher-{self.model.name}-v{self.model.version}"
        )

    async def close(self) -> None:
        """Finish every queued request without further waiting, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def infer(self, feeds: dict[str, np.ndarray], outputs: Iterable[str]) -> Result:
        """Queue one request's checked feeds; return the requested outputs for its rows."""
        if self._closing:
            raise ClientError(503, "the server is shutting down")
        if (
            not self._on_thread
            and self._small_run_s < self._inline_s
            and sum(array.nbytes for array in feeds.values()) <= INLINE_BYTES
        ):  # a quick model: merging would save less than queueing costs
            return self._run_alone(feeds, outputs)
        rows, key = self._batch_key(feeds)
        item = _Item(
            feeds, frozenset(outputs), rows, key, asyncio.get_running_loop().create_future()
        )
        item.finished = finished = asyncio.Event()
        self._pending_metric.inc()
        try:
            self._waiting.append(item)
            self._wakeup.set()
            try:
                return await item.future
            except asyncio.CancelledError:
                if item.running:
                    await finished.wait()
                raise
        finally:
            self._pending_metric.dec()

    def _run_alone(self, feeds: dict[str, np.ndarray], outputs: Iterable[str]) -> Result:
        """Run one request inline, accounted as a batch of one that did not wait."""
        wanted = set(outputs)
        names = [info.name for info in self.model.outputs if info.name in wanted]
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            results = self.model.run(feeds, names)
        finally:
            elapsed = time.perf_counter() - started
            self._observe_small_run(time.thread_time() - cpu)
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        counters = self._counters
        self._queue_metric.observe(0.0)
        self._compute_metric.observe(elapsed)
        self._rows_metric.observe(rows)
        self._requests_metric.observe(1)
        counters.queued += 1
        counters.batch_rows += rows
        counters.batches += 1
        return results

    def _batch_key(self, feeds: dict[str, np.ndarray]) -> tuple[int, tuple[Any, ...] | None]:
        """Rows of the request, and what a request must share with it to be merged (or None)."""
        arrays = list(feeds.values())
        rows = int(arrays[0].shape[0]) if arrays[0].ndim else 1
        if not self.enabled or rows == 0 or any(a.ndim == 0 or a.shape[0] != rows for a in arrays):
            return rows, None
        return rows, tuple((a.dtype.str, a.shape[1:]) for a in arrays)

    async def _serve(self) -> None:
        pending: list[_Item] = []
        while True:
            pending.extend(self._waiting)
            self._waiting.clear()
            pending[:] = [item for item in pending if not item.future.done()]
            if not pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._wait_for_more(pending)
            if wait > 0:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            group = self._take_group(pending)
            self._last_group = len(group)
            try:
                await self._run(group)
            except Exception as exc:
                log.exception("batch of %s v%d failed", self.model.name, self.model.version)
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _wait_for_more(self, pending: list[_Item]) -> float:
        """Seconds worth waiting for more requests to merge with the oldest one (0 = run now)."""
        first = pending[0]
        if not self.enabled or self._closing or first.key is None:
            return 0.0
        mergeable = [item for item in pending if item.key == first.key]
        if sum(item.rows for item in mergeable) >= self.max_rows:
            return 0.0
        if len(mergeable) >= self._last_group:
            return 0.0
        return max(0.0, first.enqueued + self.delay - time.perf_counter())

    def _take_group(self, pending: list[_Item]) -> list[_Item]:
        """Remove and return the oldest request and those that fit in its batch."""
        first = pending[0]
        if first.key is None:
            del pending[0]
            return [first]
        group: list[_Item] = []
        rest: list[_Item] = []
        rows = 0
        for item in pending:
            if item.key == first.key and (not group or rows + item.rows <= self.max_rows):
                group.append(item)
                rows += item.rows
            else:
                rest.append(item)
        pending[:] = rest
        return group

    async def _run(self, group: list[_Item]) -> None:
        started = time.perf_counter()
        counters = self._counters
        for item in group:
            waited = started - item.enqueued
            self._queue_metric.observe(waited)
            counters.queue_s += waited
            counters.queued += 1
            item.running = True
        small = sum(a.nbytes for item in group for a in item.feeds.values()) <= INLINE_BYTES
        try:
            if small and self._small_run_s < self._inline_s:
                results = self._compute(group, small)
            else:
                loop = asyncio.get_running_loop()
                self._on_thread += 1
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._compute, group, small
                    )
                finally:
                    self._on_thread -= 1
        finally:
            for item in group:
                if item.finished is not None:
                    item.finished.set()
        for item, result in zip(group, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _compute(self, group: list[_Item], small: bool = False) -> list[Result | BaseException]:
        """One merged run, or each request alone if the merged run fails (on the worker
        thread, or inline for a quick ``small`` group)."""
        cpu = time.thread_time()
        try:
            return self._compute_group(group)
        finally:
            if small:
                self._observe_small_run(time.thread_time() - cpu)

    def _observe_small_run(self, seconds: float) -> None:
        """Fold one small run's time into the average that decides where small runs go."""
        self._small_run_s = 0.8 * self._small_run_s + 0.2 * min(seconds, 2 * self._inline_s)

    def _compute_group(self, group: list[_Item]) -> list[Result | BaseException]:
        if len(group) == 1:
            try:
                return [self._run_merged(group)[0]]
            except Exception as exc:
                return [exc]
        try:
            return list(self._run_merged(group))
        except Exception as exc:
            log.info(
                "a merged batch of %d requests for %s v%d failed (%s); running them one by one",
                len(group),
                self.model.name,
                self.model.version,
                exc,
            )
            return [self._compute_group([item])[0] for item in group]

    def _run_merged(self, group: list[_Item]) -> list[Result]:
        started = time.perf_counter()
        wanted = set().union(*(item.outputs for item in group))
        names = [info.name for info in self.model.outputs if info.name in wanted]
        if len(group) == 1:
            feeds = group[0].feeds
        else:
            feeds = {
                name: np.concatenate([item.feeds[name] for item in group])
                for name in group[0].feeds
            }
        outputs = self.model.run(feeds, names)
        results = self._split(outputs, group)
        self._compute_metric.observe(time.perf_counter() - started)
        rows = sum(item.rows for item in group)
        self._rows_metric.observe(rows)
        self._requests_metric.observe(len(group))
        self._counters.batch_rows += rows
        self._counters.batches += 1
        return results

    def _split(self, outputs: Result, group: list[_Item]) -> list[Result]:
        if len(group) == 1:
            return [{name: outputs[name] for name in group[0].outputs}]
        total = sum(item.rows for item in group)
        offsets = np.cumsum([item.rows for item in group])[:-1]
        pieces: dict[str, list[np.ndarray]] = {}
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                self.enabled = False
                log.warning(
                    "%s v%d: output '%s' has shape %s for a batch of %d rows; batching is now off",
                    self.model.name,
                    self.model.version,
                    name,
                    list(array.shape),
                    total,
                )
                raise RuntimeError(f"output '{name}' does not follow the batch's rows")
            pieces[name] = np.split(array, offsets)
        return [
            {name: pieces[name][index] for name in item.outputs} for index, item in enumerate(group)
        ]
