"""Keras 3 models and TensorFlow graphs (tf.Module, tf.function, SavedModel dirs) -> ONNX.

Keras goes through ``model.export(format="onnx")`` (tf2onnx's ``from_keras`` is broken on
Keras 3); plain TensorFlow through ``tf2onnx.convert.from_function`` with an input signature
whose batch dimension is ``None``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _format
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import check_finite, sample_parts, to_numpy
from nbdeploy.exporters import _onnx
from nbdeploy.exporters.base import Exported
from nbdeploy.vocabulary import safe_name

# Keras wraps every layer error as "Exception encountered when calling X.call()." and puts the
# actual reason on the next line, so its messages are read two lines deep.
KERAS_REASON_LINES = 2

KERAS_GENERATED_INPUT_PREFIXES = ("keras_tensor", "input_layer", "args_")
KERAS_FILE_SUFFIXES = (".keras", ".h5")


def is_keras_model(model: Any) -> bool:
    return any(
        cls.__module__.startswith(("keras.", "tf_keras.")) and cls.__name__ in ("Model", "Layer")
        for cls in type(model).__mro__
    )


def is_saved_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").exists()


def import_tensorflow() -> Any:
    """Import TensorFlow without its start-up log spam when it is not loaded yet."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def load_path(path: Path) -> Any:
    """A SavedModel directory or a ``.keras``/``.h5`` file, loaded for export."""
    if is_saved_model_dir(path):
        tf = import_tensorflow()
        try:
            return tf.saved_model.load(str(path))
        except Exception as exc:
            raise ExportError(f"TensorFlow cannot load the SavedModel at {path}: {exc}") from exc
    import_tensorflow()
    import keras

    try:
        return keras.saving.load_model(str(path))
    except Exception as exc:
        raise ExportError(f"Keras cannot load the model file {path}: {exc}") from exc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence tf2onnx's and TensorFlow's logs and warnings during a conversion.

    TensorFlow's C++ runtime (grappler) logs straight to file descriptor 2, below Python, so
    that descriptor is pointed at /dev/null for the duration too.
    """
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _stderr_fd_silenced(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _stderr_fd_silenced() -> Iterator[None]:
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _float32(array: np.ndarray) -> np.ndarray:
    """float64 numpy samples are the norm in notebooks; TF/Keras models compute in float32."""
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _flatten(result: Any) -> list[np.ndarray] | dict[str, np.ndarray]:
    import tensorflow as tf

    if isinstance(result, Mapping):
        return {str(k): to_numpy(v) for k, v in sorted(result.items())}
    return [to_numpy(v) for v in tf.nest.flatten(result)]


def _given(parts: list[np.ndarray] | dict[str, np.ndarray]) -> str:
    items = parts.items() if isinstance(parts, dict) else enumerate(parts)
    return ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in items)


# ----------------------------------------------------------------------------------- Keras


def _keras_inputs(parts: list[np.ndarray] | dict[str, np.ndarray]) -> Any:
    if isinstance(parts, dict):
        return {k: _float32(v) for k, v in parts.items()}
    arrays = [_float32(v) for v in parts]
    return arrays[0] if len(arrays) == 1 else arrays


def _keras_expected(model: Any) -> str:
    try:
        return ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in model.inputs)
    except Exception:
        return "unknown"


def _generated_input_renames(names: list[str]) -> dict[str, str]:
    """Keras-generated input names (``keras_tensor_12``, ``args_0``) become ``input`` / ``input_<i>``."""
    renames: dict[str, str] = {}
    for i, name in enumerate(names):
        if name.startswith(KERAS_GENERATED_INPUT_PREFIXES):
            renames[name] = "input" if len(names) == 1 else f"input_{i}"
    return renames


# ------------------------------------------------------------------------------ TensorFlow


def _tf_call(
    obj: Any, parts: list[np.ndarray] | dict[str, np.ndarray]
) -> tuple[Any, list[str], list[Any], list[np.ndarray]]:
    """A positional tf.function over the object's entry point, its input names, specs, arrays.

    The entry point is a SavedModel's ``serving_default`` signature when it has one, else a
    tf.function itself or a module's ``__call__``. Batch dims are made ``None``.
    """
    tf = import_tensorflow()
    signatures = getattr(obj, "signatures", None)
    if signatures is not None and "serving_default" in signatures:
        serving = signatures["serving_default"]
        declared = dict(serving.structured_input_signature[1])
        names = list(declared)
        arrays = _match(parts, names)
        specs = [_batch_none(tf, declared[n], n) for n in names]

        def call_signature(*args: Any) -> Any:
            return serving(**dict(zip(names, args, strict=True)))

        return tf.function(call_signature, input_signature=specs), names, specs, arrays
    if hasattr(obj, "get_concrete_function"):
        function = obj
    else:
        function = obj.__call__ if callable(obj) else None
    if not hasattr(function, "get_concrete_function"):
        raise ExportError(
            f"cannot export this {type(obj).__name__}: it has no serving signature and its"
            " __call__ is not a tf.function (decorate it with @tf.function)"
        )
    declared_specs = list(getattr(function, "input_signature", None) or [])
    params = _python_params(function)
    count = len(declared_specs) or len(parts)
    names = [
        getattr(declared_specs[i], "name", None) if i < len(declared_specs) else None
        for i in range(count)
    ]
    names = [n or (params[i] if i < len(params) else f"input_{i}") for i, n in enumerate(names)]
    arrays = _match(parts, names)
    if declared_specs:
        specs = [_batch_none(tf, s, n) for s, n in zip(declared_specs, names, strict=True)]
    else:
        specs = [
            tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype), name=n)
            for a, n in zip(arrays, names, strict=True)
        ]
    return tf.function(function, input_signature=specs), names, specs, arrays


def _python_params(function: Any) -> list[str]:
    import inspect

    target = getattr(function, "python_function", function)
    try:
        return [
            p.name
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
    except (TypeError, ValueError):
        return []


def _match(parts: list[np.ndarray] | dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Order the sample like the function's inputs: by name for a dict, else by position."""
    if isinstance(parts, dict):
        missing = [n for n in names if n not in parts]
        if missing:
            raise InputError(f"the model expects inputs {names}; the sample has {list(parts)}")
        return [_float32(parts[n]) for n in names]
    if len(parts) != len(names):
        raise InputError(
            f"the model expects {len(names)} input(s) {names}; the sample has {len(parts)}"
        )
    return [_float32(a) for a in parts]


