"""Export any supported model to ONNX, check it against the original, store it as an artifact.

Frameworks are recognised by class names and modules, never by importing them, so exporting
a scikit-learn model never loads torch or TensorFlow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError, ParityError
from nbdeploy._tensors import as_feeds, random_sample
from nbdeploy._types import Parity, Signature
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.exporters import _keras, _onnx, _sklearn, _torch, _transformers, parity
from nbdeploy.exporters.base import Exported, Exporter, NanProbe
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
    "output_kind",
]

SUPPORTED = (
    "torch.nn.Module, Keras 3 models (Sequential / functional / subclassed, or a .keras file),"
    " tf.Module / tf.function / a SavedModel directory, scikit-learn estimators and pipelines"
    " (NumPy or pandas DataFrame samples), XGBoost and LightGBM classifiers and regressors,"
    " an .onnx file or an onnx.ModelProto; transformers and torch text models with"
    " tokenizer= (a fast Hugging Face tokenizer or a tokenizers.Tokenizer)"
)

EXPORTERS: tuple[Exporter, ...] = (
    _transformers.TRANSFORMERS,
    _transformers.TORCH_TEXT,
    _torch.EXPORTER,
    _keras.KERAS,
    _keras.TENSORFLOW,
    _sklearn.XGBOOST,
    _sklearn.LIGHTGBM,
    _sklearn.EXPORTER,
    _onnx.EXPORTER,
)
"""Asked in order, first match wins: transformers before torch (a transformers model is a
torch Module too; a model given with ``tokenizer=`` arrives as a ``TextPipeline``), torch before Keras (a Keras layer on the torch backend
is a torch Module too), Keras before TensorFlow (a Keras model on the TF backend is a tf
AutoTrackable), XGBoost and LightGBM before scikit-learn (their models are scikit-learn
estimators too: same conversion path, but recorded as their own framework), ONNX last because
it takes every path Keras and TensorFlow did not claim."""


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
    """``torch``, ``keras``, ``tensorflow``, ``xgboost``, ``lightgbm``, ``sklearn`` or ``onnx``,
    without importing any."""
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
    tokenizer: Any = None,
) -> ModelArtifact:
    """Export ``model`` to ONNX with a dynamic batch dim and store it as an fp32 artifact.

    The export is run in onnxruntime on ``sample`` and compared with the original model; a
    difference beyond ``atol``/``rtol`` raises ParityError. ONNX inputs are stored as given
    (checked to run on ``sample`` when there is one) and get no parity record.

    ``tokenizer`` (a fast Hugging Face tokenizer or a ``tokenizers.Tokenizer``) with a
    transformers or torch text model and a sample of strings gives an artifact taking raw
    text: the graph over token ids, ``tokenizer.json`` beside it, tokenized by the server
    (see :mod:`nbdeploy.exporters._transformers`).
    """
    if name is not None:
        check_name(name)
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"atol and rtol must be >= 0; got atol={atol}, rtol={rtol}")
    if tokenizer is not None:
        if isinstance(model, str | Path) or not _torch.EXPORTER.detect(model):
            cls = type(model)
            raise InputError(
                "tokenizer= applies to transformers and torch text models; got a"
                f" {cls.__module__}.{cls.__qualname__}"
            )
        model = _transformers.TextPipeline(model, tokenizer)
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
    if label_list is not None and isinstance(exporter, _transformers.TextExporter):
        _name_classes(exported.metadata.get("outputs"), label_list)
    return _finish(
        exported, model, name=name, labels=label_list or exported.labels, atol=atol, rtol=rtol
    )


def as_artifact(
    value: Any,
    sample: Any = None,
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
    tokenizer: Any = None,
) -> ModelArtifact:
    """The artifact for anything a surface accepts as "a model".

    A ModelArtifact is returned as is and a directory holding ``nbdeploy.json`` is loaded
    (``name``, ``labels``, ``sample`` and ``tokenizer`` do not apply to either); anything else
    (a framework model, an .onnx file or proto, a .keras file, a SavedModel directory) is
    exported, a text model with its ``tokenizer`` to an artifact taking raw strings.
    """
    found = ModelArtifact.find(value)
    if found is not None:
        return found
    return export_model(value, sample, name=name, labels=labels, tokenizer=tokenizer)


def _name_classes(outputs: Any, labels: list[str]) -> None:
    """Labels given to export name the classes of the score outputs a text exporter described
    (from ``config.id2label``)."""
    if not isinstance(outputs, dict):
        return
    for entry in outputs.values():
        if isinstance(entry, dict) and entry.get("kind") in ("probabilities", "logits"):
            entry["classes"] = list(labels)


def _finish(
    exported: Exported,
    model: Any,
    *,
    name: str | None,
    labels: list[str] | None,
    atol: float,
    rtol: float,
) -> ModelArtifact:
    """Check signature, parity and batch independence in onnxruntime, record what the outputs
    mean and which inputs accept NaN, then store.

    An ONNX model taken as given (no reference outputs) is stored without the parity checks.
    """
    proto = exported.proto
    graph = Signature.from_onnx(proto)
    signature = exported.signature or graph
    original = exported.reference is not None
    if original:
        _onnx.require_dynamic_batch(graph, exported.metadata.get("exporter", exported.framework))
    _onnx.check_labels(signature, labels)
    metadata = dict(exported.metadata)
    measured = None
    with _onnx.saved(proto) as path:
        sess = None
        if original:
            sess = _ort.session(path)
            measured = _parity(exported, graph, sess, atol=atol, rtol=rtol)
        elif not {"accepts_nan", "outputs"} <= set(metadata):
            # A file taken as given may need what this onnxruntime lacks (custom ops): then
            # it is stored as before, accepting NaN nowhere, its outputs judged by type.
            with contextlib.suppress(Exception):
                sess = _ort.session(path)
        if exported.nan_probe is not None and sess is not None:
            metadata["accepts_nan"] = _confirm_nan(exported.nan_probe, sess, atol=atol, rtol=rtol)
        elif "accepts_nan" not in metadata:
            metadata["accepts_nan"] = _probe_nan(exported, graph, sess) if sess else []
        if "outputs" not in metadata:
            metadata["outputs"] = _infer_outputs(exported, graph, sess, labels)
    return store_onnx(
        proto,
        name=name or exported.default_name,
        signature=signature,
        framework=exported.framework,
        framework_version=exported.framework_version,
        parity=measured,
        labels=labels,
        input_kind=signature.input_kind,
        source_model=model if original else None,
        metadata=metadata,
        files=exported.files,
    )


def _parity(
    exported: Exported, signature: Signature, sess: Any, *, atol: float, rtol: float
) -> Parity:
    """The export's parity with the original; raises ParityError or ExportError when it fails,
    including when a row's answer depends on the batch it is in."""
    feeds = as_feeds(signature, exported.feeds)
    outputs = _onnx.run(sess, feeds)
    reference = exported.reference
    assert reference is not None
    measured, diffs = parity.compare(
        reference, _matching(reference, outputs), atol=atol, rtol=rtol, names=signature.output_names
    )
    missing = [k for k, v in feeds.items() if v.dtype.kind == "f" and np.isnan(v).any()]
    try:
        parity.ensure(measured, diffs)
    except ParityError as exc:
        if not missing:
            raise
        error = ParityError(
            f"{exc} The sample holds NaN in {missing}: the export may treat missing values"
            " differently from the original; export with rows without NaN and the endpoint"
            " will refuse NaN where the export disagrees."
        )
        error.parity = measured  # type: ignore[attr-defined]
        raise error from exc
    _onnx.check_batch_independence(sess, feeds, outputs, atol=atol, rtol=rtol)
    return measured


