"""Python models: a cloudpickled callable served behind the same V2 routes as ONNX models.

A Python model's version directory holds ``model.pkl`` (the callable, pickled with cloudpickle)
and ``nbdeploy.json``, whose ``metadata`` says how to call it::

    {"format": "python", "pkl_sha256": "...", "python": "3.11", "batch_safe": false,
     "method": "predict_proba",
     "call": {"style": "single" | "positional" | "mapping" | "frame",
              "inputs": [{"name": "input", "as": "array" | "list" | "strings" | "torch",
                          "dtype": "float32", "key": ...}],
              "columns": [{"name": "age", "label": "age", "dtype": "int64", ...}]},
     "calls": [{"method": "predict_proba",
                "returns": {"style": "single" | "tuple" | "mapping" | "frame",
                            "names": ["probabilities"], "keys": [...]}}],
     "example": {"input": [[...one row...]]}}

Its signature (tensor names, datatypes, shapes) comes from ``nbdeploy.json``: there is no graph
to read it from. Loading refuses a ``model.pkl`` whose sha256 differs from the one recorded at
registration: unpickling runs code, so a file that changed is never loaded. V2 inputs are
turned into what the callable took when it was exported (an array of the sample's dtype, a
DataFrame rebuilt from its columns, a list of ``str``, a torch tensor), and what it returns
(arrays, lists, a DataFrame, a dict, a tuple) back into the named outputs of the signature.
An exception raised by the user's code on a request is the request's problem: a 400 with its
first line (an import error is the server's: a 500 naming the missing module).

:class:`PythonModel` stands where an onnxruntime session stands for an ONNX model
(``run(output_names, feeds)`` returns the outputs in that order); ``model.py`` wraps it in the
``ModelVersion`` interface the app and the batcher use. cloudpickle (and pandas or torch, when
the callable takes them) are imported only when a Python model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClientError

PICKLE_FILE = "model.pkl"
METADATA_FILE = "nbdeploy.json"
PLATFORM = "python_cloudpickle"

log = logging.getLogger("nbdeploy.serve")

# numpy dtype name (as nbdeploy.json's signature records it) -> V2 datatype
V2_DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "str": "BYTES",
}
CALL_STYLES = ("single", "positional", "mapping", "frame")
RETURN_STYLES = ("single", "tuple", "mapping", "frame")
PART_KINDS = ("array", "list", "strings", "torch")


class LoadError(Exception):
    """The version cannot be served (a start-up error, not a request's)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------ values <-> arrays


def to_array(value: Any) -> np.ndarray:
    """One returned value as a numpy array: arrays, lists, scalars, pandas Series / Index,
    torch and TensorFlow tensors. Text becomes an object array of ``str``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_numpy") and callable(value.to_numpy):
        value = value.to_numpy()
    elif not isinstance(value, np.ndarray) and hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return _strings(array)
    if array.dtype.kind == "O":
        flat = array.reshape(-1)
        if all(isinstance(item, str | bytes) for item in flat):
            return _strings(array)
        try:
            numbers = np.asarray(flat.tolist())
        except (TypeError, ValueError):
            numbers = flat
        if numbers.dtype.kind in "biuf" and numbers.shape == flat.shape:
            return numbers.reshape(array.shape)
        return _strings(array)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"values of type {array.dtype} cannot be sent as a V2 tensor")
    return array


def _strings(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        out[i] = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
    return out.reshape(array.shape)


def returned_arrays(value: Any, returns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """What one call returned, as named arrays per its ``returns`` record."""
    style = returns.get("style", "single")
    names = [str(name) for name in returns.get("names") or ()]
    if style == "single":
        return {names[0]: to_array(value)}
    if style == "tuple":
        if not isinstance(value, tuple | list) or len(value) != len(names):
            raise TypeError(
                f"it returned {_what(value)}; it returned a tuple of {len(names)} when exported"
            )
        return {name: to_array(part) for name, part in zip(names, value, strict=True)}
    if style == "mapping":
        if not isinstance(value, Mapping):
            raise TypeError(f"it returned {_what(value)}; it returned a dict when exported")
        keys = returns.get("keys") or names
        missing = [key for key in keys if key not in value]
        if missing:
            raise TypeError(f"its result lacks the key(s) {missing} it returned when exported")
        return {name: to_array(value[key]) for name, key in zip(names, keys, strict=True)}
    if style == "frame":
        columns = getattr(value, "columns", None)
        if columns is None:
            raise TypeError(f"it returned {_what(value)}; it returned a DataFrame when exported")
        by_name = {str(column): column for column in columns}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise TypeError(f"its DataFrame lacks the column(s) {missing} it had when exported")
        return {name: to_array(value[by_name[name]]) for name in names}
    raise TypeError(f"unknown return style {style!r}")


def _what(value: Any) -> str:
    cls = type(value)
    return (
        f"a {cls.__module__}.{cls.__qualname__}"
        if cls.__module__ != "builtins"
        else f"a {cls.__name__}"
    )


def call_arguments(
    call: Mapping[str, Any], feeds: Mapping[str, np.ndarray]
) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for the callable, from the checked V2 feeds."""
    style = call.get("style", "single")
    parts = list(call.get("inputs") or ())
    if style == "frame":
        return [_frame(call.get("columns") or [], feeds)], {}
    values = [_part(part, feeds[str(part["name"])]) for part in parts]
    if style == "single":
        return [values[0]], {}
    if style == "positional":
        return [tuple(values)] if call.get("packed") else values, {}
    if style == "mapping":
        return [
            {part.get("key", part["name"]): v for part, v in zip(parts, values, strict=True)}
        ], {}
    raise TypeError(f"unknown call style {style!r}")


def _part(part: Mapping[str, Any], array: np.ndarray) -> Any:
    kind = part.get("as", "array")
    if kind == "strings":
        return [str(item) for item in array.reshape(-1)]
    if kind == "list":
        return array.tolist()
    dtype = part.get("dtype")
    if dtype == "str":
        array = array.astype(str)
    elif dtype and dtype != "object" and array.dtype.name != dtype:
        array = array.astype(dtype)
    if kind == "torch":
        import torch

        return torch.from_numpy(np.array(array, copy=True))
    return array


def _frame(columns: list[Mapping[str, Any]], feeds: Mapping[str, np.ndarray]) -> Any:
    """The DataFrame the callable took when exported, rebuilt from one input per column."""
    import pandas as pd

    data = {}
    for column in columns:
        values = feeds[str(column["name"])].reshape(-1)
        dtype = str(column.get("dtype") or "")
        label = column.get("label", column["name"])
        if dtype == "category":
            categories = column.get("categories")
            series = pd.Series(pd.Categorical(values, categories=categories))
        elif dtype:
            try:
                series = pd.Series(values).astype(dtype)
            except (TypeError, ValueError):
                series = pd.Series(values)
        else:
            series = pd.Series(values)
        data[label] = series
    return pd.DataFrame(data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# ---------------------------------------------------------------------------------- model


class PythonModel:
    """A loaded Python model: the callable, its recorded signature and how to call it.

    ``inputs`` / ``outputs`` are ``(name, V2 datatype, shape)`` triples with ``-1`` for a
    dynamic dimension; ``run`` has the signature of an onnxruntime session's.
    """

    platform = PLATFORM

    def __init__(
        self,
        name: str,
        version: int,
        directory: Path,
        obj: Any,
        data: dict[str, Any],
    ) -> None:
        self.name = name
        self.version = version
        self.directory = directory
        self.obj = obj
        metadata = data.get("metadata") or {}
        self.metadata: dict[str, Any] = metadata
        signature = data.get("signature") or {}
        self.inputs = [_triple(spec) for spec in signature.get("inputs") or ()]
        self.outputs = [_triple(spec) for spec in signature.get("outputs") or ()]
        self._dtypes = {spec["name"]: spec["dtype"] for spec in signature.get("outputs") or ()}
        self._input_dtypes = {spec["name"]: spec["dtype"] for spec in signature.get("inputs") or ()}
        self.call: dict[str, Any] = metadata.get("call") or {"style": "single", "inputs": []}
        self.calls: list[tuple[Callable[..., Any], dict[str, Any]]] = []
        for entry in metadata.get("calls") or ():
            self.calls.append((_bound(obj, entry.get("method")), entry.get("returns") or {}))
        self.batch_safe = bool(metadata.get("batch_safe"))
        self.batchable = False
        self.extras: dict[str, Any] = {
            "format": "python",
            "method": metadata.get("method"),
            "batch_safe": self.batch_safe,
        }

    @classmethod
    def load(cls, name: str, version: int, directory: Path) -> PythonModel:
        """Check ``model.pkl`` against its recorded sha256, then unpickle it."""
        path = directory / PICKLE_FILE
        data = _read_metadata(directory)
        metadata = data.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("format") != "python":
            raise LoadError(f"{directory / METADATA_FILE} does not describe a Python model")
        recorded = metadata.get("pkl_sha256")
        if not isinstance(recorded, str) or len(recorded) != 64:
            raise LoadError(
                f"refusing to load {path}: {METADATA_FILE} records no sha256 for it, so it"
                " cannot be checked (unpickling runs code; register the model with nbdeploy)"
            )
        actual = sha256_file(path)
        if actual != recorded:
            log.error(
                "REFUSING to load %s v%d: %s has sha256 %s but %s was recorded at registration;"
                " the file changed after registration and unpickling it would run code nobody"
                " checked",
                name,
                version,
                path,
                actual[:16],
                recorded[:16],
            )
            raise LoadError(
                f"refusing to load {path}: its sha256 {actual[:16]}... differs from the"
                f" {recorded[:16]}... recorded at registration (the file changed after it was"
                " registered)"
            )
        recorded_python = metadata.get("python")
        running = "{}.{}".format(*sys.version_info[:2])
        if recorded_python and str(recorded_python) != running:
            raise LoadError(
                f"{path} was pickled with Python {recorded_python}; this server runs Python"
                f" {running}, which cannot load the code it holds"
            )
        try:
            import cloudpickle
        except ImportError as exc:
            raise LoadError(
                "a Python model needs cloudpickle in the serving environment; it is missing"
            ) from exc
        try:
            with open(path, "rb") as handle:
                obj = cloudpickle.load(handle)
        except ImportError as exc:
            raise LoadError(
                f"cannot load {path}: {_first_line(exc)}; the serving environment lacks a"
                " package the model needs (list it in requirements=[...])"
            ) from exc
        except Exception as exc:
            raise LoadError(f"cannot load {path}: {_first_line(exc)}") from exc
        model = cls(name, version, directory, obj, data)
        if not model.calls or not model.inputs or not model.outputs:
            raise LoadError(f"{directory / METADATA_FILE} lacks the calls or the signature")
        log.info(
            "%s v%d: Python model (%s) loaded in %s (Python %s)",
            name,
            version,
            model.extras["method"],
            sys.prefix,
            platform.python_version(),
        )
        return model

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Call the model on the feeds and return the outputs named, in that order.

        An exception from the user's code is a 400 with its first line; an output that does
        not fit the recorded signature is a 500 naming it.
        """
        args, kwargs = call_arguments(self.call, feeds)
        results: dict[str, np.ndarray] = {}
        for function, returns in self.calls:
            try:
                with self._no_grad():
                    value = function(*args, **kwargs)
            except ImportError as exc:
                raise ClientError(
                    500,
                    f"model '{self.name}' needs a module the server lacks ({_first_line(exc)});"
                    " deploy it again with that package in requirements=[...]",
                ) from exc
            except (Exception, SystemExit) as exc:
                raise ClientError(400, f"model '{self.name}' raised {_first_line(exc)}") from exc
            try:
                results.update(returned_arrays(value, returns))
            except (TypeError, ValueError) as exc:
                raise ClientError(
                    500, f"model '{self.name}' returned what it cannot serve: {exc}"
                ) from exc
        return [self._fit(name, results) for name in output_names]

    def _no_grad(self) -> Any:
        """torch's inference mode around a model that takes torch tensors (no autograd graph
        is built for a request), else nothing."""
        if not any(part.get("as") == "torch" for part in self.call.get("inputs") or ()):
            return contextlib.nullcontext()
        import torch

        return torch.inference_mode()

    def _fit(self, name: str, results: dict[str, np.ndarray]) -> np.ndarray:
        """Output ``name`` cast to its recorded dtype, or a 500 when it does not fit."""
        if name not in results:
            raise ClientError(500, f"model '{self.name}' returned no output '{name}'")
        array = results[name]
        declared = next(info for info in self.outputs if info[0] == name)
        dtype = self._dtypes.get(name)
        if dtype == "str":
            if array.dtype.kind != "O":
                array = _strings(array)
        elif dtype and array.dtype.name != dtype:
            if array.dtype.kind == "O" or not np.can_cast(array.dtype, dtype, "same_kind"):
                raise ClientError(
                    500,
                    f"model '{self.name}' returned {array.dtype} values for output '{name}',"
                    f" recorded as {dtype} when it was exported",
                )
            array = array.astype(dtype)
        shape = declared[2]
        if len(shape) != array.ndim or any(
            want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)
        ):
            raise ClientError(
                500,
                f"model '{self.name}' returned shape {list(array.shape)} for output '{name}',"
                f" recorded as {list(shape)} (-1 = any size) when it was exported",
            )
        return array

    def warm_up(self) -> None:
        """Run the recorded example row once (so a missing package shows at load, not on the
        first request), and twice stacked to confirm a batch-safe model follows the rows."""
        example = self.metadata.get("example")
        if not isinstance(example, dict):
            self.batchable = False
            return
        names = [info[0] for info in self.outputs]
        try:
            feeds = self._example_feeds(example, 1)
            self.run(names, feeds)
        except ClientError as exc:
            if exc.status == 500 and "needs a module" in exc.message:
                raise LoadError(exc.message) from exc
            log.warning(
                "%s v%d: warm-up on the recorded example failed: %s",
                self.name,
                self.version,
                exc.message,
            )
            self.batchable = False
            return
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "%s v%d: the recorded example is unusable: %s", self.name, self.version, exc
            )
            self.batchable = False
            return
        dynamic = all(info[2][:1] == (-1,) for info in (*self.inputs, *self.outputs))
        if not (self.batch_safe and dynamic):
            self.batchable = False
            return
        try:
            double = dict(zip(names, self.run(names, self._example_feeds(example, 2)), strict=True))
        except ClientError as exc:
            log.warning(
                "%s v%d: a two-row warm-up failed, so batching is off: %s",
                self.name,
                self.version,
                exc.message,
            )
            self.batchable = False
            return
        self.batchable = all(array.shape[:1] == (2,) for array in double.values())

    def _example_feeds(self, example: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, datatype, _shape in self.inputs:
            values = example[name]
            if datatype == "BYTES":
                array = _strings(np.asarray(values, dtype=object))
            else:
                array = np.asarray(values, dtype=self._input_dtypes[name])
            feeds[name] = np.concatenate([array] * rows) if rows > 1 else array
        return feeds


def _bound(obj: Any, method: str | None) -> Callable[..., Any]:
    if method in (None, "", "__call__", "function"):
        if not callable(obj):
            raise LoadError(f"the pickled {type(obj).__name__} is not callable")
        return obj  # type: ignore[no-any-return]
    function = getattr(obj, method, None)
    if not callable(function):
        raise LoadError(f"the pickled {type(obj).__name__} has no method {method!r}")
    return function  # type: ignore[no-any-return]


def _triple(spec: Mapping[str, Any]) -> tuple[str, str, tuple[int, ...]]:
    dtype = str(spec["dtype"])
    datatype = spec.get("datatype") or V2_DATATYPES.get(dtype)
    if datatype not in V2_DATATYPES.values():
        raise LoadError(f"tensor '{spec.get('name')}' has dtype {dtype}, which V2 cannot carry")
    return str(spec["name"]), str(datatype), tuple(int(d) for d in spec.get("shape") or ())


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"a Python model needs its {METADATA_FILE}: {exc}") from exc
    if not isinstance(data, dict):
        raise LoadError(f"{path} is not a JSON object")
    return data
