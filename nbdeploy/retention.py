"""Retention: remove registered versions, and prune what no deployment uses any more.

A name's server mounts its versions instead of baking an image per version, so what piles up
is registered versions nobody serves, images from earlier releases (one per version) or
requirements layers no container uses, and demo files of names that were stopped.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import _format, _settings
from nbdeploy._errors import DeployError, InputError
from nbdeploy.routing import Routing, name_lock
from nbdeploy.store import Store
from nbdeploy.vocabulary import check_name

DEMO_SUFFIXES = (".ipynb", ".json", ".voila.log")


@dataclass
class PruneReport:
    """What ``prune`` removed (or would remove, with ``dry_run``) and what it kept, and why."""

    removed: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "version", "what", "bytes"}``; ``what`` is version, image, log or demo."""
    kept: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "version", "why"}``."""
    freed_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        rows = [
            [row["what"], row.get("name") or "", str(row.get("version") or ""), verb]
            for row in self.removed
        ] + [
            ["version", row["name"], str(row["version"]), f"kept: {row['why']}"]
            for row in self.kept
        ]
        total = f"{verb} {len(self.removed)} item(s), {_format.size(self.freed_bytes)}"
        if not rows:
            return f"nothing to prune; {total}"
        return _format.text_table(["what", "name", "version", "action"], rows) + "\n" + total

    def __str__(self) -> str:
        return self.table()


def _serving_versions(store: Store, name: str) -> list[int]:
    """The versions the name's server holds right now (empty when it is stopped)."""
    if not store.deployments(name=name):
        return []
    route = store.route(name)
    if route is None:
        return sorted({row.version for row in store.deployments(name=name)})
    return Routing.from_json(route["routing"]).versions


def remove(name: str, version: int | None = None, *, force: bool = False) -> list[int]:
    """Delete one registered version of ``name`` (or all of them, with the name's demo and
    serving files); a version that serves is refused unless ``force``."""
    from nbdeploy import deployment

    check_name(name)
    store = Store()
    registered = sorted(row["version"] for row in store.versions(name))
    if not registered:
        raise DeployError(f"no registered model named {name!r}")
    if version is not None and version not in registered:
        raise InputError(f"{name} has versions {registered}; there is no version {version!r}")
    serving = _serving_versions(store, name)
    targets = registered if version is None else [version]
    busy = sorted(set(targets) & set(serving))
    if busy and not force:
        hint = (
            f"stop it first (nbd.stop_version({name!r}, {busy[0]}), or undeploy({name!r}))"
            if version is not None
            else f"stop it first with undeploy({name!r})"
        )
        raise DeployError(f"{name} serves version(s) {busy}; {hint}, or pass force=True (--force)")
    if busy:
        stable = deployment.current_record(name).version
        if version is None or version == stable:
            deployment.undeploy(name)
        else:
            deployment.stop_version(name, version)
    with name_lock(name):
        for number in targets:
            _delete_version(store, name, number)
        _remove_images(name, targets)
        if version is None:
            _remove_demo(name)
            shutil.rmtree(_settings.home() / "serving" / name, ignore_errors=True)
    store.add_event(name, "removed", f"versions {targets} removed")
    return targets


