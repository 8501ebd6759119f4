"""Container images for endpoints: base + shared server layer + one small model layer.

Builds run without network access. The server's wheels are downloaded on the host, pinned to
the exact versions installed here (so the onnxruntime that was benchmarked is the one that
serves), cached in a wheelhouse, and sent in the build context. The server image depends only
on the base image, the wheels and the ``nbdeploy/serve`` sources, so every model shares it and
a model image adds one small layer on top.

A Python model (or any artifact whose ``nbdeploy.json`` lists ``metadata.requirements``) gets
one more layer between the two: the wheels of its requirements and of their dependencies,
minus what the server layer already has, resolved by pip for the image's platform with the
server's pins (and the versions installed here) as constraints, downloaded on the host into a
wheelhouse cached by requirements hash, installed offline. That layer is its own image,
``nbdeploy-requirements:<hash>``, shared by every model with the same requirements. An ONNX
model's image stays base + server + model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nbdeploy import _procs, _settings
from nbdeploy._errors import DeployError
from nbdeploy.runtimes.base import ModelFiles, inspect_model_dir
from nbdeploy.runtimes.engine import docker_client
from nbdeploy.vocabulary import Progress, check_name, emit

SERVER_PACKAGES: tuple[str, ...] = (
    "onnxruntime",
    "numpy",
    "starlette",
    "uvicorn",
    "httptools",
    "uvloop",
    "prometheus-client",
    "grpcio",
    "orjson",
)
TARGET_PYTHON = "3.11"
# Debian bookworm (both base images) has glibc 2.36: every manylinux tag up to it fits.
PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)),
)
# What pip's environment markers see inside the image, whatever the host is.
TARGET_MARKERS: dict[str, str] = {
    "python_version": TARGET_PYTHON,
    "python_full_version": f"{TARGET_PYTHON}.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "extra": "",
}


@dataclass(frozen=True)
class Target:
    """The Python and platform wheels are downloaded for: the image's (cp311 manylinux), or
    this interpreter's own (``platforms`` empty: pip's defaults) for a local environment."""

    python_version: str
    platforms: tuple[str, ...] = ()
    markers: dict[str, str] | None = None
    """What environment markers see; None: this interpreter's environment."""


IMAGE_TARGET = Target(TARGET_PYTHON, PLATFORMS, TARGET_MARKERS)


def host_target() -> Target:
    """Wheels for this interpreter: the image's target when it is a Linux x86_64 CPython 3.11
    (so the process runtime and the image share one wheelhouse), else pip's defaults."""
    same = (
        sys.implementation.name == "cpython"
        and "{}.{}".format(*sys.version_info[:2]) == TARGET_PYTHON
        and sys.platform == "linux"
        and platform.machine() == "x86_64"
    )
    return IMAGE_TARGET if same else Target("{}.{}".format(*sys.version_info[:2]))


DEFAULT_BASE_IMAGE = "python:3.11-slim"
LOCAL_BASE_IMAGE = "nbdeploy/base:bookworm"  # what scripts/docker-engine.sh builds
SERVER_REPOSITORY = "nbdeploy-server"
REQUIREMENTS_REPOSITORY = "nbdeploy-requirements"
SITE_PACKAGES = f"/opt/venv/lib/python{TARGET_PYTHON}/site-packages"
MODEL_REPOSITORY_PREFIX = "nbdeploy-model-"
MODELS_ROOT = "/models"
USER_ID = 10001

_ENTRYPOINT = json.dumps(
    [
        "/bin/sh",
        "-c",
        f"exec python -m nbdeploy.serve --model-repository {MODELS_ROOT}"
        ' --host "${NBDEPLOY_HOST:-127.0.0.1}" --port "${NBDEPLOY_PORT:-8080}" "$@"',
        "nbdeploy-serve",
    ]
)
_HEALTHCHECK = json.dumps(
    [
        "python",
        "-c",
        "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready'"
        " % os.environ.get('NBDEPLOY_PORT', '8080'), timeout=2)",
    ]
)
_CHECK_PYTHON = (
    "import sys; assert sys.version_info[:2] == (3, 11), "
    '"the base image must run Python 3.11 for the cp311 wheels; it has " + sys.version'
)

