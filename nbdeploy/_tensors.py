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


def sample_parts(sample: Any) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Split a sample into positional arrays, or named arrays when it is a mapping."""
    if isinstance(sample, Mapping):
        return {str(k): to_numpy(v) for k, v in sample.items()}
    if isinstance(sample, tuple) or (
        isinstance(sample, list) and sample and not _is_scalar_list(sample)
    ):
        return [to_numpy(v) for v in sample]
    return [to_numpy(sample)]


def _is_scalar_list(values: Sequence[Any]) -> bool:
    """A plain (possibly nested) list of numbers is one tensor, not several inputs."""
    first = values[0]
    return isinstance(first, int | float | bool | np.number | list) and not hasattr(first, "shape")


def as_feeds(signature: Signature, sample: Any, *, cast: bool = True) -> dict[str, np.ndarray]:
    """Map a sample onto the signature's inputs, casting to the declared dtypes.

    Raises InputError naming the expected inputs when the sample does not fit.
    """
    parts = sample_parts(sample)
    expected = signature.input_names
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
        if spec.dtype == "str":
            feeds[spec.name] = array.astype(object)
            continue
        if cast and array.dtype.name != spec.dtype:
            array = array.astype(spec.dtype)
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


def check_finite(parts: list[np.ndarray] | dict[str, np.ndarray]) -> None:
    """Refuse samples with NaN or infinity: a parity check on them would prove nothing."""
    items = parts.items() if isinstance(parts, dict) else enumerate(parts)
    for key, array in items:
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InputError(
                f"sample input {key!r} contains NaN or infinity; pass finite values"
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
