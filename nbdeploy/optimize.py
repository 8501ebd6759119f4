"""Quantized variants of an fp32 ONNX artifact, each measured against it.

Every variant says what it is (mode, quantized nodes, size ratio), how far it drifts from fp32
(parity, top-1 agreement, accuracy delta) and whether it is usable at all: a variant that
quantized nothing or that onnxruntime cannot run comes back with ``ok == False`` and a reason,
never as if it had worked.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _format, _ort
from nbdeploy._errors import QuantizeError
from nbdeploy._types import Parity, Quantization
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.vocabulary import QUANTIZE_MODES

# "int8" is an alias resolved per model (static QDQ for conv models); "fp32" asks for nothing.
VALID_MODES = ("fp32", *QUANTIZE_MODES)

# What a variant keeps from its fp32 model: how inputs are read and what outputs mean.
INTERFACE_METADATA = (
    "preprocessing",
    "outputs",
    "accepts_nan",
    "columns",
    "feature_names",
    "tokenization",
    "requirements",
)
CALIBRATION_BATCH = 16
CALIBRATION_MAX_ROWS = 256
EVALUATION_BATCH = 256
RANDOM_ROWS = 32
RANDOM_DYNAMIC_DIM = 16
NOOP_SIZE_RATIO = 0.99
OUTPUT_SCALE_RTOL = 0.05

# Dynamic quantization without Conv: ConvInteger is not something every CPU build can run.
DYNAMIC_OPS_WITHOUT_CONV = (
    "MatMul",
    "Gemm",
    "Attention",
    "LSTM",
    "Gather",
    "Transpose",
    "EmbedLayerNormalization",
)
INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "QAttention",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
        "QEmbedLayerNormalization",
    }
)
EIGHT_BIT_TYPES = frozenset({2, 3})  # onnx TensorProto UINT8, INT8
FLOAT16_TYPE = 10  # onnx TensorProto FLOAT16


@dataclass
class _Evaluation:
    """The inputs every variant is judged on, and fp32's answers to them."""

    feeds: dict[str, np.ndarray]
    source: str
    labels: np.ndarray | None
    reference: list[Any]
    reference_predictions: np.ndarray | None
    reference_accuracy: float | None
    batched: bool
    fixed_batch: int | None

    def chunk_rows(self, dynamic: int) -> int | None:
        """Rows per run: the model's fixed batch, ``dynamic`` when free, None when unbatched."""
        if not self.batched:
            return None
        return self.fixed_batch or dynamic


def quantize_variants(
    artifact: ModelArtifact,
    modes: Iterable[str] | str,
    *,
    calibration: Any = None,
    labels: Any = None,
    min_agreement: float = 0.99,
) -> list[ModelArtifact]:
    """Make one stored variant per requested mode, each compared with ``artifact``.

    ``int8`` picks static QDQ quantization for graphs with Conv when ``calibration`` is given,
    dynamic quantization otherwise. ``calibration`` is a sample-like batch of real inputs; it
    drives static calibration and is what parity and accuracy are measured on (random inputs
    shaped by the signature stand in for it when absent, which only dynamic and fp16 accept).
    ``labels`` are the true class indices of the calibration rows. A variant's parity passes
    when its top-1 agreement with fp32 reaches ``min_agreement``.
    """
    requested = _requested_modes(modes)
    ops = _op_types(artifact.path)
    plan = _plan(requested, ops, has_calibration=calibration is not None)
    if not plan:
        return []
    evaluation = _evaluate_reference(artifact, calibration, labels)
    variants = []
    with tempfile.TemporaryDirectory(prefix="nbdeploy-quantize-") as scratch:
        prepared, preprocess = _preprocess(artifact.path, Path(scratch) / "prepared.onnx")
        for mode, requested_as in plan:
            variants.append(
                _make_variant(
                    artifact,
                    mode,
                    requested_as=requested_as,
                    ops=ops,
                    prepared=prepared,
                    preprocess=preprocess,
                    evaluation=evaluation,
                    scratch=Path(scratch),
                    min_agreement=min_agreement,
                )
            )
    return variants


def select_auto(
    fp32: ModelArtifact,
    variants: list[ModelArtifact],
    latency_ms: dict[str, float],
    *,
    min_agreement: float = 0.99,
) -> ModelArtifact:
    """The fastest of fp32 and the usable variants that agree with fp32 often enough.

    A variant qualifies when it is ``ok`` and its top-1 agreement with fp32 reaches
    ``min_agreement`` (for models without class scores: when its parity passed).
    ``latency_ms`` is keyed by variant (``"int8-dynamic"``) or by label (``"digits:fp16"``,
    as benchmark reports key it). Candidates without a latency are not judged; fp32 wins
    ties and is the fallback.
    """
    candidates = [fp32, *(v for v in variants if _qualifies(v, min_agreement))]
    timed = [(latency, c) for c in candidates if (latency := _latency(c, latency_ms)) is not None]
    if not timed:
        return fp32
    return min(timed, key=lambda pair: pair[0])[1]


