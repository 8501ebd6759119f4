"""Turning what users pass as a sample (arrays, lists, tensors, dicts, frames) into ORT feeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbdeploy._errors import InputError
from nbdeploy._types import Signature


def to_numpy(value: Any) -> np.ndarray:
    """Convert a torch/tf tensor, pandas object, list or scalar to a numpy array (no framework import)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and callable(value.numpy):
        return np.asarray(value.numpy())
    if hasattr(value, "to_numpy") and callable(value.to_numpy):
        return value.to_numpy()
    try:
        return np.asarray(value)
    except Exception as exc:
        raise InputError(f"cannot turn a {type(value).__name__} into an array: {exc}") from exc


def is_frame(value: Any) -> bool:
    """True for a pandas DataFrame (or a subclass), judged without importing pandas."""
    return any(
        cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas"
        for cls in type(value).__mro__
    )


def sample_parts(
    sample: Any, *, frame_as_matrix: bool = False
) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Split a sample into positional arrays, or named arrays when it is a mapping.

    A pandas DataFrame gives one named array [n, 1] per column (see :func:`column_array`);
    with ``frame_as_matrix`` (for models taking one feature matrix, e.g. a torch MLP) it is
    one array [n, columns] instead.
    """
    if is_frame(sample):
        if frame_as_matrix:
            return [to_numpy(sample)]
        return {str(name): column_array(sample[name], str(name)) for name in sample.columns}
    if isinstance(sample, Mapping):
        return {str(k): to_numpy(v) for k, v in sample.items()}
    if isinstance(sample, tuple) or (
        isinstance(sample, list) and sample and not _is_scalar_list(sample)
    ):
        return [to_numpy(v) for v in sample]
    return [to_numpy(sample)]


def column_kind(dtype: Any) -> str:
    """``numeric``, ``categorical`` or ``boolean``: what a DataFrame column holds."""
    name = str(dtype)
    kind = getattr(dtype, "kind", "O")
    if name in ("bool", "boolean"):
        return "boolean"
    if name == "category" or kind in "OSU" or name.startswith("string") or name == "str":
        return "categorical"
    return "numeric"


def column_array(column: Any, name: str = "column") -> np.ndarray:
    """One DataFrame column as a 2-D array [n, 1] the ONNX model can be fed with.

    Floats stay floats, integers become int64 (float64 with NaN when a nullable integer
    column has missing values), booleans stay bool (float64 with NaN when missing), and
    string / object / category columns become numpy object arrays of ``str`` with missing
    values as ``""``. A category column with numeric categories gives its numeric values.
    Dates, durations and other types are refused with one line naming the column.
    """
    dtype = column.dtype
    text = str(dtype)
    if text == "category":
        values = np.asarray(column.cat.categories)
        if values.dtype.kind in "iufb":
            missing = column.isna().to_numpy()
            numbers = column.astype(object).where(~column.isna(), np.nan).to_numpy()
            out_dtype = np.float64 if missing.any() or values.dtype.kind == "f" else np.int64
            return numbers.astype(out_dtype).reshape(-1, 1)
        return _strings(column.to_numpy(dtype=object)).reshape(-1, 1)
    kind = getattr(dtype, "kind", "O")
    if text in ("bool", "boolean"):
        if column.isna().any():
            return column.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1)
        return column.to_numpy(dtype=bool).reshape(-1, 1)
    if kind in "iu":
        if column.isna().any():
            return column.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1)
        return column.to_numpy(dtype=np.int64).reshape(-1, 1)
    if kind == "f":
        return column.to_numpy(
            dtype=np.float64 if dtype.itemsize > 4 else np.float32, na_value=np.nan
        ).reshape(-1, 1)
    if kind in "OSU" or text.startswith("string") or text == "str":
        values = column.to_numpy(dtype=object)
        present = [v for v in values if not _missing(v)]
        if all(isinstance(v, str | bytes) for v in present):
            return _strings(values).reshape(-1, 1)
        if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in present):
            return np.array(
                [np.nan if _missing(v) else v for v in values], dtype=np.float64
            ).reshape(-1, 1)
        kinds = sorted({type(v).__name__ for v in present})
        raise InputError(
            f"column {name!r} mixes values of types {kinds}: give it one type (strings or numbers)"
        )
    raise InputError(
        f"column {name!r} has dtype {text}, which a model input cannot take: convert it to"
        " numbers or strings first (e.g. a date to its year, month and day)"
    )


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float | np.floating) and np.isnan(value))
        or (type(value).__name__ in ("NAType", "NaTType"))
    )


def _strings(values: Any) -> np.ndarray:
    """Object array of ``str``: bytes decoded as UTF-8, missing values (None, NaN) as ``""``."""
    flat = np.asarray(values, dtype=object).ravel()
    out = np.empty(flat.shape, dtype=object)
    for i, value in enumerate(flat):
        if _missing(value):
            out[i] = ""
        elif isinstance(value, bytes):
            out[i] = value.decode("utf-8", errors="replace")
        else:
            out[i] = str(value)
    return out.reshape(np.shape(values))


def _is_scalar_list(values: Sequence[Any]) -> bool:
    """A plain (possibly nested) list of numbers or strings is one tensor, not several inputs."""
    first = values[0]
    return isinstance(first, int | float | bool | str | bytes | np.number | list) and not hasattr(
        first, "shape"
    )


def as_feeds(signature: Signature, sample: Any, *, cast: bool = True) -> dict[str, np.ndarray]:
    """Map a sample onto the signature's inputs, casting to the declared dtypes.

    A DataFrame gives the columns the signature names (extra columns are ignored); for a
    model with one matrix input that is not a column, the whole frame is that matrix.
    Raises InputError naming the expected inputs when the sample does not fit.
    """
    expected = signature.input_names
    if is_frame(sample):
        columns = [str(c) for c in sample.columns]
        if len(expected) == 1 and expected[0] not in columns:
            parts: list[np.ndarray] | dict[str, np.ndarray] = [to_numpy(sample)]
        else:
            missing = [n for n in expected if n not in columns]
            if missing:
                raise InputError(
                    f"the DataFrame lacks column(s) {missing} that the model takes"
                    f" (it takes {expected})"
                )
            by_name = {str(c): c for c in sample.columns}
            parts = {n: column_array(sample[by_name[n]], n) for n in expected}
    else:
        parts = sample_parts(sample)
    if isinstance(parts, dict):
        missing = [n for n in expected if n not in parts]
        extra = [n for n in parts if n not in expected]
        if missing or extra:
            raise InputError(
                f"the model expects inputs {expected}; the sample has {list(parts)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        arrays = [parts[n] for n in expected]
    else:
        if len(parts) != len(expected):
            raise InputError(
                f"the model expects {len(expected)} input(s) {expected}; the sample has {len(parts)}"
            )
        arrays = parts
    feeds: dict[str, np.ndarray] = {}
    for spec, array in zip(signature.inputs, arrays, strict=True):
        if len(spec.shape) == 2 and spec.shape[1] == 1 and array.ndim == 1:
            array = array.reshape(-1, 1)  # one column given as a flat list of values
        if spec.dtype == "str":
            feeds[spec.name] = _strings(array)
            continue
        if cast and array.dtype.name != spec.dtype:
            try:
                array = array.astype(spec.dtype)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"input '{spec.name}' takes {spec.dtype} values; the sample's"
                    f" {array.dtype} values cannot be converted ({exc})"
                ) from exc
        if spec.shape and len(spec.shape) != array.ndim:
            raise InputError(
                f"input '{spec.name}' expects {len(spec.shape)} dimensions {list(spec.shape)};"
                f" the sample has shape {list(array.shape)}"
            )
        for want, got in zip(spec.shape, array.shape, strict=False):
            if want not in (-1, got):
                raise InputError(
                    f"input '{spec.name}' expects shape {list(spec.shape)} (-1 = any);"
                    f" the sample has shape {list(array.shape)}"
                )
        feeds[spec.name] = np.ascontiguousarray(array)
    return feeds


def check_finite(
    parts: list[np.ndarray] | dict[str, np.ndarray], *, allow_nan: Sequence[str] = ()
) -> None:
    """Refuse samples with NaN or infinity: a parity check on them would prove nothing.

    ``allow_nan`` names inputs whose NaN the model is known to handle (its ``accepts_nan``):
    NaN passes there, infinity never does.
    """
    items = parts.items() if isinstance(parts, dict) else enumerate(parts)
    for key, array in items:
        if array.dtype.kind != "f" or np.all(np.isfinite(array)):
            continue
        if key in allow_nan and not np.any(np.isinf(array)):
            continue
        what = "infinity" if key in allow_nan else "NaN or infinity"
        raise InputError(
            f"sample input {key!r} contains {what}; pass finite values"
            " (the export is checked against the original on this sample)"
        )


def batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def repeat_to_batch(feeds: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Tile or cut a sample along its first axis to exactly ``size`` rows (for benchmarks)."""
    out: dict[str, np.ndarray] = {}
    for name, array in feeds.items():
        if array.ndim == 0:
            out[name] = array
            continue
        reps = -(-size // max(array.shape[0], 1))
        out[name] = np.ascontiguousarray(np.concatenate([array] * reps, axis=0)[:size])
    return out


def random_sample(
    signature: Signature, *, batch_size: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs shaped and typed after a signature, for models given without a sample.

    Dynamic non-batch dimensions get 16; integer inputs (token ids, say) stay small and
    non-negative so they are valid indices.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [batch_size if i == 0 else (16 if d == -1 else d) for i, d in enumerate(spec.shape)]
        if spec.dtype == "str":
            feeds[spec.name] = np.array(["sample"] * int(np.prod(shape)), dtype=object).reshape(
                shape
            )
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) > 0.5
        elif np.dtype(spec.dtype).kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds
