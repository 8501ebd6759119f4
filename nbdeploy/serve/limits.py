"""Bounded memory per request: a byte budget shared by the requests in flight, the default
budget derived from the memory the server was given, and estimates of what a request will
cost, computed from its size and header before the expensive work is done.

The estimates are upper bounds measured with tracemalloc on the server's own decode/encode code
(see tests/serve/test_serve_attacks.py): a JSON value costs at most ``JSON_VALUE_BYTES`` while
it is parsed and turned into an array, a JSON output element at most ``JSON_OUTPUT_BYTES`` while
it is encoded. A request reserves its estimate before the work starts and gives it back when its
last worker thread is done, so concurrent requests share one budget instead of each assuming the
whole memory is theirs.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClientError, busy
from .protocol import DATATYPES

BUDGET_SHARE = 0.4
BUDGET_CAP = 2 << 30
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
# Python objects, lists and the 64-bit staging array per parsed JSON value (tracemalloc: 48-70).
JSON_VALUE_BYTES = 96
# Slices of text, their join and the response body per JSON output element (tracemalloc: 58).
JSON_OUTPUT_BYTES = 80
# A str per BYTES element: object header, pointer and some characters.
STRING_BYTES = 96
# One "score:index:label" string per classification result.
CLASS_RESULT_BYTES = 160
# Work on more bytes than this (decode, checks, classification, encode) runs in a worker
# thread; below it, the thread hop would cost more than the work.
OFFLOAD_BYTES = 64 << 10
# Worker threads for that work (``--request-workers``). Much of it holds the GIL, and the event
# loop thread waits for the GIL behind every busy one: with two, a flood of big JSON requests
# kept /v2/health/live waiting 115-251 ms, with one 54-101 ms (benchmarks/bench_flood.py).
REQUEST_WORKERS = 1


def default_budget() -> int:
    """40% of the cgroup memory limit (v2, then v1), else of physical RAM; at most 2 GiB."""
    limit = None
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            limit = int(text)
            break
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(int(limit * BUDGET_SHARE), BUDGET_CAP)


class MemoryBudget:
    """Bytes the requests in flight may use together, and the worker threads that do their
    big work. Used from the event loop only."""

    def __init__(self, total: int, workers: int = REQUEST_WORKERS) -> None:
        self.total = total
        self.used = 0
        self.workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="request-work")

    def reservation(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """What one request holds of the budget; ``resize`` refuses what cannot fit."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self._workers: set[asyncio.Future[Any]] | None = None  # made by the first watch()
        self._released = False

    def resize(self, size: int, what: str) -> None:
        """Hold ``size`` bytes in all: 413 if the budget can never hold it, 503 if it is busy."""
        budget = self.budget
        if size > budget.total:
            raise ClientError(
                413,
                f"{what} would need about {_mib(size)} of memory but this server's memory budget"
                f" is {_mib(budget.total)} (--memory-budget-bytes); send fewer rows per request"
                " (smaller batches), and send and ask for tensors with the binary tensor data"
                " extension instead of JSON",
            )
        if budget.used - self.held + size > budget.total:
            raise busy(
                f"{what} would need about {_mib(size)} of memory; {_mib(budget.total - budget.used)}"
                f" of the {_mib(budget.total)} budget is free while other requests run;"
                " retry shortly"
            )
        budget.used += size - self.held
        self.held = size

    async def work(self, size: int, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, in a worker thread when it works on more than
        ``OFFLOAD_BYTES``, with this request's memory held until that thread is done."""
        if size <= OFFLOAD_BYTES:
            return function(*args)
        future = asyncio.get_running_loop().run_in_executor(self.budget.workers, function, *args)
        self.watch(future)
        return await future

    def watch(self, future: asyncio.Future[Any]) -> None:
        """Keep the memory held until ``future`` (a worker thread's job) is done, even if the
        request is cancelled first: a thread cannot be stopped, its memory is still in use."""
        if self._workers is None:
            self._workers = set()
        self._workers.add(future)
        future.add_done_callback(self._worker_done)

    def _worker_done(self, future: asyncio.Future[Any]) -> None:
        assert self._workers is not None
        self._workers.discard(future)
        if self._released and not self._workers:
            self._give_back()

    def release(self) -> None:
        self._released = True
        if not self._workers:
            self._give_back()

    def _give_back(self) -> None:
        self.budget.used -= self.held
        self.held = 0


def json_values(text: bytes) -> int:
    """An upper bound on the values a JSON document holds: every value but the first of each
    array or object follows a comma (commas inside strings only make the bound looser)."""
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 1


def decoded_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Memory of decoded arrays, counting the strings an object (BYTES) array points to."""
    return sum(a.size * STRING_BYTES if a.dtype.kind == "O" else a.nbytes for a in arrays)


def output_cost(
    outputs: Iterable[tuple[str, tuple[int, ...], bool, int]], rows: int, input_elements: int
) -> int:
    """Bytes to hold and encode ``outputs``: ``(datatype, shape, binary, classification)``.

    A dynamic (``-1``) first dimension is the request's rows; other dynamic dimensions are
    unknown until the model has run, so such an output is assumed as large as the inputs.
    """
    total = 0
    for datatype, shape, binary, classes in outputs:
        dims = [rows if axis == 0 and dim == -1 else dim for axis, dim in enumerate(shape)]
        elements = math.prod(dim for dim in dims if dim != -1)
        if -1 in dims:
            elements = max(elements, input_elements)
        itemsize = STRING_BYTES if datatype == "BYTES" else DATATYPES[datatype].itemsize
        total += elements * itemsize
        if classes:
            # a negated copy and the argsort indices, then one string per result
            total += elements * (itemsize + 8)
            elements = min(classes * max(rows, 1), elements)
            itemsize = CLASS_RESULT_BYTES
        total += elements * (itemsize if binary else JSON_OUTPUT_BYTES)
    return total


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