SERVER_DOCKERFILE = f"""\
FROM {{base}} AS wheels
COPY wheels /wheels
RUN python3 -c '{_CHECK_PYTHON}' \\
 && python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-index --find-links /wheels --no-cache-dir \\
    --disable-pip-version-check --no-compile -r /wheels/requirements.txt \\
 && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools \\
 && (/opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib > /dev/null || true)

FROM {{base}}
COPY --from=wheels /opt/venv /opt/venv
RUN echo "nbdeploy:x:{USER_ID}:{USER_ID}:nbdeploy:/tmp:/usr/sbin/nologin" >> /etc/passwd \\
 && echo "nbdeploy:x:{USER_ID}:" >> /etc/group
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \\
    HOME=/tmp NBDEPLOY_HOST=127.0.0.1 NBDEPLOY_PORT=8080
COPY app /app
WORKDIR /app
USER {USER_ID}
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD {_HEALTHCHECK}
ENTRYPOINT {_ENTRYPOINT}
CMD []
"""

# The user's wheels on top of the server's venv: installed (without their dependencies, which
# pip already resolved into the wheelhouse) by a throwaway pip in a build stage, so the layer
# holds only the installed packages.
REQUIREMENTS_DOCKERFILE = f"""\
FROM {{base}} AS wheels
COPY wheels /wheels
RUN python3 -m venv /opt/pip \\
 && /opt/pip/bin/python -m pip install --no-index --find-links /wheels --no-cache-dir \\
    --disable-pip-version-check --no-compile --no-deps --target /opt/site \\
    -r /wheels/requirements.txt \\
 && rm -rf /opt/site/bin \\
 && (/opt/pip/bin/python -m compileall -q -j 0 -d {SITE_PACKAGES} /opt/site > /dev/null || true)

FROM {{server}}
COPY --from=wheels /opt/site {SITE_PACKAGES}
"""

MODEL_DOCKERFILE = """\
FROM {server}
COPY model {models_root}/{name}/{version}
"""


