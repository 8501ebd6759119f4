"""How raw user input (a picture, a form, text) becomes a model's input tensor.

``infer_preprocessing`` looks at the signature and the sample a model was deployed with and
writes down what the demo page must do: for images the layout, size, channels, value range and
background; for tables the feature count, names and a few example rows; for text the encoding.
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
    "text_array",
]

SPEC_VERSION = 1
CHANNEL_COUNTS = (1, 3, 4)
PIXEL_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 16.0), (0.0, 255.0))
MAX_EXAMPLES = 5
MAX_JSON_EXAMPLE = 4096


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
        spec.update(_tabular_spec(tensor, array, _feature_names(sample, feature_names)))
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
    parts = sample_parts(sample)
    if isinstance(parts, dict):
        return parts
    return dict(zip(signature.input_names, parts, strict=False))


def _feature_names(sample: Any, given: Sequence[str] | None) -> list[str] | None:
    if given is not None:
        return [str(name) for name in given]
    columns = getattr(sample, "columns", None)
    return [str(c) for c in columns] if columns is not None else None


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
    count = _dims(tensor, array)[1]
    if count <= 0:
        raise InputError(
            f"input {tensor.name!r} has a dynamic feature count {list(tensor.shape)};"
            " pass a sample so the demo knows how many fields to show"
        )
    if names is not None and len(names) != count:
        raise InputError(f"{len(names)} feature names given for {count} features")
    examples = None
    if array is not None and array.ndim == 2 and array.shape[1] == count:
        rows = np.asarray(array, dtype=np.float64)
        rows = rows[np.all(np.isfinite(rows), axis=1)][:MAX_EXAMPLES]
        examples = [[float(f"{v:.6g}") for v in row] for row in rows] or None
    return {"features": count, "feature_names": names, "examples": examples}


def _text_spec(tensor: TensorSpec, array: np.ndarray | None) -> dict[str, Any]:
    if tensor.dtype == "str":
        return {"encoding": "string", "max_length": None}
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
            examples[tensor.name] = np.vectorize(lambda v: float(f"{v:.6g}"))(row).tolist()
        elif row.dtype.kind in "iub":
            examples[tensor.name] = row.tolist()
    return examples


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
