"""What the command line and the environment configure, in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Everything the command line configures.

    ``found`` holds the versions to load at start-up: every discovered one, or with
    ``routing_file`` only those the routing file names. ``admin_token`` enables the
    ``/nbdeploy/...`` admin routes.
    """

    repository: Path
    found: dict[str, dict[int, Path]]
    threads: int
    default_version: int | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    batching: bool = True
    max_body_bytes: int = 64 * 1024 * 1024
    token: str | None = None
    routing_file: Path | None = None
    admin_token: str | None = None
