"""Runtimes, chosen from a registry: the kind ``K`` of ``vocabulary.RUNTIME_KINDS`` is
implemented by the module ``nbdeploy.runtimes.K``, whose ``RUNTIME`` is its Runtime class.

``auto`` takes the first kind, in the vocabulary's order, that is available on this machine
(docker when an engine answers, else the embedded process runtime).
"""

from __future__ import annotations

import importlib

from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import (
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    ensure_port_free,
    free_port,
    local_url,
    port_in_use,
    probe_ready,
)
from nbdeploy.runtimes.engine import docker_available
from nbdeploy.vocabulary import RUNTIME_CHOICES, RUNTIME_KINDS, check_choice

__all__ = [
    "LaunchSpec",
    "Runtime",
    "RuntimeHandle",
    "docker_available",
    "ensure_port_free",
    "free_port",
    "get_runtime",
    "local_url",
    "port_in_use",
    "probe_ready",
    "runtime_class",
]


def runtime_class(kind: str) -> type[Runtime]:
    """The Runtime class implementing ``kind`` (imported on first use)."""
    check_choice(kind, RUNTIME_KINDS, "runtime")
    return importlib.import_module(f"{__name__}.{kind}").RUNTIME


def get_runtime(kind: str = "auto") -> Runtime:
    """The runtime called ``kind``; ``auto`` takes the first available one."""
    check_choice(kind, RUNTIME_CHOICES, "runtime")
    if kind == "auto":
        for candidate in RUNTIME_KINDS:
            cls = runtime_class(candidate)
            if cls.available():
                return cls()
        raise DeployError(f"no runtime is available here ({', '.join(RUNTIME_KINDS)})")
    cls = runtime_class(kind)
    if not cls.available():
        raise DeployError(f"runtime={kind!r} is not available here: {cls.unavailable_hint}")
    return cls()
