"""What one framework's exporter provides, so a single registry answers "which framework is
this", "export it" and "run the original" instead of one dispatch chain per question."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from nbdeploy._types import Signature


@dataclass
class Exported:
    """What an exporter hands back: the ONNX model and the original's answers.

    ``feeds`` are the sample as the original model saw it, keyed by ONNX input name;
    ``reference`` are the original model's outputs on them (a list in ONNX output order, or a
    mapping by output name). ``reference`` is None for an ONNX model taken as given: there is
    no original to compare with or to run eagerly.
    """

    proto: Any
    feeds: dict[str, np.ndarray]
    reference: list[np.ndarray] | dict[str, np.ndarray] | None
    framework: str
    framework_version: str | None
    default_name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    nan_probe: NanProbe | None = None
    """Rows with a missing value the original model answered (see ``accepts_nan``), checked
    against the export too; None when the exporter did not probe the original."""
    files: dict[str, Path | bytes] = field(default_factory=dict)
    """Sidecar files stored beside the model (e.g. ``tokenizer.json``): name -> path or bytes."""
    signature: Signature | None = None
    """The signature the artifact presents when it is not the graph's own: raw text in for a
    model whose server tokenizes (``feeds`` and ``reference`` stay the graph's). None: the
    graph's."""


@dataclass
class NanProbe:
    """Which inputs the ORIGINAL model accepts NaN in, and its answers on the probe rows.

    Row ``i`` of ``feeds`` is a real sample row with NaN in input ``inputs[i]``; ``reference``
    holds the original's outputs on those rows (keyed like ``Exported.reference``). The export
    keeps an input in ``metadata["accepts_nan"]`` only when the ONNX model agrees on its row.
    """

    inputs: list[str]
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


class Exporter(Protocol):
    """One framework's way to ONNX.

    Implementations import their framework inside the methods that need it, never at module
    level, and ``detect`` never imports it at all: asking what a model is must not load torch
    or TensorFlow.
    """

    framework: str
    """The name recorded as the artifact's ``framework`` (``torch``, ``keras``, ...)."""

    def detect(self, model: Any) -> bool:
        """True when ``model`` (an object, or a path for file-based formats) is this
        framework's, judged by class module/name or path only."""
        ...

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """The ONNX model with a dynamic batch dim and the original's outputs on ``sample``."""
        ...

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """A zero-argument callable running the original model once on ``sample``, with the
        inputs converted up front so a benchmark times only the model."""
        ...

    def versions(self) -> dict[str, str]:
        """The framework and converter versions recorded in the artifact's metadata."""
        ...