def _batch_none(tf: Any, spec: Any, name: str) -> Any:
    shape = list(spec.shape)
    if shape:
        shape[0] = None
    return tf.TensorSpec(shape, spec.dtype, name=name)


# ------------------------------------------------------------------------------ exporters


class _TensorFlowFamily:
    """Keras and plain TensorFlow run eagerly the same way and record the same versions."""

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """A zero-argument callable running the Keras / TensorFlow model once on ``sample``."""
        tf = import_tensorflow()
        parts = sample_parts(sample, frame_as_matrix=True)
        if is_keras_model(model):
            if isinstance(parts, dict) and set(parts) != {t.name for t in model.inputs}:
                parts = list(parts.values())
            inputs = _keras_inputs(parts)
            tensors = tf.nest.map_structure(tf.convert_to_tensor, inputs)
            return lambda: model(tensors, training=False)
        call, _, specs, arrays = _tf_call(model, parts)
        tensors = [
            tf.convert_to_tensor(a, dtype=s.dtype) for a, s in zip(arrays, specs, strict=True)
        ]
        return lambda: call(*tensors)

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import tensorflow as tf

        versions = {"tensorflow": tf.__version__, "onnx": onnx.__version__}
        versions["onnxruntime"] = onnxruntime.__version__
        with contextlib.suppress(ImportError):
            import keras

            versions["keras"] = keras.__version__
        with contextlib.suppress(ImportError):
            import tf2onnx

            versions["tf2onnx"] = tf2onnx.__version__
        return versions


