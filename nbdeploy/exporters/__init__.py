"""Export any supported model to ONNX, check it against the original, store it as an artifact.

Frameworks are recognised by class names and modules, never by importing them, so exporting
a scikit-learn model never loads torch or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import as_feeds
from nbdeploy._types import Parity, Signature
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.exporters import _keras, _onnx, _sklearn, _torch, parity
from nbdeploy.exporters.base import Exported, Exporter
from nbdeploy.vocabulary import check_name, safe_name

__all__ = [
    "EXPORTERS",
    "Exported",
    "Exporter",
    "as_artifact",
    "eager_runner",
    "export_model",
    "exporter_for",
    "framework_of",
]

SUPPORTED = (
    "torch.nn.Module, Keras 3 models (Sequential / functional / subclassed, or a .keras file),"
    " tf.Module / tf.function / a SavedModel directory, scikit-learn estimators and pipelines,"
    " an .onnx file or an onnx.ModelProto"
)

EXPORTERS: tuple[Exporter, ...] = (
    _torch.EXPORTER,
    _keras.KERAS,
    _keras.TENSORFLOW,
    _sklearn.EXPORTER,
    _onnx.EXPORTER,
)
"""Asked in order, first match wins: torch before Keras (a Keras layer on the torch backend
is a torch Module too), Keras before TensorFlow (a Keras model on the TF backend is a tf
AutoTrackable), ONNX last because it takes every path Keras and TensorFlow did not claim."""


def exporter_for(model: Any) -> Exporter:
    """The exporter that recognises ``model``, without importing any framework.

    Raises ExportError naming the supported types when none does.
    """
    for exporter in EXPORTERS:
        if exporter.detect(model):
            return exporter
    cls = type(model)
    raise ExportError(
        f"cannot export a {cls.__module__}.{cls.__qualname__}: supported are {SUPPORTED}"
    )


def framework_of(model: Any) -> str:
    """``torch``, ``keras``, ``tensorflow``, ``sklearn`` or ``onnx``, without importing any."""
    return exporter_for(model).framework


def export_model(
    model: Any,
    sample: Any,
    *,
    name: str | None,
    labels: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int | None = None,
) -> ModelArtifact:
    """Export ``model`` to ONNX with a dynamic batch dim and store it as an fp32 artifact.

    The export is run in onnxruntime on ``sample`` and compared with the original model; a
    difference beyond ``atol``/``rtol`` raises ParityError. ONNX inputs are stored as given
    (checked to run on ``sample`` when there is one) and get no parity record.
    """
    if name is not None:
        check_name(name)
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"atol and rtol must be >= 0; got atol={atol}, rtol={rtol}")
    exporter = exporter_for(model)
    label_list = [str(label) for label in labels] if labels is not None else None
    if exporter is not _onnx.EXPORTER:
        if sample is None:
            raise InputError(
                f"exporting a {exporter.framework} model needs a sample input (a few real rows,"
                " e.g. x_test[:8]): the export is traced and checked on it"
            )
        if isinstance(model, str | Path):
            name = name or safe_name(Path(model).stem)
            model = _keras.load_path(Path(model))
    exported = exporter.export(model, sample, opset=opset)
    return _finish(
        exported, model, name=name, labels=label_list or exported.labels, atol=atol, rtol=rtol
    )


def as_artifact(
    value: Any,
    sample: Any = None,
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
) -> ModelArtifact:
    """The artifact for anything a surface accepts as "a model".

    A ModelArtifact is returned as is and a directory holding ``nbdeploy.json`` is loaded
    (``name``, ``labels`` and ``sample`` do not apply to either); anything else (a framework
    model, an .onnx file or proto, a .keras file, a SavedModel directory) is exported.
    """
    found = ModelArtifact.find(value)
    return found if found is not None else export_model(value, sample, name=name, labels=labels)


def _finish(
    exported: Exported,
    model: Any,
    *,
    name: str | None,
    labels: list[str] | None,
    atol: float,
    rtol: float,
) -> ModelArtifact:
    """Check signature, parity and batch independence in onnxruntime, then store.

    An ONNX model taken as given (no reference outputs) is stored without those checks.
    """
    proto = exported.proto
    signature = Signature.from_onnx(proto)
    original = exported.reference is not None
    if original:
        _onnx.require_dynamic_batch(
            signature, exported.metadata.get("exporter", exported.framework)
        )
    _onnx.check_labels(signature, labels)
    return store_onnx(
        proto,
        name=name or exported.default_name,
        signature=signature,
        framework=exported.framework,
        framework_version=exported.framework_version,
        parity=_parity(exported, signature, atol=atol, rtol=rtol) if original else None,
        labels=labels,
        input_kind=signature.input_kind,
        source_model=model if original else None,
        metadata=exported.metadata,
    )


def _parity(exported: Exported, signature: Signature, *, atol: float, rtol: float) -> Parity:
    """The export's parity with the original; raises ParityError or ExportError when it fails,
    including when a row's answer depends on the batch it is in."""
    feeds = as_feeds(signature, exported.feeds)
    with _onnx.saved(exported.proto) as path:
        sess = _ort.session(path)
        outputs = _onnx.run(sess, feeds)
        reference = exported.reference
        candidate = outputs
        if isinstance(reference, dict) and set(reference) < set(outputs):
            candidate = {k: outputs[k] for k in reference}
        measured, diffs = parity.compare(
            reference, candidate, atol=atol, rtol=rtol, names=signature.output_names
        )
        parity.ensure(measured, diffs)
        _onnx.check_batch_independence(sess, feeds, outputs, atol=atol, rtol=rtol)
    return measured


def eager_runner(model: Any, sample: Any) -> Callable[[], Any]:
    """A zero-argument callable that runs the ORIGINAL framework model once on ``sample``.

    ``model`` is a torch / Keras / TensorFlow / scikit-learn model or a ModelArtifact carrying
    one in ``source_model``; ``sample`` is anything ``export_model`` accepts as a sample,
    including feeds keyed by the artifact's ONNX input names (``as_feeds`` output). Inputs are
    converted once up front, so each call times only the model (torch runs in inference mode).
    """
    if isinstance(model, ModelArtifact):
        if model.source_model is None:
            raise ExportError(
                f"{model.label} has no original model to run (it was loaded from disk or"
                " given as ONNX)"
            )
        model = model.source_model
    if isinstance(model, str | Path):
        raise ExportError("an ONNX model has no original framework model to run eagerly")
    return exporter_for(model).eager_runner(model, sample)
