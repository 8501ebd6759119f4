"""The container runtime: one hardened container per name, found again by its labels.

The container runs the shared server image (plus a requirements layer for Python models) with
the name's model versions and its routing file mounted read-only, so a new version is loaded
into the running container instead of baking an image per version.

Containers run as a non-root user on a read-only root filesystem with every capability dropped,
memory/CPU/pid limits, and a restart policy, bound to 127.0.0.1 only. Networking is a setting
(``NBDEPLOY_DOCKER_NETWORK``): ``bridge`` publishes ``127.0.0.1:PORT``; ``host`` shares the
host's network and the server binds 127.0.0.1 itself. Without the setting, ``bridge`` is used
when the engine has its default bridge network, else ``host``. nbdeploy never creates networks.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import (
    LaunchSpec,
    Runtime,
    RuntimeHandle,
    ensure_port_free,
    environment_of,
    local_url,
    probe_ready,
)
from nbdeploy.runtimes.engine import START_ENGINE_HINT, docker_available, docker_client
from nbdeploy.runtimes.image import MODELS_ROOT, USER_ID, server_image_for
from nbdeploy.vocabulary import ServerStatus

NETWORK_MODES = ("host", "bridge")
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
DEFAULT_RESTART = "unless-stopped"
PIDS_LIMIT = 256
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=64m,mode=1777"}
RUNTIME_TIMEOUT_S = 60


def network_mode(client: Any) -> str:
    """``NBDEPLOY_DOCKER_NETWORK``, else ``bridge`` when the engine has one, else ``host``."""
    configured = os.environ.get("NBDEPLOY_DOCKER_NETWORK", "").strip()
    if configured:
        if configured not in NETWORK_MODES:
            raise DeployError(
                f"NBDEPLOY_DOCKER_NETWORK must be one of {', '.join(NETWORK_MODES)}; got {configured!r}"
            )
        return configured
    names = {network.name for network in client.networks.list()}
    return "bridge" if "bridge" in names else "host"


def restart_policy() -> dict[str, str]:
    """``NBDEPLOY_DOCKER_RESTART`` (default ``unless-stopped``): a server killed from outside
    comes back, one stopped through nbdeploy or ``docker stop`` stays stopped."""
    name = os.environ.get("NBDEPLOY_DOCKER_RESTART", "").strip() or DEFAULT_RESTART
    if name not in RESTART_POLICIES:
        raise DeployError(
            f"NBDEPLOY_DOCKER_RESTART must be one of {', '.join(RESTART_POLICIES)}; got {name!r}"
        )
    return {"Name": name}


SERVING_MOUNT = "/serving"
REQUESTS_MOUNT = "/requests"
STATE_MOUNT = "/state"


def container_name(name: str) -> str:
    """One container per name: it holds every version the name serves."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-_.") or "model"
    return f"nbdeploy-{slug}"


