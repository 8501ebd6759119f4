"""Pick a runtime: ``docker`` when an engine answers, else the embedded ``process`` runtime."""

from __future__ import annotations

import socket

from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import (
    STATUSES,
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    Status,
    local_url,
    probe_ready,
)

__all__ = [
    "STATUSES",
    "LaunchSpec",
    "Runtime",
    "RuntimeHandle",
    "Status",
    "docker_available",
    "free_port",
    "get_runtime",
    "local_url",
    "port_in_use",
    "probe_ready",
]

RUNTIME_KINDS = ("auto", "docker", "process")

START_ENGINE_HINT = (
    "start one with `sudo dockerd --bridge=none --iptables=false --ip-forward=false "
    "--ip-masq=false &` (or run scripts/docker-engine.sh), or use runtime='process'"
)


def docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def get_runtime(kind: str = "auto") -> Runtime:
    """The runtime called ``kind``; ``auto`` prefers docker when an engine answers."""
    if kind not in RUNTIME_KINDS:
        raise DeployError(f"runtime must be one of {', '.join(RUNTIME_KINDS)}; got {kind!r}")
    if kind == "process" or (kind == "auto" and not docker_available()):
        from nbdeploy.runtimes.process import ProcessRuntime

        return ProcessRuntime()
    if kind == "docker" and not docker_available():
        raise DeployError(
            f"runtime='docker' needs a running Docker engine and none answers: {START_ENGINE_HINT}"
        )
    from nbdeploy.runtimes.docker import DockerRuntime

    return DockerRuntime()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something already listens on (or holds) ``127.0.0.1:port``.

    SO_REUSEADDR mirrors what the server does, so leftover TIME_WAIT connections do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def ensure_port_free(port: int) -> None:
    """Raise a readable error before launching when ``port`` is taken."""
    if not 0 < port < 65536:
        raise DeployError(f"port must be between 1 and 65535; got {port}")
    if port_in_use(port):
        raise DeployError(
            f"port {port} on 127.0.0.1 is already in use; pick another port or pass port=None "
            "to get a free one"
        )