def _matching(reference: Any, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ONNX outputs the reference has answers for (all of them when it names none)."""
    if isinstance(reference, dict) and set(reference) < set(outputs):
        return {k: outputs[k] for k in reference}
    return outputs


def _confirm_nan(probe: NanProbe, sess: Any, *, atol: float, rtol: float) -> list[str]:
    """The inputs the original accepts NaN in AND the export answers like the original there.

    An input whose probe row the export answers differently is left out, so the endpoint
    refuses NaN in it rather than answer differently from the notebook's model.
    """
    try:
        outputs = _matching(probe.reference, _onnx.run(sess, probe.feeds))
    except Exception:
        return []
    good = np.ones(len(probe.inputs), dtype=bool)
    for key, expected in probe.reference.items():
        got = outputs.get(key)
        if got is None:
            continue
        for i in range(len(probe.inputs)):
            _, diffs = parity.compare(
                [expected[i : i + 1]], [got[i : i + 1]], atol=atol, rtol=rtol, names=[key]
            )
            good[i] &= all(d.passed for d in diffs)
    accepted: list[str] = []
    for name in dict.fromkeys(probe.inputs):
        rows = [i for i, n in enumerate(probe.inputs) if n == name]
        if all(good[i] for i in rows):
            accepted.append(name)
    return accepted


def _probe_rows(exported: Exported, signature: Signature) -> dict[str, np.ndarray]:
    """One real row of the sample when there is one, else one made-up row."""
    if exported.feeds:
        feeds = as_feeds(signature, exported.feeds)
        return {k: v[:1] for k, v in feeds.items()}
    return random_sample(signature, batch_size=1)


def _probe_nan(exported: Exported, signature: Signature, sess: Any) -> list[str]:
    """For exports whose original was not probed: the float inputs the ONNX model answers
    with finite outputs when every value of that input is NaN (an imputer or a tree model
    does; a neural network propagates NaN and does not)."""
    accepted: list[str] = []
    try:
        base = _probe_rows(exported, signature)
    except Exception:
        return accepted
    for spec in signature.inputs:
        if not spec.dtype.startswith("float") or spec.name not in base:
            continue
        feeds = dict(base)
        feeds[spec.name] = np.full_like(base[spec.name], np.nan)
        try:
            outputs = _onnx.run(sess, feeds)
        except Exception:
            continue
        values = [np.asarray(v) for v in outputs.values() if isinstance(v, np.ndarray)]
        if values and all(v.dtype.kind != "f" or np.all(np.isfinite(v)) for v in values):
            accepted.append(spec.name)
    return accepted


def _infer_outputs(
    exported: Exported, signature: Signature, sess: Any, labels: list[str] | None
) -> dict[str, dict[str, Any]]:
    """What each output means, judged from the original's answers on the sample (or from the
    export's answers on a row when there is no original): int/str [n] -> label, float [n, C>1]
    in [0, 1] with rows summing to 1 -> probabilities, other float [n, C>1] -> logits, else
    value. ``classes`` are the labels given, for outputs with one column per label."""
    values: dict[str, Any] = {}
    reference = exported.reference
    if isinstance(reference, dict):
        values = dict(reference)
    elif reference is not None:
        values = dict(zip(signature.output_names, reference, strict=False))
    elif sess is not None:
        with contextlib.suppress(Exception):
            values = _onnx.run(sess, _probe_rows(exported, signature))
    meanings: dict[str, dict[str, Any]] = {}
    for spec in signature.outputs:
        value = values.get(spec.name)
        kind = output_kind(np.asarray(value)) if isinstance(value, np.ndarray) else None
        if kind is None:
            kind = _kind_from_spec(spec.dtype, spec.shape)
        entry: dict[str, Any] = {"kind": kind}
        width = spec.shape[1] if len(spec.shape) == 2 else None
        if labels and kind in ("probabilities", "logits") and width in (len(labels), -1):
            entry["classes"] = list(labels)
        meanings[spec.name] = entry
    if labels:
        has_classes = any("classes" in m for m in meanings.values())
        for entry in meanings.values():
            if entry["kind"] == "label" and has_classes:
                entry["classes"] = list(labels)
    return meanings


def output_kind(value: np.ndarray) -> str:
    """``label``, ``probabilities``, ``logits`` or ``value`` for one output's answers."""
    if value.dtype.kind in "iuOSUb" and (value.ndim == 1 or value.shape[1:] == (1,)):
        return "label"
    if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] > 1 and value.shape[0]:
        finite = np.all(np.isfinite(value))
        in_range = finite and value.min() >= 0 and value.max() <= 1
        if in_range and np.allclose(value.sum(axis=1), 1.0, atol=1e-3):
            return "probabilities"
        return "logits"
    return "value"


def _kind_from_spec(dtype: str, shape: tuple[int, ...]) -> str:
    if (dtype == "str" or dtype.startswith(("int", "uint"))) and len(shape) == 1:
        return "label"
    return "value"


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
