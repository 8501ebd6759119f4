"""torch.nn.Module -> ONNX: the dynamo exporter first, the TorchScript exporter as fallback."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from nbdeploy._errors import ExportError, InputError, NbdeployError
from nbdeploy._format import first_line
from nbdeploy._tensors import check_finite, sample_parts, to_numpy
from nbdeploy._types import Signature
from nbdeploy.exporters import _onnx
from nbdeploy.exporters.base import Exported
from nbdeploy.vocabulary import safe_name

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def prepare_inputs(model: Any, sample: Any) -> tuple[list[str], list[Any]]:
    """ONNX input names and torch tensors in ``forward``'s positional order.

    Names come from the dict keys of a dict sample, else from ``forward``'s parameters.
    float64 arrays are cast to the model's float dtype so numpy samples just work.
    """
    import torch

    parts = sample_parts(sample, frame_as_matrix=True)
    check_finite(parts)
    params = _forward_params(model)
    if isinstance(parts, Mapping):
        unknown = [k for k in parts if k not in params]
        if unknown and params:
            raise InputError(
                f"the sample names inputs {list(parts)} but {type(model).__name__}.forward takes"
                f" {params}"
            )
        names = [p for p in params if p in parts] if params else list(parts)
        arrays = [parts[n] for n in names]
    else:
        arrays = list(parts)
        names = params[: len(arrays)] if len(params) >= len(arrays) else []
        if not names:
            names = [f"input_{i}" for i in range(len(arrays))]
    float_dtype = _float_dtype(model)
    tensors = []
    for array in arrays:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tensor.is_floating_point() and tensor.dtype != float_dtype:
            tensor = tensor.to(float_dtype)
        tensors.append(tensor)
    return names, tensors


def _forward_params(model: Any) -> list[str]:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _float_dtype(model: Any) -> Any:
    import torch

    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run in eval mode and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def run_eager(model: Any, tensors: list[Any], names: list[str]) -> list[np.ndarray] | dict:
    """The original model's outputs, flattened; shape errors become an InputError."""
    import torch

    try:
        with eval_mode(model), torch.no_grad():
            result = model(*tensors)
    except Exception as exc:
        given = ", ".join(
            f"{n} {list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            for n, t in zip(names, tensors, strict=True)
        )
        raise InputError(
            f"the model rejected the sample ({given}): {first_line(exc)}" + _expected_hint(model)
        ) from exc
    return flatten_outputs(result)


def flatten_outputs(result: Any) -> list[np.ndarray] | dict[str, np.ndarray]:
    if isinstance(result, Mapping):
        return {str(k): to_numpy(v) for k, v in result.items()}
    if isinstance(result, tuple | list):
        flat: list[np.ndarray] = []
        for item in result:
            nested = flatten_outputs(item)
            flat.extend(nested.values() if isinstance(nested, dict) else nested)
        return flat
    return [to_numpy(result)]


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's first line: exporters wrap the real reason in generic advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return ANSI_ESCAPE.sub("", first_line(exc, with_type=True))