class DockerRuntime(Runtime):
    """Build the model image (reusing the shared server image) and run it as a container."""

    name = "docker"
    unavailable_hint = f"it needs a running Docker engine and none answers: {START_ENGINE_HINT}"

    @classmethod
    def available(cls) -> bool:
        return docker_available()

    def __init__(self) -> None:
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client(timeout=RUNTIME_TIMEOUT_S)
        return self._client

    def start(self, spec: LaunchSpec) -> RuntimeHandle:
        import docker

        ensure_port_free(spec.port)
        files = spec.model_files()
        image = server_image_for(files, spec.progress)
        mode = network_mode(self.client)
        name = container_name(spec.name)
        self._remove_stale(name)
        models = spec.models_root / spec.name
        for directory in (models, *(f.directory for f in files)):
            directory.chmod(0o750)  # read through the mount by the container's user's group
        options: dict[str, Any] = {
            "command": [
                *spec.settings.server_args(),
                "--routing",
                f"{SERVING_MOUNT}/routing.json",
            ],
            "detach": True,
            "name": name,
            "user": str(USER_ID),
            # The mounted model and routing files are the host user's, readable by their
            # group only (NBDEPLOY_HOME is private): the server joins that group to read them.
            "group_add": [str(os.getgid())],
            "read_only": True,
            "tmpfs": TMPFS,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": PIDS_LIMIT,
            "restart_policy": restart_policy(),
            "volumes": {
                str(models): {"bind": f"{MODELS_ROOT}/{spec.name}", "mode": "ro"},
                str(spec.serving_dir): {"bind": SERVING_MOUNT, "mode": "ro"},
            },
            "environment": {
                "NBDEPLOY_TOKEN": spec.token or "",
                "NBDEPLOY_ADMIN_TOKEN": spec.admin_token,
                "NBDEPLOY_PORT": str(spec.port),
                "NBDEPLOY_HOST": "127.0.0.1" if mode == "host" else "0.0.0.0",
            },
            "labels": {
                "nbdeploy.managed": "true",
                "nbdeploy.name": spec.name,
                "nbdeploy.port": str(spec.port),
            },
            "network_mode": mode,
        }
        if spec.request_log_dir is not None:
            options["volumes"][str(spec.request_log_dir)] = {"bind": REQUESTS_MOUNT, "mode": "rw"}
            options["command"] += ["--request-log-dir", REQUESTS_MOUNT]
        if spec.state_dir is not None:
            options["volumes"][str(spec.state_dir)] = {"bind": STATE_MOUNT, "mode": "rw"}
            options["command"] += ["--state-dir", STATE_MOUNT]
        if spec.grpc_port is not None:
            ensure_port_free(spec.grpc_port)
            options["command"] += ["--grpc-port", str(spec.grpc_port)]
        if mode != "host":
            options["ports"] = {f"{spec.port}/tcp": ("127.0.0.1", spec.port)}
            if spec.grpc_port is not None:
                options["ports"][f"{spec.grpc_port}/tcp"] = ("127.0.0.1", spec.grpc_port)
        if spec.settings.memory:
            options["mem_limit"] = spec.settings.memory
        if spec.settings.cpus:
            options["nano_cpus"] = int(spec.settings.cpus * 1e9)
        spec.say(f"starting container {name} ({mode} network) on 127.0.0.1:{spec.port}")
        try:
            container = self.client.containers.run(image, **options)
        except docker.errors.APIError as exc:
            self._remove_stale(name)
            raise DeployError(
                f"Docker could not start {name} from {image}: {exc.explanation or exc}"
            ) from exc
        return RuntimeHandle(
            runtime=self.name,
            ref=container.id,
            name=spec.name,
            version=max(spec.versions),
            port=spec.port,
            url=local_url(spec.port),
            environment=list(environment_of(files)),
            network=mode,
            grpc_port=spec.grpc_port,
        )

    def stop(self, handle: RuntimeHandle, timeout: float = 10) -> None:
        import docker

        container = self._container(handle.ref)
        if container is None:
            return
        try:
            container.stop(timeout=int(max(1, timeout)))
            _keep_log(handle, container)
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise DeployError(
                f"Docker could not stop {container.name}: {exc.explanation or exc}"
            ) from exc

    def status(self, handle: RuntimeHandle) -> ServerStatus:
        container = self._container(handle.ref)
        if container is None:
            return "missing"
        state = container.attrs.get("State", {})
        if state.get("Restarting") or state.get("Status") == "restarting":
            return "restarting"
        if state.get("Status") == "created":
            return "starting"
        if state.get("Status") == "running":
            return "running" if probe_ready(self.address(handle)) else "starting"
        return "exited"

    def logs(self, handle: RuntimeHandle, tail: int = 200) -> str:
        container = self._container(handle.ref)
        if container is None or tail <= 0:
            return ""
        output = container.logs(stdout=True, stderr=True, tail=tail)
        return output.decode("utf-8", errors="replace")

    def container(self, handle: RuntimeHandle) -> Any:
        """The SDK container object for ``handle`` (None when gone), for inspection."""
        return self._container(handle.ref)

    def _container(self, ref: str) -> Any:
        import docker

        try:
            return self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None

    def _remove_stale(self, name: str) -> None:
        """Clear a stopped leftover with the same name; refuse to replace a live one."""
        existing = self._container(name)
        if existing is None:
            return
        if existing.status in ("running", "restarting"):
            raise DeployError(
                f"container {name} is already running (port {existing.labels.get('nbdeploy.port')}); "
                "stop that deployment first"
            )
        existing.remove(force=True)


def _keep_log(handle: RuntimeHandle, container: Any) -> None:
    """The removed container's log, kept under ``NBDEPLOY_HOME/run/`` until ``prune``."""
    from nbdeploy.runtimes.process import LOGFILE, run_root

    directory = run_root() / f"{handle.name}-{handle.port}-{time.time_ns()}"
    directory.mkdir(mode=0o700, parents=True)
    (directory / LOGFILE).write_bytes(container.logs(stdout=True, stderr=True, tail=10_000))


RUNTIME = DockerRuntime
