"""Comparing a model's outputs with a reference's, and saying clearly when they disagree.

Used by the export (ONNX vs the original framework model) and usable by anything else that
compares two runs of a model on the same inputs (a quantized variant vs its fp32 parent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbdeploy._errors import ParityError
from nbdeploy._types import Parity

TINY = 1e-12


@dataclass(frozen=True)
class OutputDiff:
    """How one output differs: errors for float outputs, mismatches for discrete ones."""

    name: str
    max_abs_error: float
    max_rel_error: float
    passed: bool
    mismatches: int = 0
    size: int = 0
    discrete: bool = False


def compare(
    reference: Sequence[Any] | Mapping[str, Any],
    candidate: Sequence[Any] | Mapping[str, Any],
    *,
    atol: float,
    rtol: float,
    names: Sequence[str] | None = None,
    reference_name: str = "original",
) -> tuple[Parity, list[OutputDiff]]:
    """Compare every output of ``candidate`` with ``reference``.

    Float outputs pass when ``|candidate - reference| <= atol + rtol * |reference|`` everywhere
    (``np.allclose``, NaN on both sides counting as equal); the reported relative error is ``max|a - b| / max|reference|`` so it
    stays meaningful when the reference has zeros. Integer, bool and string outputs (labels)
    must match exactly. ``top1_agreement`` is the argmax agreement of 2-D float outputs with
    more than one column (the worst one when there are several).
    """
    ref_list, cand_list, out_names = _align(reference, candidate, names)
    diffs: list[OutputDiff] = []
    agreements: list[float] = []
    for name, ref, cand in zip(out_names, ref_list, cand_list, strict=True):
        ref, cand = _same_shape(name, ref, cand)
        diffs.append(_diff(name, ref, cand, atol=atol, rtol=rtol))
        if ref.dtype.kind == "f" and ref.ndim == 2 and ref.shape[1] > 1 and ref.shape[0] > 0:
            agreements.append(float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1))))
    samples = int(ref_list[0].shape[0]) if ref_list and ref_list[0].ndim else 1
    float_diffs = [d for d in diffs if not d.discrete]
    parity = Parity(
        max_abs_error=max((d.max_abs_error for d in float_diffs), default=0.0),
        max_rel_error=max((d.max_rel_error for d in float_diffs), default=0.0),
        atol=float(atol),
        rtol=float(rtol),
        passed=all(d.passed for d in diffs),
        top1_agreement=min(agreements) if agreements else None,
        samples=samples,
        reference=reference_name,
    )
    return parity, diffs


def ensure(parity: Parity, diffs: Sequence[OutputDiff], *, what: str = "the ONNX export") -> None:
    """Raise :class:`ParityError` (carrying ``.parity``) when ``parity`` did not pass."""
    if parity.passed:
        return
    problems = []
    for diff in diffs:
        if diff.passed:
            continue
        if diff.discrete:
            problems.append(f"output '{diff.name}': {diff.mismatches} of {diff.size} values differ")
        else:
            problems.append(
                f"output '{diff.name}': max abs error {diff.max_abs_error:.3g},"
                f" max rel error {diff.max_rel_error:.3g}"
            )
    error = ParityError(
        f"{what} disagrees with the {parity.reference} model beyond tolerance on"
        f" {parity.samples} sample(s): {'; '.join(problems)}"
        f" (allowed: |onnx - {parity.reference}| <= atol + rtol * |{parity.reference}|"
        f" with atol={parity.atol:g}, rtol={parity.rtol:g}). If this difference is acceptable"
        f" for your use, relax the tolerances, e.g. export(..., atol={_looser(parity.max_abs_error)},"
        f" rtol={_looser(parity.max_rel_error)})."
    )
    error.parity = parity  # type: ignore[attr-defined]
    raise error


def _looser(error: float) -> str:
    """A round tolerance comfortably above an observed error, for the error message."""
    if error <= 0 or not np.isfinite(error):
        return "1e-3"
    return f"{10 ** np.ceil(np.log10(error * 2)):g}"


def _align(
    reference: Sequence[Any] | Mapping[str, Any],
    candidate: Sequence[Any] | Mapping[str, Any],
    names: Sequence[str] | None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Pair outputs by name when both sides are named alike, else by position."""
    if isinstance(candidate, Mapping):
        cand_names = list(candidate)
        cand_list = [np.asarray(candidate[n]) for n in cand_names]
    else:
        cand_list = [np.asarray(v) for v in candidate]
        cand_names = list(names) if names else [f"output_{i}" for i in range(len(cand_list))]
    if isinstance(reference, Mapping):
        if set(reference) == set(cand_names):
            ref_list = [np.asarray(reference[n]) for n in cand_names]
        else:
            ref_list = [np.asarray(v) for v in reference.values()]
    else:
        ref_list = [np.asarray(v) for v in reference]
    if len(ref_list) != len(cand_list):
        raise ParityError(
            f"the {len(cand_list)} exported output(s) {cand_names} cannot be paired with the"
            f" {len(ref_list)} output(s) of the reference model"
        )
    return ref_list, cand_list, cand_names


def _same_shape(name: str, ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accept layouts that only differ by unit axes, e.g. sklearn's [n] vs ONNX's [n, 1]."""
    if ref.shape == cand.shape:
        return ref, cand
    if ref.size == cand.size and _squeezed(ref.shape) == _squeezed(cand.shape):
        return ref.reshape(cand.shape), cand
    raise ParityError(
        f"output '{name}' has shape {list(cand.shape)} in the export but"
        f" {list(ref.shape)} in the reference model"
    )


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _diff(name: str, ref: np.ndarray, cand: np.ndarray, *, atol: float, rtol: float) -> OutputDiff:
    if ref.dtype.kind in "fc" or cand.dtype.kind in "fc":
        ref64 = ref.astype(np.float64)
        cand64 = cand.astype(np.float64)
        if ref.size == 0:
            return OutputDiff(name, 0.0, 0.0, True, size=0)
        # NaN where both sides have NaN is agreement (a model answering a missing value
        # with NaN, say); NaN on one side only is an infinite error.
        both_nan = np.isnan(cand64) & np.isnan(ref64)
        abs_err = np.abs(cand64 - ref64)[~both_nan]
        if abs_err.size == 0:
            max_abs = 0.0
        else:
            max_abs = float(np.max(abs_err)) if np.all(np.isfinite(abs_err)) else float("inf")
        finite_ref = ref64[np.isfinite(ref64)]
        scale = max(float(np.max(np.abs(finite_ref))), TINY) if finite_ref.size else TINY
        passed = bool(np.allclose(cand64, ref64, atol=atol, rtol=rtol, equal_nan=True))
        return OutputDiff(name, max_abs, max_abs / scale, passed, size=int(ref.size))
    equal = _as_comparable(ref) == _as_comparable(cand)
    mismatches = int(equal.size - np.count_nonzero(equal))
    return OutputDiff(
        name, 0.0, 0.0, mismatches == 0, mismatches=mismatches, size=int(ref.size), discrete=True
    )


def _as_comparable(array: np.ndarray) -> np.ndarray:
    """Strings may come back as bytes or str objects; integers in any width."""
    if array.dtype.kind in "OSU":
        return np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()], dtype=object
        ).reshape(array.shape)
    return array.astype(np.int64) if array.dtype.kind in "iub" else array