def _latency(artifact: ModelArtifact, latency_ms: dict[str, float]) -> float | None:
    return latency_ms.get(artifact.variant, latency_ms.get(artifact.label))


def _qualifies(variant: ModelArtifact, min_agreement: float) -> bool:
    if not variant.ok or variant.parity is None:
        return False
    agreement = variant.parity.top1_agreement
    if agreement is None:
        return variant.parity.passed
    return agreement >= min_agreement


def _requested_modes(modes: Iterable[str] | str) -> list[str]:
    requested = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in requested if m not in VALID_MODES]
    if unknown:
        raise QuantizeError(
            f"unknown quantization mode(s) {unknown}; valid modes are {list(VALID_MODES)}"
        )
    return requested


def _plan(requested: list[str], ops: set[str], *, has_calibration: bool) -> list[tuple[str, str]]:
    """Concrete modes to build, in request order without repeats, with what was asked for."""
    plan: dict[str, str] = {}
    for mode in requested:
        if mode == "fp32":
            continue
        concrete = mode
        if mode == "int8":
            concrete = "int8-static" if "Conv" in ops and has_calibration else "int8-dynamic"
        if concrete == "int8-static" and not has_calibration:
            raise QuantizeError(
                "int8-static quantization needs calibration data to measure activation ranges;"
                " pass calibration=<a batch of real inputs> (e.g. a few hundred rows), or ask"
                " for 'int8' / 'int8-dynamic', which need none"
            )
        plan.setdefault(concrete, mode)
    return [(concrete, requested_as) for concrete, requested_as in plan.items()]


