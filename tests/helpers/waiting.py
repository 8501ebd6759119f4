"""Polling for what a server does off the request path (observers, restarts, reloads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> bool:
    """Whether ``predicate()`` turned true within ``timeout`` seconds, polled every ``interval``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