def _expected_hint(model: Any) -> str:
    """What the first shape-bearing layer expects, e.g. ``[batch, 64]`` for Linear(64, ...)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            return f"; its first layer Linear expects [batch, {module.in_features}]"
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            spatial = {1: "L", 2: "H, W", 3: "D, H, W"}[len(module.kernel_size)]
            return (
                f"; its first layer {type(module).__name__} expects"
                f" [batch, {module.in_channels}, {spatial}]"
            )
        if isinstance(module, torch.nn.Embedding):
            return (
                "; its first layer Embedding expects integer token ids in"
                f" [0, {module.num_embeddings})"
            )
    return ""


def _exporter_order() -> list[tuple[str, Callable[..., Any]]]:
    """Dynamo first (symbolic shapes, the current exporter); ``NBDEPLOY_TORCH_EXPORTER=torchscript``
    tries the much faster legacy tracer first, e.g. for test suites exporting many small nets.
    """
    order = [("dynamo", _dynamo), ("torchscript", _torchscript)]
    if os.environ.get("NBDEPLOY_TORCH_EXPORTER", "dynamo").lower() == "torchscript":
        order.reverse()
    return order


def _dynamo(
    model: Any, tensors: list[Any], names: list[str], out_names: list[str], opset: int | None
) -> Any:
    """torch.export-based exporter; the batch (and token sequence) dims are symbolic."""
    import torch

    batch = torch.export.Dim("batch")
    args = tuple(_at_least_two_rows(t) for t in tensors)
    dynamic: list[dict[int, Any]] = []
    for tensor in args:
        dims: dict[int, Any] = {0: batch} if tensor.ndim else {}
        if not tensor.is_floating_point() and tensor.ndim == 2:
            dims[1] = torch.export.Dim.AUTO
        dynamic.append(dims)
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        input_names=names,
        output_names=out_names,
        dynamic_shapes=tuple(dynamic),
        opset_version=opset,
        verbose=False,
    )
    return program.model_proto


def _torchscript(
    model: Any, tensors: list[Any], names: list[str], out_names: list[str], opset: int | None
) -> Any:
    """The legacy tracing exporter: robust for plain nets, batch dim made dynamic by name."""
    import onnx
    import torch

    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (*names, *out_names)}
    torch.onnx.export(
        model,
        tuple(tensors),
        buffer,
        dynamo=False,
        input_names=names,
        output_names=out_names,
        dynamic_axes=axes,
        opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def _at_least_two_rows(tensor: Any) -> Any:
    """The dynamo exporter specializes a dimension of size 1, so export with two rows."""
    if tensor.ndim and tensor.shape[0] == 1:
        return tensor.repeat(2, *([1] * (tensor.ndim - 1)))
    return tensor


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporter chatter: torch/onnxscript logs, graph dumps, warnings, progress prints."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class TorchExporter:
    """torch.nn.Module: the dynamo exporter first, the TorchScript exporter as fallback."""

    framework = "torch"

    def detect(self, model: Any) -> bool:
        return any(
            cls.__module__ == "torch.nn.modules.module" and cls.__name__ == "Module"
            for cls in type(model).__mro__
        )

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """Export with dynamo (dynamic batch, dynamic sequence for token ids), else TorchScript."""
        import torch

        names, tensors = prepare_inputs(model, sample)
        reference = run_eager(model, tensors, names)
        n_outputs = len(reference)
        out_names = (
            list(reference) if isinstance(reference, dict) else _onnx.output_names(n_outputs)
        )
        feeds = {n: t.numpy() for n, t in zip(names, tensors, strict=True)}
        failures: list[str] = []
        for label, exporter in _exporter_order():
            try:
                with eval_mode(model), quiet():
                    proto = exporter(model, tensors, names, out_names, opset)
                proto = _onnx.tidy(proto)
                _onnx.require_dynamic_batch(Signature.from_onnx(proto), label)
                with _onnx.saved(proto) as path:
                    _onnx.run(path, feeds)
            except NbdeployError as exc:
                failures.append(f"{label}: {exc}")
                continue
            except Exception as exc:
                failures.append(f"{label}: {_root_cause(exc)}")
                continue
            metadata: dict[str, Any] = {"exporter": label, "versions": self.versions()}
            if failures:
                metadata["fallback_reason"] = "; ".join(failures)
            return Exported(
                proto=proto,
                feeds=feeds,
                reference=reference,
                framework=self.framework,
                framework_version=torch.__version__,
                default_name=safe_name(type(model).__name__),
                metadata=metadata,
            )
        raise ExportError(
            f"torch could not export {type(model).__name__} to ONNX; " + "; ".join(failures)
        )

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """A zero-argument callable running the model once on ``sample`` (inference mode)."""
        import torch

        if isinstance(sample, Mapping) and not set(sample) <= set(_forward_params(model)):
            sample = list(sample.values())
        _, tensors = prepare_inputs(model, sample)

        def run_once() -> Any:
            with torch.inference_mode():
                if not model.training:
                    return model(*tensors)
                with eval_mode(model):
                    return model(*tensors)

        return run_once

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import torch

        versions = {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        }
        with contextlib.suppress(ImportError):
            import onnxscript

            versions["onnxscript"] = onnxscript.__version__
        return versions


EXPORTER = TorchExporter()