def _op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def _preprocess(source: Path, target: Path) -> tuple[Path, str]:
    """onnxruntime's quantization pre-processing, degrading step by step when it fails.

    Without it, weights behind Gemm or shape-less MatMuls are skipped and the "quantized"
    model comes out as large as fp32. Symbolic shape inference fails on torch transformer
    exports, so it is dropped first; if the rest fails as well, the raw model is used.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # It leaves temporary files in the working directory when shape inference fails.
        with contextlib.chdir(target.parent):
            quant_pre_process(str(source), str(target))
        return target, "full"
    except Exception as exc:
        first_failure = _format.reason(exc, cause=True)
    try:
        with contextlib.chdir(target.parent):
            quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return target, "skip_symbolic_shape"
    except Exception as exc:
        return (
            source,
            f"none (full: {first_failure}; without symbolic shapes: {_format.reason(exc, cause=True)})",
        )


def _make_variant(
    artifact: ModelArtifact,
    mode: str,
    *,
    requested_as: str,
    ops: set[str],
    prepared: Path,
    preprocess: str,
    evaluation: _Evaluation,
    scratch: Path,
    min_agreement: float,
) -> ModelArtifact:
    output = scratch / f"{mode}.onnx"
    metadata: dict[str, Any] = {
        "requested_mode": requested_as,
        "fp32_sha256": artifact.sha256,
        "fp32_accuracy": evaluation.reference_accuracy,
        "evaluation_data": evaluation.source,
        "evaluation_rows": _rows(evaluation.feeds),
        "onnxruntime_version": _ort_version(),
    }
    metadata.update(
        {key: artifact.metadata[key] for key in INTERFACE_METADATA if key in artifact.metadata}
    )
    try:
        if mode == "fp16":
            metadata["quant_pre_process"] = "not used for fp16"
            _convert_fp16(artifact.path, output)
        else:
            metadata["quant_pre_process"] = preprocess
            metadata.update(_quantize_int8(mode, requested_as, ops, prepared, output, evaluation))
    except Exception as exc:
        reason = (
            f"onnxruntime could not produce the {mode} model: {_format.reason(exc, cause=True)}"
        )
        return _failed_without_model(artifact, mode, reason, metadata)

    quantization = Quantization(
        mode=mode,
        quantized_nodes=_count_quantized_nodes(output, mode),
        size_ratio=round(output.stat().st_size / artifact.path.stat().st_size, 4),
    )
    parity = None
    try:
        outputs = _run(output, evaluation)
    except Exception as exc:
        quantization.status = "failed"
        quantization.reason = (
            f"onnxruntime cannot run the {mode} model: {_format.reason(exc, cause=True)}"
        )
    else:
        parity, accuracy = _compare(evaluation, outputs, min_agreement)
        quantization.accuracy = accuracy
        if accuracy is not None and evaluation.reference_accuracy is not None:
            quantization.accuracy_delta = round(accuracy - evaluation.reference_accuracy, 6)
        _mark_noop(quantization, ops)
    try:
        variant = store_onnx(
            output,
            name=artifact.name,
            variant=mode,
            framework=artifact.framework,
            framework_version=artifact.framework_version,
            labels=artifact.labels,
            input_kind=artifact.input_kind,
            quantization=quantization,
            parity=parity,
            metadata=metadata,
            files={path.name: path for path in artifact.sidecars},
            # A text model's public signature takes raw text, not the graph's token ids.
            signature=artifact.signature if "tokenization" in artifact.metadata else None,
        )
    except Exception as exc:
        reason = f"the {mode} model could not be stored: {_format.reason(exc, cause=True)}"
        return _failed_without_model(artifact, mode, reason, metadata)
    variant.source_model = artifact.source_model
    return variant


def _mark_noop(quantization: Quantization, ops: set[str]) -> None:
    """Flag a variant that changed nothing worth serving, saying why."""
    if quantization.quantized_nodes == 0:
        quantization.status = "noop"
        quantization.reason = (
            f"nothing was quantized: no op in this graph ({', '.join(sorted(ops))}) was"
            f" converted to {quantization.mode}"
        )
    elif quantization.size_ratio is not None and quantization.size_ratio >= NOOP_SIZE_RATIO:
        quantization.status = "noop"
        quantization.reason = (
            f"the {quantization.mode} model is not smaller than fp32 (size ratio"
            f" {quantization.size_ratio:.2f}): its {quantization.quantized_nodes} quantized"
            " node(s) carry too little weight to matter"
        )


def _failed_without_model(
    artifact: ModelArtifact, mode: str, reason: str, metadata: dict[str, Any]
) -> ModelArtifact:
    """Record a variant that left no usable model file.

    It is stored as a copy of the fp32 model under the variant's own name, so the record
    lives on disk like any other and never overwrites fp32's metadata; ``ok`` is False and
    ``metadata['model']`` says the file is the fp32 original. Only if even that copy cannot
    be written is the record returned unstored, pointing at the fp32 file itself.
    """
    metadata = {**metadata, "model": "fp32 copy: quantization produced no model"}
    quantization = Quantization(mode=mode, status="failed", reason=reason)
    fields = {
        "name": artifact.name,
        "variant": mode,
        "framework": artifact.framework,
        "framework_version": artifact.framework_version,
        "labels": artifact.labels,
        "input_kind": artifact.input_kind,
        "quantization": quantization,
        "metadata": metadata,
    }
    try:
        variant = store_onnx(artifact.path, signature=artifact.signature, **fields)
    except Exception:
        variant = ModelArtifact(path=artifact.path, signature=artifact.signature, **fields)
    variant.source_model = artifact.source_model
    return variant


def _quantize_int8(
    mode: str,
    requested_as: str,
    ops: set[str],
    source: Path,
    output: Path,
    evaluation: _Evaluation,
) -> dict[str, Any]:
    """Run onnxruntime's int8 quantizer for ``mode`` and return what was chosen."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "int8-dynamic":
        op_types = None
        if requested_as == "int8" and "Conv" in ops:
            op_types = list(DYNAMIC_OPS_WITHOUT_CONV)
        quantize_dynamic(
            str(source), str(output), op_types_to_quantize=op_types, weight_type=QuantType.QInt8
        )
        return {"quantizer": "quantize_dynamic", "weight_type": "QInt8", "op_types": op_types}
    per_channel = "Conv" in ops
    reader = _CalibrationReader(evaluation)
    quantize_static(
        str(source),
        str(output),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return {
        "quantizer": "quantize_static",
        "format": "QDQ",
        "per_channel": per_channel,
        "calibration_rows": reader.rows,
    }


def _convert_fp16(source: Path, output: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(output))


class _CalibrationReader:
    """Feeds calibration rows to ``quantize_static`` in small batches, at most a few hundred rows.

    Rows are taken evenly across the data, so data sorted by class is still covered.
    """

    def __init__(self, evaluation: _Evaluation) -> None:
        feeds, size = evaluation.feeds, evaluation.chunk_rows(CALIBRATION_BATCH)
        total = _rows(feeds)
        if size is None or total is None:
            self.batches, self.rows = [feeds], total or 1
        else:
            keep = min(total, CALIBRATION_MAX_ROWS)
            keep -= keep % (evaluation.fixed_batch or 1)
            index = np.linspace(0, total - 1, keep).round().astype(int)
            self.batches = list(_chunks({n: a[index] for n, a in feeds.items()}, size))
            self.rows = keep
        self._pending: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._pending, None)

    def rewind(self) -> None:
        self._pending = iter(self.batches)


