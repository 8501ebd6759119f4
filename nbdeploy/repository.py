"""The model repository: ``models/<name>/<version>/`` with the model file (``model.onnx``), its
sidecar files and ``nbdeploy.json``.

Versions are immutable (files read-only once written) and appear atomically: a version is
assembled in a private temp dir and renamed into place while the store's write lock is held,
so concurrent registrations from several processes get distinct numbers and nothing is left
half-written after a failure.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from nbdeploy import _settings
from nbdeploy._errors import RepositoryError
from nbdeploy.artifact import METADATA_FILE, ModelArtifact, write_json_atomic
from nbdeploy.store import Store
from nbdeploy.vocabulary import check_name

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP


class ModelRepository:
    """Registered model versions on disk, indexed in the SQLite store."""

    def __init__(self, root: str | Path | None = None, store: Store | None = None) -> None:
        self.root = Path(root) if root else _settings.models_dir()
        self.store = store or Store()

    def register(
        self,
        artifact: ModelArtifact,
        *,
        name: str | None = None,
        benchmark: dict[str, Any] | None = None,
    ) -> ModelArtifact:
        """Copy ``artifact`` in as the next version of ``name`` and return the registered copy."""
        if not artifact.ok:
            reason = artifact.quantization.reason if artifact.quantization else "unknown"
            raise RepositoryError(
                f"{artifact.label} is not a usable model ({reason}); register the fp32 export"
                " or a variant whose quantization succeeded"
            )
        name = check_name(artifact.name if name is None else name)
        model_root = self.root / name
        model_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))
        final: Path | None = None
        try:
            try:
                for source in (artifact.path, *artifact.sidecars):
                    shutil.copyfile(source, staging / source.name)
            except OSError as exc:
                raise RepositoryError(f"cannot read the model file {artifact.path}: {exc}") from exc
            with self.store.transaction() as conn:
                version = max(Store.max_version(conn, name), self._max_dir_version(name)) + 1
                record = replace(
                    artifact,
                    path=staging / artifact.path.name,
                    name=name,
                    version=version,
                    metadata=dict(artifact.metadata),
                    benchmark=benchmark if benchmark is not None else artifact.benchmark,
                )
                write_json_atomic(staging / METADATA_FILE, record.to_dict())
                for child in staging.iterdir():
                    child.chmod(READ_ONLY)
                staging.chmod(0o750)  # the container's server user reads it through the group
                final = model_root / str(version)
                os.rename(staging, final)
                try:
                    Store.insert_version(
                        conn,
                        name=name,
                        version=version,
                        path=str(final),
                        sha256=record.sha256,
                        variant=record.variant,
                        framework=record.framework,
                        size_bytes=(final / artifact.path.name).stat().st_size,
                    )
                except BaseException:
                    os.rename(final, staging)
                    final = None
                    raise
            record.path = final / artifact.path.name
            self.store.add_event(name, "registered", f"version {version} ({record.variant})")
            return record
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if final is not None and self.store.version(name, version) is None:
                shutil.rmtree(final, ignore_errors=True)
            raise

    def _max_dir_version(self, name: str) -> int:
        versions = [int(p.name) for p in (self.root / name).iterdir() if p.name.isdigit()]
        return max(versions, default=0)

    def get(self, name: str, version: int | None = None) -> ModelArtifact:
        """A registered version (the newest when ``version`` is None)."""
        rows = self.store.versions(name)
        if not rows:
            known = sorted({row["name"] for row in self.store.versions()})
            raise RepositoryError(
                f"no model named {name!r} is registered; known: {known or 'none'}"
            )
        if version is None:
            row = rows[0]
        else:
            matches = [row for row in rows if row["version"] == int(version)]
            if not matches:
                raise RepositoryError(
                    f"model {name!r} has no version {version}; versions: {[r['version'] for r in rows]}"
                )
            row = matches[0]
        return ModelArtifact.load(row["path"])

    def list_versions(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.store.versions(name)
