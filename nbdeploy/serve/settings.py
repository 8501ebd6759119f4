"""What the command line and the environment configure, in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A small run goes on the event loop while the model's recent small runs took under this
# (``--inline-run-us``; see ``batching``).
INLINE_RUN_S = 0.0005


@dataclass(frozen=True)
class Settings:
    """Everything the command line configures.

    ``found`` holds the versions to load at start-up: every discovered one, or with
    ``routing_file`` only those the routing file names. ``admin_token`` enables the
    ``/nbdeploy/...`` admin routes. The limits bound what one request may cost: memory
    (estimated before decoding), JSON values, requests in flight, time to answer, and the idle
    time between two chunks of a body. ``log_requests`` is the fraction of answered requests
    appended to the request log in ``request_log_dir`` (None: no log).
    """

    repository: Path
    found: dict[str, dict[int, Path]]
    threads: int
    default_version: int | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    batching: bool = True
    inline_run_s: float = INLINE_RUN_S  # 0: every run on the model's thread
    max_body_bytes: int = 64 * 1024 * 1024
    token: str | None = None
    routing_file: Path | None = None
    state_dir: Path | None = None  # writable: what the server must remember across restarts
    admin_token: str | None = None
    memory_budget_bytes: int = 1 << 30
    max_json_elements: int = 4_000_000
    max_concurrency: int = 64
    request_workers: int = 1
    request_timeout_s: float = 60.0
    body_timeout_s: float = 30.0
    log_requests: float | None = None
    request_log_dir: Path | None = None
