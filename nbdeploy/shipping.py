"""Ship one version to a registry: an image that bakes the model in, pushed with the Docker SDK.

The pushed image is the local model image (the shared server image plus ``/models/<name>/<v>``)
with one more build step that sets the name's server settings as the image's default
arguments, so ``docker run IMAGE`` serves exactly as the local endpoint was tuned. No token is
baked in: the server reads ``NBDEPLOY_TOKEN`` from its environment (a Kubernetes Secret).

The tag is ``REGISTRY/nbdeploy-NAME:VERSION-SHA`` (SHA: the first 12 hex digits of the model's
sha256), so a tag names one model exactly. The push uses the credentials of the user's Docker
config (``~/.docker/config.json``), which the Docker SDK reads itself. The pushed reference and
the registry's digest are kept in the store (``pushes``), which ``nbdeploy.manifests`` reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from nbdeploy._errors import DeployError, InputError
from nbdeploy.vocabulary import DEPLOYMENT_STATES, Progress, ServerSettings, check_name, emit

IMAGE_PREFIX = "nbdeploy-"
# Flags that need something a pushed image does not have (a writable request-log directory).
LOCAL_ONLY_FLAGS = ("--log-requests",)

SHIPPED_DOCKERFILE = """\
FROM {model}
CMD {cmd}
"""


@dataclass(frozen=True)
class PushResult:
    """One pushed image: ``reference`` is the tag, ``pinned`` the same image by digest."""

    name: str
    version: int
    sha256: str
    registry: str
    reference: str
    digest: str
    settings: dict[str, Any]

    @property
    def repository(self) -> str:
        return self.reference.rsplit(":", 1)[0]

    @property
    def pinned(self) -> str:
        """``REGISTRY/nbdeploy-NAME@sha256:...``: what a manifest runs, immutable."""
        return f"{self.repository}@{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pinned": self.pinned}

    def __str__(self) -> str:
        return f"pushed {self.name} v{self.version}: {self.reference} ({self.digest})"


def check_registry(registry: str) -> str:
    """``HOST[:PORT][/PREFIX...]`` without a scheme or a trailing slash."""
    value = (registry or "").strip().rstrip("/")
    if "://" in value:
        raise InputError(f"registry must be HOST:PORT/PREFIX without a scheme; got {registry!r}")
    pattern = r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    if not re.fullmatch(pattern, value):
        raise InputError(
            f"registry must look like HOST:PORT/PREFIX (lowercase path), e.g."
            f" 127.0.0.1:5000/team; got {registry!r}"
        )
    return value


def image_reference(registry: str, name: str, version: int, sha256: str) -> str:
    """``REGISTRY/nbdeploy-NAME:VERSION-SHA`` with the name made a valid repository path."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-_.") or "model"
    slug = re.sub(r"[_.-]{2,}", "-", slug)
    return f"{check_registry(registry)}/{IMAGE_PREFIX}{slug}:{int(version)}-{sha256[:12]}"


def pod_server_args(settings: ServerSettings) -> list[str]:
    """The server's tuning flags for a pod: the local deployment's, minus local-only ones."""
    args = settings.server_args()
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in LOCAL_ONLY_FLAGS:
            skip = True
            continue
        kept.append(arg)
    return kept


def settings_of(name: str) -> ServerSettings:
    """The settings of the name's latest deployment (any state), else the defaults."""
    from nbdeploy.store import Store

    records = Store().deployments(name=name, states=DEPLOYMENT_STATES)
    if not records:
        return ServerSettings()
    return max(records, key=lambda record: record.id).settings


def push(
    name: str,
    *,
    registry: str,
    version: int | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Build (or reuse) the image baking ``name`` v``version`` (newest by default) in, push it
    to ``registry`` and record the reference and digest in the store."""
    import docker

    from nbdeploy.runtimes import image
    from nbdeploy.runtimes.engine import docker_client
    from nbdeploy.store import Store

    check_name(name)
    registry = check_registry(registry)
    store = Store()
    rows = store.versions(name)
    if not rows:
        raise DeployError(f"no registered model named {name!r}: deploy or register it first")
    if version is None:
        row = rows[0]
    else:
        row = next((r for r in rows if int(r["version"]) == int(version)), None)
        if row is None:
            known = ", ".join(f"v{r['version']}" for r in rows)
            raise DeployError(f"{name} has no version {version}; it has {known}")
    version, sha256 = int(row["version"]), str(row["sha256"])
    settings = settings_of(name)
    model_tag = image.build_model_image(_version_dir(row["path"]), name, version, sha256, progress)
    reference = image_reference(registry, name, version, sha256)
    repository, tag = reference.rsplit(":", 1)
    labels = {
        "nbdeploy.managed": "true",
        "nbdeploy.role": "shipped",
        "nbdeploy.name": name,
        "nbdeploy.version": str(version),
        "nbdeploy.sha256": sha256,
        "nbdeploy.settings": json.dumps(settings.to_dict(), sort_keys=True),
    }
    client = docker_client(timeout=600)
    try:
        labels["nbdeploy.model-image"] = str(client.images.get(model_tag).id)
        dockerfile = SHIPPED_DOCKERFILE.format(
            model=model_tag, cmd=json.dumps(pod_server_args(settings))
        ) + image._label_line(labels)
        existing = image._local_image(client, reference)
        present = (existing.labels or {}) if existing is not None else None
        if present is None or any(present.get(k) != v for k, v in labels.items()):
            emit(progress, "image", f"building {reference} on {model_tag}")
            with image._context_tar() as (tar, context):
                image._add_bytes(tar, "Dockerfile", dockerfile.encode())
                tar.close()
                image._build(client, context, reference, progress)
        emit(progress, "image", f"pushing {reference}")
        digest = None
        try:
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise DeployError(f"pushing {reference} failed: {detail}")
                aux = chunk.get("aux") or {}
                if aux.get("Digest"):
                    digest = str(aux["Digest"])
                status = chunk.get("status")
                if status:
                    emit(progress, "image", f"{chunk.get('id', '')} {status}".strip(), detail=True)
        except docker.errors.APIError as exc:
            raise DeployError(f"pushing {reference} failed: {exc.explanation or exc}") from exc
        if digest is None:
            digests = client.images.get(reference).attrs.get("RepoDigests") or []
            digest = next(
                (d.split("@", 1)[1] for d in digests if d.startswith(repository + "@")), None
            )
        if digest is None:
            raise DeployError(f"the registry did not report a digest for {reference}")
    finally:
        client.close()
    result = PushResult(
        name=name,
        version=version,
        sha256=sha256,
        registry=registry,
        reference=reference,
        digest=digest,
        settings=settings.to_dict(),
    )
    store.add_push(**asdict(result))
    store.add_event(name, "push", str(result), result.to_dict())
    emit(progress, "image", str(result))
    return result


def latest_push(name: str, version: int | None = None) -> PushResult | None:
    """The last image pushed for ``name`` (of ``version``), from the store."""
    from nbdeploy.store import Store

    rows = Store().pushes(name, version)
    if not rows:
        return None
    row = rows[0]
    return PushResult(
        name=row["name"],
        version=int(row["version"]),
        sha256=row["sha256"],
        registry=row["registry"],
        reference=row["reference"],
        digest=row["digest"],
        settings=dict(row["settings"]),
    )


def _version_dir(path: str) -> Any:
    from pathlib import Path

    directory = Path(path)
    return directory if directory.is_dir() else directory.parent
