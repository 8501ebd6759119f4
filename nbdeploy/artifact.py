"""ModelArtifact: an ONNX file on disk plus everything nbdeploy learned about it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import _format, _settings
from nbdeploy._types import Parity, Quantization, Signature

METADATA_FILE = "nbdeploy.json"
MODEL_FILE = "model.onnx"
"""The model file of an ONNX artifact; other formats name theirs in ``nbdeploy.json``."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelArtifact:
    """An ONNX model in a directory with its ``nbdeploy.json``.

    ``variant`` is ``fp32`` for an export and the quantization mode for a variant. A variant
    whose quantization failed or changed nothing keeps ``ok == False`` and says why in
    ``quantization.reason``; it is never served.
    """

    path: Path
    name: str
    signature: Signature
    framework: str
    framework_version: str | None = None
    variant: str = "fp32"
    parity: Parity | None = None
    quantization: Quantization | None = None
    version: int | None = None
    labels: list[str] | None = None
    input_kind: str = "tensor"
    metadata: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] | None = None
    source_model: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.quantization is None or self.quantization.status == "ok"

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def sidecars(self) -> list[Path]:
        """Files that travel with the model (a tokenizer, say): everything in its directory
        but the model file and ``nbdeploy.json``, copied wherever the model goes."""
        if not self.directory.is_dir():
            return []
        skip = {self.path.name, METADATA_FILE}
        return sorted(
            path
            for path in self.directory.iterdir()
            if path.is_file() and path.name not in skip and not path.name.startswith(".")
        )

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def sha256(self) -> str:
        return self.metadata.get("onnx_sha256") or sha256_file(self.path)

    @property
    def label(self) -> str:
        """Short display name, e.g. ``digits:int8``."""
        return f"{self.name}:{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model_file": self.path.name,
            "variant": self.variant,
            "framework": self.framework,
            "framework_version": self.framework_version,
            "signature": self.signature.to_dict(),
            "parity": self.parity.to_dict() if self.parity else None,
            "quantization": self.quantization.to_dict() if self.quantization else None,
            "labels": self.labels,
            "input_kind": self.input_kind,
            "onnx_sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "metadata": {k: v for k, v in self.metadata.items() if k != "onnx_sha256"},
            "benchmark": self.benchmark,
        }

    def summary(self) -> dict[str, Any]:
        """What a variants table shows: size, parity and quantization outcome (JSON-safe)."""
        try:
            size: int | None = self.size_bytes
        except OSError:
            size = None
        return {
            "variant": self.variant,
            "size_bytes": size,
            "parity": self.parity.to_dict() if self.parity else None,
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }

    def save_metadata(self) -> None:
        """Rewrite ``nbdeploy.json`` beside the model (atomically, via a temp file)."""
        write_json_atomic(self.directory / METADATA_FILE, self.to_dict())

    @classmethod
    def find(cls, value: Any) -> ModelArtifact | None:
        """``value`` itself when it is an artifact, the artifact in it when it is an artifact
        directory (one holding ``nbdeploy.json``), else None: the one test every caller uses
        before deciding to export or to time a raw model."""
        if isinstance(value, ModelArtifact):
            return value
        if isinstance(value, str | Path) and (Path(value) / METADATA_FILE).is_file():
            return cls.load(value)
        return None

    @classmethod
    def load(cls, directory: str | Path) -> ModelArtifact:
        """Open a directory holding ``model.onnx`` and ``nbdeploy.json``."""
        directory = Path(directory)
        data = json.loads((directory / METADATA_FILE).read_text())
        metadata = dict(data.get("metadata") or {})
        metadata["onnx_sha256"] = data.get("onnx_sha256")
        return cls(
            path=directory / data.get("model_file", MODEL_FILE),
            name=data["name"],
            signature=Signature.from_dict(data["signature"]),
            framework=data["framework"],
            framework_version=data.get("framework_version"),
            variant=data.get("variant", "fp32"),
            parity=Parity.from_dict(data["parity"]) if data.get("parity") else None,
            quantization=Quantization.from_dict(data["quantization"])
            if data.get("quantization")
            else None,
            version=data.get("version"),
            labels=data.get("labels"),
            input_kind=data.get("input_kind", "tensor"),
            metadata=metadata,
            benchmark=data.get("benchmark"),
        )

    def _repr_html_(self) -> str:
        parity = str(self.parity) if self.parity else "n/a"
        status = "ok" if self.ok else f"not usable: {self.quantization.reason}"
        return (
            f"<b>{self.label}</b> ({self.framework}) &middot; {_format.size(self.size_bytes)}"
            f" &middot; parity: {parity} &middot; {status}<br><code>{self.path}</code>"
        )


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def store_onnx(
    proto_or_path: Any,
    *,
    name: str,
    signature: Signature | None = None,
    files: Mapping[str, Path | bytes] | None = None,
    **fields: Any,
) -> ModelArtifact:
    """Store an ONNX model (a proto, or a file to copy) as an artifact; see :func:`store_model`."""
    import onnx

    def write(path: Path) -> None:
        if isinstance(proto_or_path, str | Path):
            shutil.copyfile(proto_or_path, path)
        else:
            onnx.save(proto_or_path, str(path))

    return store_model(MODEL_FILE, write, name=name, signature=signature, files=files, **fields)


def store_model(
    model_file: str,
    write: Callable[[Path], None],
    *,
    name: str,
    signature: Signature | None = None,
    files: Mapping[str, Path | bytes] | None = None,
    **fields: Any,
) -> ModelArtifact:
    """Write a model file (``write(path)``) into the content-addressed artifact area and return
    its artifact, whatever the format (``model.onnx``, a Python model's ``model.pkl``).

    The directory is named after the model's sha256 and filled through a temp dir + rename,
    so a half-written artifact is never visible and the same model is stored once. ``files``
    are sidecars written next to the model (name -> a path to copy, or the bytes). Without a
    ``signature`` the model file is read as ONNX for one.
    """
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_settings.artifacts_dir()))
    try:
        model_path = scratch / model_file
        write(model_path)
        for file_name, content in (files or {}).items():
            target = scratch / Path(file_name).name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        digest = sha256_file(model_path)
        signature = signature or Signature.from_onnx(model_path)
        variant = fields.get("variant", "fp32")
        final = _settings.artifacts_dir() / f"{name}-{variant}-{digest[:16]}"
        metadata = dict(fields.pop("metadata", {}) or {})
        metadata["onnx_sha256"] = digest  # the model file's digest, whatever its format
        artifact = ModelArtifact(
            path=model_path, name=name, signature=signature, metadata=metadata, **fields
        )
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / model_file).exists():
                raise
            shutil.rmtree(scratch, ignore_errors=True)
        artifact.path = final / model_file
        artifact.save_metadata()
        return artifact
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