def prune(*, keep: int = 2, dry_run: bool = False) -> PruneReport:
    """Remove versions that serve nothing and are not among the ``keep`` newest of their
    name, model images no container uses, logs of stopped servers and demo files of names that
    serve nothing."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise InputError(f"keep must be a whole number of versions, 0 or more; got {keep!r}")
    store = Store()
    report = PruneReport(dry_run=dry_run)
    names = sorted({row["name"] for row in store.versions()})
    for name in names:
        serving = set(_serving_versions(store, name))
        versions = sorted((row["version"] for row in store.versions(name)), reverse=True)
        newest = set(versions[:keep])
        for number in versions:
            if number in serving or number in newest:
                why = "serving" if number in serving else f"among the {keep} newest"
                report.kept.append({"name": name, "version": number, "why": why})
                continue
            size = _directory_size(_settings.models_dir() / name / str(number))
            report.removed.append(
                {"name": name, "version": number, "what": "version", "bytes": size}
            )
            report.freed_bytes += size
            if not dry_run:
                with name_lock(name):
                    if number not in _serving_versions(store, name):
                        _delete_version(store, name, number)
                store.add_event(name, "pruned", f"version {number} removed")
    for image in _unused_images():
        report.removed.append({**image, "what": "image"})
        report.freed_bytes += image["bytes"]
        if not dry_run:
            _remove_image(image["id"])
    for directory in _stopped_run_dirs():
        size = _directory_size(directory)
        name = directory.name.rsplit("-", 2)[0]
        report.removed.append({"name": name, "version": None, "what": "log", "bytes": size})
        report.freed_bytes += size
        if not dry_run:
            shutil.rmtree(directory, ignore_errors=True)
    running = {row.name for row in store.deployments()}
    for path in sorted(_settings.demos_dir().iterdir()):
        demo_name = next(
            (path.name[: -len(s)] for s in DEMO_SUFFIXES if path.name.endswith(s)), None
        )
        if demo_name is None or demo_name in running:
            continue
        size = path.stat().st_size
        report.removed.append({"name": demo_name, "version": None, "what": "demo", "bytes": size})
        report.freed_bytes += size
        if not dry_run:
            _remove_demo(demo_name)
    return report


def _stopped_run_dirs() -> list[Path]:
    """Run directories of servers that were stopped (their pidfile is gone): only logs."""
    from nbdeploy.runtimes.process import PIDFILE

    root = _settings.home() / "run"
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not (d / PIDFILE).exists())


def _delete_version(store: Store, name: str, version: int) -> None:
    directory = _settings.models_dir() / name / str(version)
    store.forget_version(name, version)
    shutil.rmtree(directory, ignore_errors=True)


def _directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _remove_demo(name: str) -> None:
    from nbdeploy.demo import stop_demo

    stop_demo(name)
    for suffix in DEMO_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            (_settings.demos_dir() / f"{name}{suffix}").unlink()


def _docker() -> Any:
    from nbdeploy.runtimes.engine import docker_available, docker_client

    return docker_client() if docker_available() else None


def _remove_images(name: str, versions: list[int]) -> None:
    """Per-version model images of ``versions`` (earlier releases baked one per version)."""
    client = _docker()
    if client is None:
        return
    try:
        for image in client.images.list(filters={"label": f"nbdeploy.name={name}"}):
            if image.labels.get("nbdeploy.version") in {str(v) for v in versions}:
                _remove_image(image.id, client)
    finally:
        client.close()


def _unused_images() -> list[dict[str, Any]]:
    """nbdeploy's model and requirements images that no container (running or not) uses."""
    client = _docker()
    if client is None:
        return []
    try:
        used = {c.image.id for c in client.containers.list(all=True) if c.image is not None}
        found = []
        for image in client.images.list(filters={"label": "nbdeploy.managed=true"}):
            role = image.labels.get("nbdeploy.role")
            if role not in ("model", "requirements") or image.id in used:
                continue
            found.append(
                {
                    "id": image.id,
                    "name": image.labels.get("nbdeploy.name") or (image.tags or [image.id])[0],
                    "version": int(image.labels["nbdeploy.version"])
                    if image.labels.get("nbdeploy.version", "").isdigit()
                    else None,
                    "bytes": int(image.attrs.get("Size") or 0),
                }
            )
        return found
    finally:
        client.close()


def _remove_image(image_id: str, client: Any = None) -> None:
    import docker

    own = client is None
    client = client or _docker()
    if client is None:
        return
    try:
        client.images.remove(image_id, force=False, noprune=False)
    except docker.errors.APIError:
        pass  # still used (a child image, a container made meanwhile): it stays
    finally:
        if own:
            client.close()
