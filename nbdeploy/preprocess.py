"""How raw user input (a picture, a form, text) becomes a model's input tensor.

``infer_preprocessing`` looks at the signature and the sample a model was deployed with and
writes down what the demo page must do: for images the layout, size, channels, value range and
background; for tables the columns (name, type, the categories and the range seen in the
sample) and the sample's first rows; for text the encoding. Every kind also keeps the sample's
first complete row as ``request_example`` (when small), for the copy-paste snippets.
Deploy records it in the artifact's metadata under ``"preprocessing"``. The functions that
*apply* it live in :mod:`nbdeploy._demo_template`, which is copied into every demo notebook, and
are re-exported here so Python callers (and tests) use exactly the code the page runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbdeploy._demo_template import (
    DemoError,
    apply_image_preprocessing,
    json_inputs,
    open_image,
    tabular_array,
    tabular_inputs,
    text_array,
)
from nbdeploy._errors import InputError, NbdeployError
from nbdeploy._tensors import sample_parts
from nbdeploy._types import Signature, TensorSpec

__all__ = [
    "DemoError",
    "apply_image_preprocessing",
    "describe_inputs",
    "infer_preprocessing",
    "json_inputs",
    "open_image",
    "tabular_array",
    "tabular_inputs",
    "text_array",
]

SPEC_VERSION = 1
CHANNEL_COUNTS = (1, 3, 4)
PIXEL_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 16.0), (0.0, 255.0))
MAX_EXAMPLES = 10
MAX_JSON_EXAMPLE = 4096
MAX_TEXT_EXAMPLE = 2000
MAX_CATEGORIES = 200
COLUMN_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "str",
)


def infer_preprocessing(
    signature: Signature,
    sample: Any = None,
    *,
    kind: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Describe how to build this model's input from a picture, a form or text.

    ``sample`` is what the model was deployed with (array, tensor, DataFrame, list or dict of
    those, or None); it supplies concrete sizes for dynamic dimensions, the pixel value range
    and background, tabular example rows and feature names (a DataFrame's columns). ``kind``
    overrides the guess from the signature, e.g. ``"image"`` for a flattened ``[n, 64]`` digit.
    """
    arrays = _sample_arrays(signature, sample)
    kind = kind or signature.input_kind
    if kind in ("tabular", "tensor") and _is_columnar(signature):
        spec = _columns_spec(signature, arrays, _feature_names(sample, None, signature))
    else:
        spec = _single_input_spec(signature, arrays, sample, kind, feature_names)
    example = _request_example(signature, arrays)
    if example is not None:
        spec["request_example"] = example
    return spec


