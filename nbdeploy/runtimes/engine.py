"""Talking to the Docker engine: one client factory and one readiness check, so every
caller that needs an engine says the same thing when none answers."""

from __future__ import annotations

from typing import Any

from nbdeploy._errors import DeployError

BUILD_TIMEOUT_S = 900
START_ENGINE_HINT = (
    "start one with `sudo dockerd --bridge=none --iptables=false --ip-forward=false "
    "--ip-masq=false &` (or run scripts/docker-engine.sh), or use runtime='process'"
)


def docker_client(timeout: int = BUILD_TIMEOUT_S) -> Any:
    """A Docker SDK client for the engine in the environment (``DOCKER_HOST`` or the socket)."""
    import docker

    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise DeployError(f"no Docker engine answers: {START_ENGINE_HINT}") from exc


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