def _evaluate_reference(artifact: ModelArtifact, calibration: Any, labels: Any) -> _Evaluation:
    """Build the evaluation inputs and run fp32 on them once, for every variant to compare to."""
    if calibration is None:
        if labels is not None:
            raise QuantizeError(
                "labels were given without calibration data; accuracy needs the inputs the"
                " labels belong to: pass calibration=X together with labels=y"
            )
        feeds, source = _random_feeds(artifact), "random"
    else:
        from nbdeploy.exporters._transformers import graph_feeds

        feeds, source = graph_feeds(artifact, calibration), "calibration"
    batched = _rows(feeds) is not None
    fixed_batch = artifact.signature.fixed_batch if batched else None
    feeds = _whole_batches(feeds, fixed_batch)
    truth = _labels(labels, _rows(feeds))
    evaluation = _Evaluation(feeds, source, truth, [], None, None, batched, fixed_batch)
    try:
        evaluation.reference = _run(artifact.path, evaluation)
    except Exception as exc:
        raise QuantizeError(
            f"the fp32 model does not run on the {source} inputs: {_format.reason(exc, cause=True)}"
        ) from exc
    evaluation.reference_predictions = _predictions(evaluation.reference)
    evaluation.reference_accuracy = _accuracy(evaluation.reference_predictions, truth)
    return evaluation


def _labels(labels: Any, rows: int | None) -> np.ndarray | None:
    if labels is None:
        return None
    truth = np.asarray(labels).reshape(-1)
    if truth.dtype.kind not in "iu":
        raise QuantizeError(
            "labels must be the true class indices (integers) of the calibration rows;"
            f" got an array of {truth.dtype}"
        )
    if rows is not None and len(truth) < rows:
        raise QuantizeError(
            f"labels must have one class index per calibration row ({rows}); got {len(truth)}"
        )
    return truth[:rows] if rows is not None else truth