def _single_input_spec(
    signature: Signature,
    arrays: Mapping[str, np.ndarray],
    sample: Any,
    kind: str,
    feature_names: Sequence[str] | None,
) -> dict[str, Any]:
    if kind != "tensor" and len(signature.inputs) != 1:
        raise InputError(
            f"a {kind} demo needs a model with one input; this one has {signature.input_names}"
        )
    spec: dict[str, Any] = {"spec_version": SPEC_VERSION, "kind": kind}
    if kind == "tensor":
        spec["examples"] = _json_examples(signature, arrays)
        return spec
    tensor = signature.inputs[0]
    array = arrays.get(tensor.name)
    spec.update(input=tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
    if kind == "image":
        spec.update(_image_spec(tensor, array))
    elif kind == "tabular":
        names = _feature_names(sample, feature_names, signature)
        spec.update(_tabular_spec(tensor, array, names))
    elif kind == "text":
        spec.update(_text_spec(tensor, array))
    else:
        raise InputError(f"kind must be image, tabular, text or tensor; got {kind!r}")
    return spec


def describe_inputs(
    signature: Signature,
    sample: Any = None,
    *,
    kind: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Like :func:`infer_preprocessing`, but never fails: what deploy records in the metadata.

    When the input cannot be read as ``kind`` (e.g. an image of dynamic size and no sample),
    or the sample does not fit the signature, the demo falls back to its JSON editor.
    """
    try:
        return infer_preprocessing(signature, sample, kind=kind, feature_names=feature_names)
    except NbdeployError:
        pass
    try:
        return infer_preprocessing(signature, sample, kind="tensor")
    except NbdeployError:
        return infer_preprocessing(signature, None, kind="tensor")


def _sample_arrays(signature: Signature, sample: Any) -> dict[str, np.ndarray]:
    """The sample as named arrays (by position when unnamed); empty when there is none."""
    if sample is None:
        return {}
    texts = _texts(signature, sample)
    if texts is not None:
        return {signature.inputs[0].name: texts}
    parts = sample_parts(sample)
    if isinstance(parts, dict):
        return parts
    return dict(zip(signature.input_names, parts, strict=False))


def _feature_names(
    sample: Any, given: Sequence[str] | None, signature: Signature
) -> list[str] | None:
    """Names given, else a one-matrix sample's DataFrame columns (not per-column inputs)."""
    if given is not None:
        return [str(name) for name in given]
    columns = getattr(sample, "columns", None)
    if columns is None or _is_columnar(signature):
        return None
    return [str(c) for c in columns]


def _is_columnar(signature: Signature) -> bool:
    """One ``[n, 1]`` (or ``[n]``) input per column of a table, two or more of them: what a
    DataFrame sample exports to. A single such input stays a one-feature form (or text)."""
    return len(signature.inputs) > 1 and all(
        spec.dtype in COLUMN_DTYPES and len(spec.shape) in (1, 2) and spec.shape[1:] in ((), (1,))
        for spec in signature.inputs
    )


def _dims(tensor: TensorSpec, array: np.ndarray | None) -> list[int]:
    """The signature's shape with dynamic dims filled in from the sample where it has them."""
    dims = list(tensor.shape)
    if array is not None and array.ndim == len(dims):
        dims = [int(got) if want < 0 else want for want, got in zip(dims, array.shape, strict=True)]
    return dims


def _image_spec(tensor: TensorSpec, array: np.ndarray | None) -> dict[str, Any]:
    dims = _dims(tensor, array)
    if len(dims) == 4:
        first, last = dims[1] in CHANNEL_COUNTS, dims[3] in CHANNEL_COUNTS
        if last and not first:
            layout, (height, width, channels) = "NHWC", dims[1:]
        else:
            layout, (channels, height, width) = "NCHW", dims[1:]
    elif len(dims) == 3:
        layout, channels, (height, width) = "NHW", 1, dims[1:]
    elif len(dims) == 2 and dims[1] > 0 and round(dims[1] ** 0.5) ** 2 == dims[1]:
        side = round(dims[1] ** 0.5)
        layout, channels, height, width = "flat", 1, side, side
    else:
        raise InputError(
            f"cannot read input {tensor.name!r} of shape {list(tensor.shape)} as an image:"
            " expected [n, c, h, w], [n, h, w, c], [n, h, w] or a flattened square [n, h*w]"
        )
    if min(height, width, channels) <= 0:
        raise InputError(
            f"input {tensor.name!r} has dynamic image dimensions {list(tensor.shape)};"
            " pass a sample so the demo knows the size to resize pictures to"
        )
    spec: dict[str, Any] = {
        "layout": layout,
        "height": height,
        "width": width,
        "channels": channels,
        "range": list(_pixel_range(tensor.dtype, array)),
        "mean": None,
        "std": None,
        "background": None,
    }
    if array is not None and channels == 1 and array.size:
        images = np.asarray(array, dtype=np.float64).reshape(-1, height, width)
        spec["background"] = _background(images, spec["range"])
    return spec


def _pixel_range(dtype: str, array: np.ndarray | None) -> tuple[float, float]:
    """The smallest usual range that holds the sample's values ([0, 1] without a sample)."""
    if dtype == "uint8":
        return 0.0, 255.0
    if array is None or not array.size:
        return 0.0, 1.0
    values = np.asarray(array, dtype=np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    for lo, hi in PIXEL_RANGES:
        if low >= lo - 1e-6 and high <= hi + 1e-6:
            return lo, hi
    return low, high


def _background(images: np.ndarray, value_range: Sequence[float]) -> str | None:
    """``dark`` or ``light`` when the samples' borders sit clearly at one end of the range."""
    low, high = value_range
    span = high - low
    if span <= 0:
        return None
    scaled = (images - low) / span
    border = np.concatenate(
        [scaled[:, 0, :], scaled[:, -1, :], scaled[:, :, 0], scaled[:, :, -1]], axis=1
    )
    dark, light = float(np.mean(border < 0.15)), float(np.mean(border > 0.85))
    if dark >= 0.6 and light <= 0.2:
        return "dark"
    if light >= 0.6 and dark <= 0.2:
        return "light"
    return None


def _tabular_spec(
    tensor: TensorSpec, array: np.ndarray | None, names: list[str] | None
) -> dict[str, Any]:
    """A one-matrix ``[n, features]`` input: one numeric field per feature."""
    count = _dims(tensor, array)[1]
    if count <= 0:
        raise InputError(
            f"input {tensor.name!r} has a dynamic feature count {list(tensor.shape)};"
            " pass a sample so the demo knows how many fields to show"
        )
    if names is not None and len(names) != count:
        raise InputError(f"{len(names)} feature names given for {count} features")
    examples = None
    usable = array is not None and array.ndim == 2 and array.shape[1] == count
    if usable:
        rows = np.asarray(array)
        finite = np.all(np.isfinite(rows.astype(np.float64)), axis=1)
        examples = [[_exact(v) for v in row] for row in rows[finite][:MAX_EXAMPLES]] or None
    columns = []
    for index, name in enumerate(names or [f"x{i}" for i in range(count)]):
        column: dict[str, Any] = {"name": name, "dtype": tensor.dtype, "kind": "numeric"}
        if usable:
            column.update(_value_range(array[:, index]))
        columns.append(column)
    return {
        "layout": "matrix",
        "features": count,
        "feature_names": names,
        "columns": columns,
        "examples": examples,
    }


def _columns_spec(
    signature: Signature, arrays: Mapping[str, np.ndarray], names: list[str] | None
) -> dict[str, Any]:
    """One input per column (a DataFrame model): a field per column, typed after the input.

    String columns offer the categories seen in the sample; numeric ones show the range seen;
    ``examples`` are the sample's first rows (missing numbers as None), column by column.
    """
    columns, values = [], []
    for spec in signature.inputs:
        array = arrays.get(spec.name)
        column: dict[str, Any] = {
            "name": spec.name,
            "input": spec.name,
            "dtype": spec.dtype,
            "shape": list(spec.shape),
        }
        flat = None if array is None else np.asarray(array).reshape(len(array), -1)[:, 0]
        if flat is not None and spec.dtype.startswith("float") and flat.dtype.kind in "fiub":
            flat = flat.astype(spec.dtype)  # the values the model sees, in their shortest form
        if spec.dtype == "str":
            column["kind"] = "categorical"
            if flat is not None:
                seen = sorted({_as_text(v) for v in flat})
                column["categories"] = seen[:MAX_CATEGORIES]
                column["open"] = len(seen) > MAX_CATEGORIES
        elif spec.dtype == "bool":
            column["kind"] = "boolean"
        else:
            column["kind"] = "numeric"
            if flat is not None:
                column.update(_value_range(flat))
        columns.append(column)
        values.append(flat)
    rows = min((len(v) for v in values if v is not None), default=0)
    examples = None
    if all(v is not None for v in values) and rows:
        examples = [
            [_cell(column, v[i]) for column, v in zip(columns, values, strict=True)]
            for i in range(min(rows, MAX_EXAMPLES))
        ]
    return {
        "spec_version": SPEC_VERSION,
        "kind": "tabular",
        "layout": "columns",
        "features": len(columns),
        "feature_names": [c["name"] for c in columns] if names is None else names,
        "columns": columns,
        "examples": examples,
    }


def _value_range(values: np.ndarray) -> dict[str, Any]:
    """``min`` and ``max`` of the finite values seen (nothing when there are none)."""
    numbers = np.asarray(values, dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if not numbers.size:
        return {}
    return {
        "min": _exact(values.dtype.type(numbers.min())),
        "max": _exact(values.dtype.type(numbers.max())),
    }


def _exact(value: Any) -> Any:
    """A JSON number that turns back into exactly ``value`` in the input's dtype: float32
    values by their shortest float32 repr (17.99, not 17.989999771118164); NaN/inf as None."""
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        if not np.isfinite(value):
            return None
        return float(str(value)) if isinstance(value, np.floating) else float(value)
    return value


def _nested(array: np.ndarray) -> Any:
    """An array as nested lists of :func:`_exact` numbers (numpy scalars keep their dtype)."""
    if array.ndim == 0:
        return _exact(array[()])
    return [_nested(item) for item in array]


def _cell(column: dict[str, Any], value: Any) -> Any:
    if column["kind"] == "categorical":
        return _as_text(value)
    return _exact(value)


def _texts(signature: Signature, sample: Any) -> np.ndarray | None:
    """A raw-text model's sample (a str, or a list/tuple of them) as one 1-D array of str:
    the texts are rows of the one input, not one input each."""
    if len(signature.inputs) != 1 or signature.inputs[0].dtype != "str":
        return None
    if len(signature.inputs[0].shape) != 1:
        return None
    if isinstance(sample, str):
        sample = [sample]
    if not isinstance(sample, list | tuple) or not all(isinstance(t, str) for t in sample):
        return None
    array = np.empty(len(sample), dtype=object)
    array[:] = list(sample)
    return array


def _text_spec(tensor: TensorSpec, array: np.ndarray | None) -> dict[str, Any]:
    if tensor.dtype == "str":
        spec: dict[str, Any] = {"encoding": "string", "max_length": None}
        if array is not None and array.size:
            texts = [_as_text(v) for v in np.asarray(array, dtype=object).reshape(-1)]
            spec["examples"] = [t[:MAX_TEXT_EXAMPLE] for t in texts if t.strip()][:MAX_EXAMPLES]
        return spec
    length = _dims(tensor, array)[1]
    return {"encoding": "token_ids", "max_length": length if length > 0 else None}


def _json_examples(signature: Signature, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The sample's first row per input, for the JSON editor, when it is small enough."""
    examples: dict[str, Any] = {}
    for tensor in signature.inputs:
        array = arrays.get(tensor.name)
        if array is None or array.ndim == 0 or array.size == 0:
            continue
        row = array[:1]
        if row.size > MAX_JSON_EXAMPLE:
            continue
        if row.dtype.kind in "OUS":
            examples[tensor.name] = np.vectorize(_as_text, otypes=[object])(row).tolist()
        elif row.dtype.kind == "f" and np.all(np.isfinite(row)):
            examples[tensor.name] = _nested(row)
        elif row.dtype.kind in "iub":
            examples[tensor.name] = row.tolist()
    return examples


def _request_example(
    signature: Signature, arrays: Mapping[str, np.ndarray]
) -> dict[str, Any] | None:
    """The sample's first row with every value finite, as ``{input: nested list}`` with a batch
    of one, when every input is in the sample, the row fits the signature and is small."""
    if not signature.inputs or any(spec.name not in arrays for spec in signature.inputs):
        return None
    parts = [np.asarray(arrays[spec.name]) for spec in signature.inputs]
    if any(part.ndim == 0 or len(part) == 0 for part in parts):
        return None
    rows = min(len(part) for part in parts)
    if sum(part[:1].size for part in parts) > MAX_JSON_EXAMPLE:
        return None
    for index in range(rows):
        row = [part[index : index + 1] for part in parts]
        if all(r.dtype.kind not in "fc" or np.all(np.isfinite(r)) for r in row):
            break
    else:
        return None
    example: dict[str, Any] = {}
    for spec, part in zip(signature.inputs, row, strict=True):
        fits = len(spec.shape) == part.ndim and all(
            want in (-1, got) for want, got in zip(spec.shape[1:], part.shape[1:], strict=True)
        )
        if not fits:
            return None
        if part.dtype.kind in "OUS":
            example[spec.name] = np.vectorize(_as_text, otypes=[object])(part).tolist()
        elif part.dtype.kind in "fiub":
            example[spec.name] = _nested(part.astype(spec.dtype) if spec.dtype != "str" else part)
        else:
            return None
    return example


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