def cache_dir() -> Path:
    """Where downloads shared between deployments live: ``NBDEPLOY_CACHE`` or ``NBDEPLOY_HOME``."""
    root = os.environ.get("NBDEPLOY_CACHE")
    path = Path(root).expanduser() if root else _settings.home()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pinned_requirements(
    roots: Sequence[str] = SERVER_PACKAGES, markers: dict[str, str] | None = TARGET_MARKERS
) -> list[str]:
    """``name==version`` for the server packages (or ``roots``) and all they need, as
    installed on this host; dependencies count when their markers hold for ``markers`` (the
    image's environment; None: this interpreter's)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    pending = list(roots)
    while pending:
        wanted = pending.pop()
        key = canonicalize_name(wanted)
        if key in pins:
            continue
        try:
            dist = importlib.metadata.distribution(wanted)
        except importlib.metadata.PackageNotFoundError as exc:
            raise DeployError(
                f"the endpoint image needs {wanted} at the version installed here, but it is not "
                f"installed in {sys.prefix}; pip install {wanted}"
            ) from exc
        pins[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            environment = markers if markers is not None else {"extra": ""}
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def wheelhouse(progress: Progress | None = None, target: Target = IMAGE_TARGET) -> Path:
    """A directory of the server's wheels (cp311 manylinux for the image) and a
    ``requirements.txt``.

    Downloaded once per set of pinned versions from the package index and kept under
    ``cache_dir()/wheelhouse/<key>``; the directory appears only when complete.
    """
    pins = pinned_requirements(markers=target.markers)
    key = _digest(json.dumps([pins, list(target.platforms), target.python_version]))[:16]

    def fill(scratch: Path) -> None:
        emit(
            progress,
            "image",
            f"downloading server wheels for Python {target.python_version}: {' '.join(pins)}",
        )
        _pip_download(pins, scratch, progress, target=target)
        (scratch / "requirements.txt").write_text("\n".join(pins) + "\n")

    return _cached_wheelhouse(cache_dir() / "wheelhouse" / key, fill)


def requirements_wheelhouse(
    requirements: Sequence[str], progress: Progress | None = None, target: Target = IMAGE_TARGET
) -> Path:
    """Wheels for a model's ``requirements`` and their dependencies, minus the server's, and a
    ``requirements.txt`` pinning exactly those wheels.

    pip resolves them for ``target`` with the server's pins as constraints (so a shared
    dependency gets the server's version and no second copy), preferring the versions
    installed here for the other dependencies (what the model was checked with); when those
    cannot all be had for the target, pip chooses. Cached under
    ``cache_dir()/requirements/<key>`` (key: the requirements, the server pins, the target).
    """
    from packaging.utils import canonicalize_name, parse_wheel_filename

    wanted = sorted(dict.fromkeys(str(r) for r in requirements))
    server = wheelhouse(progress, target)
    server_pins = (server / "requirements.txt").read_text().split()
    server_names = {canonicalize_name(pin.split("==")[0]) for pin in server_pins}
    key = _digest(json.dumps([wanted, server_pins, list(target.platforms), target.python_version]))[
        :16
    ]

    def fill(scratch: Path) -> None:
        # The server's wheels, already here, so pip takes them instead of downloading again.
        for wheel in server.glob("*.whl"):
            _link(wheel, scratch / wheel.name)
        attempts = [server_pins + _installed_constraints(wanted, target), server_pins]
        failure: DeployError | None = None
        for constraints in dict.fromkeys(tuple(a) for a in attempts):
            constraint_file = scratch / ".constraints.txt"
            constraint_file.write_text("\n".join(constraints) + "\n")
            emit(
                progress,
                "image",
                f"downloading the model's wheels for Python {target.python_version}:"
                f" {' '.join(wanted)}",
            )
            try:
                _pip_download(
                    wanted,
                    scratch,
                    progress,
                    target=target,
                    constraints=constraint_file,
                    what="the model's requirements",
                )
            except DeployError as exc:
                failure = exc
                continue
            failure = None
            break
        if failure is not None:
            raise DeployError(
                f"the model's requirements {wanted} cannot be installed next to the server's"
                f" packages ({', '.join(server_pins)}) for Python {target.python_version}: "
                f"{failure}"
            )
        pins = []
        for wheel in sorted(scratch.glob("*.whl")):
            name, version, _build, _tags = parse_wheel_filename(wheel.name)
            if name in server_names:
                wheel.unlink()
            else:
                pins.append(f"{name}=={version}")
        (scratch / ".constraints.txt").unlink(missing_ok=True)
        (scratch / "requirements.txt").write_text("\n".join(pins) + "\n")

    return _cached_wheelhouse(cache_dir() / "requirements" / key, fill)


def _installed_constraints(requirements: Sequence[str], target: Target) -> list[str]:
    """The installed versions of what the requirements need, for those pinned to the installed
    version (the model was checked with exactly these); the requirements themselves excluded."""
    from packaging.utils import canonicalize_name

    roots, named = [], set()
    for pin in requirements:
        name, _, version = pin.partition("==")
        named.add(canonicalize_name(name))
        try:
            if importlib.metadata.version(name) == version:
                roots.append(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        closure = pinned_requirements(roots, markers=target.markers) if roots else []
    except DeployError:
        return []
    return [pin for pin in closure if canonicalize_name(pin.split("==")[0]) not in named]


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _pip_download(
    pins: Sequence[str],
    dest: Path,
    progress: Progress | None,
    *,
    target: Target = IMAGE_TARGET,
    constraints: Path | None = None,
    what: str = "the server's wheels",
) -> None:
    platforms = [arg for platform in target.platforms for arg in ("--platform", platform)]
    if platforms:
        platforms = [
            "--python-version",
            target.python_version,
            "--implementation",
            "cp",
            *platforms,
        ]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--only-binary=:all:",
        *platforms,
        *(["--constraint", str(constraints)] if constraints is not None else []),
        "--dest",
        str(dest),
        *pins,
    ]
    _procs.run_logged(command, progress, f"could not download {what} from the package index")


def base_image(client: Any = None) -> str:
    """The image endpoints start from: ``NBDEPLOY_BASE_IMAGE``, else a local Python 3.11 base.

    Without the setting, ``python:3.11-slim`` is used when present or pullable; the image
    ``scripts/docker-engine.sh`` builds (``nbdeploy/base:bookworm``) is used when it is the one
    present, so machines without a registry work without configuration.
    """
    configured = os.environ.get("NBDEPLOY_BASE_IMAGE")
    if configured:
        return configured
    client = client or docker_client()
    for candidate in (DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE):
        if _local_image(client, candidate) is not None:
            return candidate
    return DEFAULT_BASE_IMAGE


def serve_sources() -> dict[str, bytes]:
    """The inference server's files, keyed by path relative to the ``nbdeploy`` package."""
    package = Path(__file__).resolve().parents[1]
    serve = package / "serve"
    files = {
        str(path.relative_to(package)): path.read_bytes()
        for path in sorted(serve.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    if "serve/__main__.py" not in files:
        raise DeployError(f"the inference server is missing: no __main__.py in {serve}")
    return files


def ensure_server_image(progress: Progress | None = None, *, rebuild: bool = False) -> str:
    """The tag of the shared server image, built only when no image for this content exists.

    ``rebuild`` builds it again from scratch, without Docker's layer cache (to time a cold build).
    """
    client = docker_client()
    try:
        base = base_image(client)
        base_id = _ensure_base(client, base, progress)
        wheels = wheelhouse(progress)
        sources = serve_sources()
        labels = {"nbdeploy.managed": "true", "nbdeploy.role": "server", "nbdeploy.base": base}
        dockerfile = SERVER_DOCKERFILE.replace("{base}", base) + _label_line(labels)
        key = _digest(
            json.dumps(
                [
                    base_id,
                    sorted(p.name for p in wheels.glob("*.whl")),
                    dockerfile,
                    {path: _digest(data) for path, data in sources.items()},
                ]
            )
        )[:16]
        tag = f"{SERVER_REPOSITORY}:{key}"
        if not rebuild and _local_image(client, tag) is not None:
            return tag
        emit(progress, "image", f"building server image {tag} from {base}")
        with _context_tar() as (tar, context):
            _add_bytes(tar, "Dockerfile", dockerfile.encode())
            for wheel in sorted(wheels.iterdir()):
                tar.add(str(wheel), arcname=f"wheels/{wheel.name}", filter=_normalize)
            _add_bytes(tar, "app/nbdeploy/__init__.py", b"")
            for path, data in sources.items():
                _add_bytes(tar, f"app/nbdeploy/{path}", data)
            tar.close()
            _build(client, context, tag, progress, nocache=rebuild)
        return tag
    finally:
        client.close()


def model_image_tag(name: str, version: int, sha256: str) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-_.") or "model"
    return f"{MODEL_REPOSITORY_PREFIX}{slug}:{int(version)}-{sha256[:12]}"


def ensure_requirements_image(
    requirements: Sequence[str], progress: Progress | None = None, *, rebuild: bool = False
) -> str:
    """The tag of the server image plus one layer holding ``requirements`` (and what they
    need beyond the server's packages), built only when no image for this content exists."""
    server = ensure_server_image(progress)
    house = requirements_wheelhouse(requirements, progress)
    wheels = sorted(house.glob("*.whl"))
    if not wheels:
        return server
    client = docker_client()
    try:
        base = base_image(client)
        labels = {
            "nbdeploy.managed": "true",
            "nbdeploy.role": "requirements",
            "nbdeploy.server": server,
            "nbdeploy.requirements": " ".join(sorted(requirements)),
        }
        dockerfile = REQUIREMENTS_DOCKERFILE.replace("{base}", base).replace(
            "{server}", server
        ) + _label_line(labels)
        key = _digest(json.dumps([server, [w.name for w in wheels], dockerfile]))[:16]
        tag = f"{REQUIREMENTS_REPOSITORY}:{key}"
        if not rebuild and _local_image(client, tag) is not None:
            return tag
        emit(
            progress,
            "image",
            f"building the requirements layer {tag}: {' '.join(w.name for w in wheels)}",
        )
        with _context_tar() as (tar, context):
            _add_bytes(tar, "Dockerfile", dockerfile.encode())
            for wheel in wheels:
                tar.add(str(wheel), arcname=f"wheels/{wheel.name}", filter=_normalize)
            tar.add(
                str(house / "requirements.txt"),
                arcname="wheels/requirements.txt",
                filter=_normalize,
            )
            tar.close()
            _build(client, context, tag, progress, nocache=rebuild)
        return tag
    finally:
        client.close()


def server_image_for(files: Sequence[ModelFiles], progress: Progress | None = None) -> str:
    """The image a server holding these versions runs (their files are mounted, not baked):
    the shared server image, or the requirements layer every version's requirements need."""
    for version in files:
        if version.format == "python" and version.python not in (None, TARGET_PYTHON):
            raise DeployError(
                f"{version.directory} is a Python model pickled with Python {version.python};"
                f" the image runs Python {TARGET_PYTHON}, which cannot load its code: deploy it"
                " with runtime='process', or export it from a Python 3.11 kernel"
            )
    requirements = sorted({r for version in files for r in version.requirements})
    if requirements:
        return ensure_requirements_image(requirements, progress)
    return ensure_server_image(progress)


def build_model_image(
    model_dir: Path, name: str, version: int, sha256: str, progress: Progress | None = None
) -> str:
    """The tag of an image serving ``model_dir`` as ``/models/<name>/<version>``.

    A model with ``requirements`` (a Python model) is built on its requirements layer; a
    Python model's ``model.pkl`` must still have the sha256 it was registered with.
    """
    model_dir = Path(model_dir)
    check_name(name)
    files = inspect_model_dir(model_dir, sha256)
    if files.format == "python" and files.python not in (None, TARGET_PYTHON):
        raise DeployError(
            f"{name} v{version} is a Python model pickled with Python {files.python}; the image"
            f" runs Python {TARGET_PYTHON}, which cannot load its code: deploy it with"
            " runtime='process', or export it from a Python 3.11 kernel"
        )
    if files.requirements:
        server = ensure_requirements_image(files.requirements, progress)
    else:
        server = ensure_server_image(progress)
    tag = model_image_tag(name, version, sha256)
    client = docker_client()
    try:
        existing = _local_image(client, tag)
        if existing is not None and existing.labels.get("nbdeploy.server") == server:
            return tag
        emit(progress, "image", f"building model image {tag}")
        labels = {
            "nbdeploy.managed": "true",
            "nbdeploy.role": "model",
            "nbdeploy.name": name,
            "nbdeploy.version": str(int(version)),
            "nbdeploy.sha256": sha256,
            "nbdeploy.server": server,
        }
        if files.format != "onnx":
            labels["nbdeploy.format"] = files.format
        dockerfile = MODEL_DOCKERFILE.format(
            server=server, models_root=MODELS_ROOT, name=name, version=int(version)
        )
        with _context_tar() as (tar, context):
            _add_bytes(tar, "Dockerfile", (dockerfile + _label_line(labels)).encode())
            for path in sorted(model_dir.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    arcname = f"model/{path.relative_to(model_dir)}"
                    tar.add(str(path), arcname=arcname, filter=_normalize)
            tar.close()
            _build(client, context, tag, progress)
        return tag
    finally:
        client.close()


def _ensure_base(client: Any, base: str, progress: Progress | None) -> str:
    """The id of the base image, pulling it when it is not on the machine."""
    import docker

    image = _local_image(client, base)
    if image is not None:
        return str(image.id)
    emit(progress, "image", f"pulling base image {base}")
    try:
        return str(client.images.pull(base).id)
    except docker.errors.APIError as exc:
        raise DeployError(
            f"base image {base} is not on this machine and could not be pulled; build one with "
            f"scripts/docker-engine.sh (tag {LOCAL_BASE_IMAGE}) or set NBDEPLOY_BASE_IMAGE to a "
            "local image with Python 3.11"
        ) from exc


def _local_image(client: Any, tag: str) -> Any:
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def _build(
    client: Any, context: IO[bytes], tag: str, progress: Progress | None, *, nocache: bool = False
) -> None:
    """Run one image build with no network, streaming its log; raise with the last lines."""
    import docker

    recent: deque[str] = deque(maxlen=25)
    context.seek(0)
    try:
        for chunk in client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            network_mode="none",
            nocache=nocache,
        ):
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in text.splitlines():
                if line.strip():
                    recent.append(line.rstrip())
                    emit(progress, "image", line.rstrip(), detail=True)
            if "error" in chunk:
                recent.append(str(chunk["error"]).strip())
                raise DeployError(f"building image {tag} failed:\n" + "\n".join(recent))
    except docker.errors.APIError as exc:
        raise DeployError(f"building image {tag} failed: {exc.explanation or exc}") from exc


def _label_line(labels: dict[str, str]) -> str:
    """One LABEL instruction for all labels: one build step instead of one per label."""
    pairs = " ".join(f"{json.dumps(key)}={json.dumps(value)}" for key, value in labels.items())
    return f"LABEL {pairs}\n"


class _context_tar:
    """A build context tar written to a temporary file (wheels are too big for memory)."""

    def __enter__(self) -> tuple[tarfile.TarFile, IO[bytes]]:
        self.file = tempfile.TemporaryFile(prefix="nbdeploy-context-")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
        return self.tar, self.file

    def __exit__(self, *exc: object) -> None:
        self.tar.close()
        self.file.close()


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Root-owned, world-readable, fixed mtime: the non-root server can read it, caches hit."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() else 0o644
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = _normalize(tarfile.TarInfo(arcname))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _digest(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _cached_wheelhouse(final: Path, fill: Callable[[Path], None]) -> Path:
    """``final`` once complete: filled by ``fill`` in a scratch directory beside it, then
    renamed into place, so a half-downloaded wheelhouse is never used; another process that
    got there first wins."""
    if (final / "requirements.txt").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
    try:
        fill(scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / "requirements.txt").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