def _random_feeds(artifact: ModelArtifact) -> dict[str, np.ndarray]:
    """Inputs shaped by the signature, for when no calibration data was given.

    Integer inputs that index an embedding stay inside its vocabulary; other integers are 0/1.
    """
    rng = np.random.default_rng(0)
    bounds = _index_bounds(artifact.path)
    feeds: dict[str, np.ndarray] = {}
    for spec in artifact.signature.inputs:
        shape = tuple(
            (RANDOM_ROWS if axis == 0 else RANDOM_DYNAMIC_DIM) if dim == -1 else dim
            for axis, dim in enumerate(spec.shape)
        )
        if spec.dtype == "str":
            raise QuantizeError(
                f"input '{spec.name}' takes strings, which cannot be made up;"
                " pass calibration=<a batch of real inputs>"
            )
        if spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        elif np.dtype(spec.dtype).kind in "iu":
            high = bounds.get(spec.name, 2)
            feeds[spec.name] = rng.integers(0, high, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.random(shape).astype(spec.dtype)
    return feeds


def _index_bounds(path: Path) -> dict[str, int]:
    """Vocabulary sizes of embeddings (Gather on an initializer) indexed directly by an input."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {init.name: int(init.dims[0]) for init in graph.initializer if init.dims}
    inputs = {value.name for value in graph.input}
    bounds: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2:
            table, index = node.input
            if table in tables and index in inputs:
                bounds[index] = min(bounds.get(index, tables[table]), tables[table])
    return bounds


def _whole_batches(feeds: dict[str, np.ndarray], fixed_batch: int | None) -> dict[str, np.ndarray]:
    """Drop trailing rows that would not fill a fixed-size batch."""
    rows = _rows(feeds)
    if fixed_batch is None or rows is None:
        return feeds
    keep = rows - rows % fixed_batch
    if keep == 0:
        raise QuantizeError(
            f"the model takes batches of exactly {fixed_batch} rows; the calibration data has {rows}"
        )
    return {name: array[:keep] for name, array in feeds.items()}


def _rows(feeds: dict[str, np.ndarray]) -> int | None:
    """The shared first dimension of all inputs, or None when they have none in common."""
    firsts = {array.shape[0] if array.ndim else None for array in feeds.values()}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def _chunks(feeds: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    rows = _rows(feeds) or 0
    for start in range(0, rows, size):
        yield {
            name: np.ascontiguousarray(array[start : start + size]) for name, array in feeds.items()
        }


def _run(path: Path, evaluation: _Evaluation) -> list[Any]:
    """Outputs of the model at ``path`` on the evaluation inputs, batch by batch."""
    sess = _ort.session(path)
    names = [output.name for output in sess.get_outputs()]
    size = evaluation.chunk_rows(EVALUATION_BATCH)
    if size is None:
        return list(sess.run(names, evaluation.feeds))
    parts = [sess.run(names, chunk) for chunk in _chunks(evaluation.feeds, size)]
    return [_concat([part[i] for part in parts]) for i in range(len(names))]


def _concat(pieces: list[Any]) -> Any:
    if all(isinstance(p, np.ndarray) and p.ndim for p in pieces):
        return np.concatenate(pieces, axis=0)
    if all(isinstance(p, list) for p in pieces):
        return [item for piece in pieces for item in piece]
    return pieces[-1]


def _predictions(outputs: list[Any]) -> np.ndarray | None:
    """Class predictions: argmax of the first 2-D float score output, else a 1-D int output."""
    for output in outputs:
        if (
            isinstance(output, np.ndarray)
            and output.dtype.kind == "f"
            and output.ndim == 2
            and output.shape[1] > 1
        ):
            return output.argmax(axis=-1)
    for output in outputs:
        if isinstance(output, np.ndarray) and output.dtype.kind in "iu" and output.ndim == 1:
            return output
    return None


def _accuracy(predictions: np.ndarray | None, labels: np.ndarray | None) -> float | None:
    if predictions is None or labels is None or len(predictions) != len(labels):
        return None
    return round(float(np.mean(predictions == labels)), 6)


def _compare(
    evaluation: _Evaluation, outputs: list[Any], min_agreement: float
) -> tuple[Parity, float | None]:
    """Parity of a variant's outputs with fp32's, and the variant's accuracy.

    ``max_rel_error`` is relative to the reference output's scale (its largest magnitude):
    element-wise relative error explodes on near-zero logits and says nothing about int8.
    Parity passes on top-1 agreement when the model has class scores, otherwise when the
    error stays within ``OUTPUT_SCALE_RTOL`` of that scale.
    """
    max_abs, scale = 0.0, 0.0
    for reference, output in zip(evaluation.reference, outputs, strict=True):
        if isinstance(reference, np.ndarray) and reference.dtype.kind == "f" and reference.size:
            ref = reference.astype(np.float64)
            diff = np.abs(np.asarray(output, dtype=np.float64) - ref)
            max_abs = max(max_abs, float(np.nanmax(diff)))
            scale = max(scale, float(np.max(np.abs(ref))))
    predictions = _predictions(outputs)
    agreement = None
    if predictions is not None and evaluation.reference_predictions is not None:
        agreement = round(float(np.mean(predictions == evaluation.reference_predictions)), 6)
    atol = OUTPUT_SCALE_RTOL * scale
    passed = agreement >= min_agreement if agreement is not None else max_abs <= atol
    parity = Parity(
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale else 0.0,
        atol=atol,
        rtol=OUTPUT_SCALE_RTOL,
        passed=bool(passed),
        top1_agreement=agreement,
        samples=_rows(evaluation.feeds) or 1,
        reference="fp32",
    )
    return parity, _accuracy(predictions, evaluation.labels)


def _count_quantized_nodes(path: Path, mode: str) -> int:
    """How much of the graph the conversion actually touched.

    fp16: float16 initializers. int8: integer compute nodes (QLinear*, MatMulInteger,
    ConvInteger, ...), Gathers over 8-bit tables, and in QDQ graphs every op fed by a
    DequantizeLinear of a weight or of a QuantizeLinear (the ops that now run quantized).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if mode == "fp16":
        return sum(1 for init in graph.initializer if init.data_type == FLOAT16_TYPE)
    eight_bit = {init.name for init in graph.initializer if init.data_type in EIGHT_BIT_TYPES}
    quantized_outputs = {node.output[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    dequantized = {
        node.output[0]
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and (node.input[0] in eight_bit or node.input[0] in quantized_outputs)
    }
    count = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        if (
            node.op_type in INTEGER_OPS
            or node.op_type.startswith("QLinear")
            or (node.op_type == "Gather" and node.input[0] in eight_bit)
            or any(name in dequantized for name in node.input)
        ):
            count += 1
    return count


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