class KerasExporter(_TensorFlowFamily):
    """Keras 3 models (Sequential, functional, subclassed) and ``.keras``/``.h5`` files."""

    framework = "keras"

    def detect(self, model: Any) -> bool:
        if isinstance(model, str | Path):
            path = Path(model)
            return path.suffix in KERAS_FILE_SUFFIXES and not is_saved_model_dir(path)
        return is_keras_model(model)

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """Through ``model.export(format="onnx")``; Keras-generated input names are replaced."""
        import_tensorflow()
        import keras

        parts = sample_parts(sample, frame_as_matrix=True)
        check_finite(parts)
        inputs = _keras_inputs(parts)
        try:
            reference = _flatten(model(inputs, training=False))
        except Exception as exc:
            raise InputError(
                f"the Keras model rejected the sample ({_given(parts)}): {_format.first_line(exc, lines=KERAS_REASON_LINES)};"
                f" it expects {_keras_expected(model)} (None = any size)"
            ) from exc
        with tempfile.TemporaryDirectory(prefix="nbdeploy-keras-") as tmp:
            path = Path(tmp) / "model.onnx"
            try:
                with quiet():
                    model.export(str(path), format="onnx", verbose=False, opset_version=opset)
            except Exception as exc:
                raise ExportError(
                    f"Keras could not export the model to ONNX: {_format.first_line(exc, lines=KERAS_REASON_LINES)}"
                ) from exc
            proto = _onnx.load(path)
        initializers = {init.name for init in proto.graph.initializer}
        onnx_inputs = [i.name for i in proto.graph.input if i.name not in initializers]
        given = len(inputs) if isinstance(inputs, dict | list) else 1
        if len(onnx_inputs) != given:
            raise ExportError(
                f"Keras's ONNX export produced {len(onnx_inputs)} graph inputs {onnx_inputs} for a"
                f" model taking {given}: it turned internal state into inputs (an adapted"
                " keras.layers.Normalization does this). Normalize the data before the model, or"
                " use a layer with constant weights (Rescaling, Dense) instead"
            )
        renames = _generated_input_renames(onnx_inputs)
        onnx_outputs = [o.name for o in proto.graph.output]
        out_names = _onnx.output_names(len(onnx_outputs))
        if isinstance(reference, dict) and len(reference) == len(onnx_outputs):
            out_names = list(reference)
        renames.update(zip(onnx_outputs, out_names, strict=True))
        _onnx.rename_io(_onnx.tidy(proto), renames)
        if isinstance(inputs, dict):
            feeds = {renames.get(n, n): inputs[n] for n in onnx_inputs if n in inputs}
            if len(feeds) != len(onnx_inputs):
                feeds = dict(
                    zip([renames.get(n, n) for n in onnx_inputs], inputs.values(), strict=False)
                )
        else:
            arrays = [inputs] if not isinstance(inputs, list) else inputs
            feeds = dict(zip([renames.get(n, n) for n in onnx_inputs], arrays, strict=True))
        return Exported(
            proto=proto,
            feeds=feeds,
            reference=reference,
            framework=self.framework,
            framework_version=keras.__version__,
            default_name=safe_name(
                model.name if getattr(model, "name", "") else type(model).__name__
            ),
            metadata={"exporter": "keras", "versions": self.versions()},
        )


class TensorFlowExporter(_TensorFlowFamily):
    """tf.Module, tf.function and SavedModel directories (a loaded one is an AutoTrackable)."""

    framework = "tensorflow"

    def detect(self, model: Any) -> bool:
        if isinstance(model, str | Path):
            return is_saved_model_dir(Path(model))
        return any(
            cls.__module__.startswith("tensorflow.python.")
            and cls.__name__ in ("Module", "AutoTrackable", "Function", "ConcreteFunction")
            for cls in type(model).__mro__
        )

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """Through tf2onnx, on a tf.function whose batch dims are ``None``."""
        tf = import_tensorflow()
        import tf2onnx

        parts = sample_parts(sample, frame_as_matrix=True)
        check_finite(parts)
        call, names, specs, arrays = _tf_call(model, parts)
        expected = ", ".join(
            f"{n} {list(s.shape)} {s.dtype.name}" for n, s in zip(names, specs, strict=True)
        )
        try:
            reference = _flatten(
                call(
                    *[
                        tf.convert_to_tensor(a, dtype=s.dtype)
                        for a, s in zip(arrays, specs, strict=True)
                    ]
                )
            )
        except Exception as exc:
            raise InputError(
                f"the TensorFlow model rejected the sample ({_given(parts)}): {_format.first_line(exc, lines=KERAS_REASON_LINES)};"
                f" it expects {expected} (None = any size)"
            ) from exc
        with contextlib.suppress(ImportError):
            from keras.src.export.tf2onnx_lib import patch_tf2onnx

            patch_tf2onnx()
        try:
            with quiet():
                proto, _ = tf2onnx.convert.from_function(call, input_signature=specs, opset=opset)
        except Exception as exc:
            raise ExportError(
                f"tf2onnx could not convert the TensorFlow function: {_format.first_line(exc, lines=KERAS_REASON_LINES)}"
            ) from exc
        renames = {i.name: i.name.split(":")[0] for i in proto.graph.input}
        onnx_outputs = [o.name for o in proto.graph.output]
        if not (isinstance(reference, dict) and set(reference) == set(onnx_outputs)):
            out_names = _onnx.output_names(len(onnx_outputs))
            if isinstance(reference, dict) and len(reference) == len(onnx_outputs):
                out_names = list(reference)
            renames.update(zip(onnx_outputs, out_names, strict=True))
        _onnx.rename_io(_onnx.tidy(proto), renames)
        default = getattr(model, "name", None) or type(model).__name__
        return Exported(
            proto=proto,
            feeds=dict(
                zip(
                    names,
                    [a.astype(s.dtype.as_numpy_dtype) for a, s in zip(arrays, specs, strict=True)],
                    strict=True,
                )
            ),
            reference=reference,
            framework=self.framework,
            framework_version=tf.__version__,
            default_name=safe_name(str(default)),
            metadata={"exporter": "tf2onnx", "versions": self.versions()},
        )


KERAS = KerasExporter()
TENSORFLOW = TensorFlowExporter()
