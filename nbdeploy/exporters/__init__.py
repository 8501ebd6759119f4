"""Export any supported model to ONNX, check it against the original, store it as an artifact.

Frameworks are recognised by class names and modules, never by importing them, so exporting
a scikit-learn model never loads torch or TensorFlow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import as_feeds
from nbdeploy._types import Signature
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.exporters import _onnx, parity

__all__ = ["eager_runner", "export_model", "framework_of"]

SUPPORTED = (
    "torch.nn.Module, Keras 3 models (Sequential / functional / subclassed, or a .keras file),"
    " tf.Module / tf.function / a SavedModel directory, scikit-learn estimators and pipelines,"
    " an .onnx file or an onnx.ModelProto"
)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def framework_of(model: Any) -> str:
    """``torch``, ``keras``, ``tensorflow``, ``sklearn`` or ``onnx``, without importing any.

    Raises ExportError naming the supported types when the object is none of them.
    """
    from nbdeploy.exporters import _keras, _sklearn, _torch

    if isinstance(model, str | Path):
        path = Path(model)
        if _keras.is_saved_model_dir(path):
            return "tensorflow"
        if path.suffix in (".keras", ".h5"):
            return "keras"
        return "onnx"
    if type(model).__module__.startswith("onnx") and type(model).__name__ == "ModelProto":
        return "onnx"
    if _torch.is_torch_module(model):
        return "torch"
    if _keras.is_keras_model(model):
        return "keras"
    if _keras.is_tf_object(model):
        return "tensorflow"
    if _sklearn.is_sklearn_estimator(model):
        return "sklearn"
    cls = type(model)
    raise ExportError(
        f"cannot export a {cls.__module__}.{cls.__qualname__}: supported are {SUPPORTED}"
    )


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
    if name is not None and not NAME_PATTERN.match(name):
        raise InputError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (max 128),"
            " starting with a letter or digit"
        )
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"atol and rtol must be >= 0; got atol={atol}, rtol={rtol}")
    framework = framework_of(model)
    label_list = [str(label) for label in labels] if labels is not None else None
    if framework == "onnx":
        return _store_onnx_source(model, sample, name=name, labels=label_list)
    if sample is None:
        raise InputError(
            f"exporting a {framework} model needs a sample input (a few real rows, e.g."
            " x_test[:8]): the export is traced and checked on it"
        )
    if isinstance(model, str | Path):
        from nbdeploy.exporters import _keras

        name = name or _onnx.safe_name(Path(model).stem)
        model = _keras.load_path(Path(model))
    exported = _export_framework(framework, model, sample, opset=opset)
    return _finish(
        exported, model, name=name, labels=label_list or exported.labels, atol=atol, rtol=rtol
    )


def _export_framework(
    framework: str, model: Any, sample: Any, *, opset: int | None
) -> _onnx.Exported:
    if framework == "torch":
        from nbdeploy.exporters import _torch

        return _torch.export(model, sample, opset=opset)
    if framework == "keras":
        from nbdeploy.exporters import _keras

        return _keras.export_keras(model, sample, opset=opset)
    if framework == "tensorflow":
        from nbdeploy.exporters import _keras

        return _keras.export_tensorflow(model, sample, opset=opset)
    from nbdeploy.exporters import _sklearn

    return _sklearn.export(model, sample, opset=opset)


def _finish(
    exported: _onnx.Exported,
    model: Any,
    *,
    name: str | None,
    labels: list[str] | None,
    atol: float,
    rtol: float,
) -> ModelArtifact:
    """Check signature, parity and batch independence in onnxruntime, then store."""
    proto = exported.proto
    signature = Signature.from_onnx(proto)
    _onnx.require_dynamic_batch(signature, exported.metadata.get("exporter", exported.framework))
    _onnx.check_labels(signature, labels)
    feeds = as_feeds(signature, exported.feeds)
    with _onnx.saved(proto) as path:
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
    return store_onnx(
        proto,
        name=name or exported.default_name,
        signature=signature,
        framework=exported.framework,
        framework_version=exported.framework_version,
        parity=measured,
        labels=labels,
        input_kind=_onnx.input_kind(signature),
        source_model=model,
        metadata=exported.metadata,
    )


def _store_onnx_source(
    source: Any, sample: Any, *, name: str | None, labels: list[str] | None
) -> ModelArtifact:
    import onnx

    proto, metadata, default_name = _onnx.export_onnx_source(source, sample)
    signature = Signature.from_onnx(proto)
    _onnx.check_labels(signature, labels)
    return store_onnx(
        proto,
        name=name or default_name,
        signature=signature,
        framework="onnx",
        framework_version=onnx.__version__,
        parity=None,
        labels=labels,
        input_kind=_onnx.input_kind(signature),
        source_model=None,
        metadata=metadata,
    )


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
    framework = framework_of(model)
    if framework == "onnx" or isinstance(model, str | Path):
        raise ExportError("an ONNX model has no original framework model to run eagerly")
    if framework == "torch":
        from nbdeploy.exporters import _torch

        return _torch.eager_runner(model, sample)
    if framework in ("keras", "tensorflow"):
        from nbdeploy.exporters import _keras

        return _keras.eager_runner(model, sample)
    from nbdeploy.exporters import _sklearn

    return _sklearn.eager_runner(model, sample)
