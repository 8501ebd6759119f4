"""Live per-version stats and reference/candidate comparisons over a fixed window.

Every buffer is a numpy array of ``WINDOW`` slots written round-robin, so memory and the cost
of a summary stay the same however long the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .model import SCORE_KINDS, ModelVersion

WINDOW = 1024
FLOAT_KINDS = "fc"

Kind = Literal["top1", "max_abs"]


class VersionStats:
    """The last ``WINDOW`` calls of one version: client requests and mirrored calls."""

    def __init__(self) -> None:
        self._latency_ms = np.zeros(WINDOW, dtype=np.float64)
        self._error = np.zeros(WINDOW, dtype=bool)
        self._mirrored = np.zeros(WINDOW, dtype=bool)
        self._count = 0
        self.dropped = 0

    def record(self, latency_ms: float, *, error: bool, mirrored: bool) -> None:
        slot = self._count % WINDOW
        self._latency_ms[slot] = latency_ms
        self._error[slot] = error
        self._mirrored[slot] = mirrored
        self._count += 1

    @property
    def calls(self) -> int:
        """Requests and mirrored calls in the window."""
        return min(self._count, WINDOW)

    @property
    def errors(self) -> int:
        return int(self._error[: self.calls].sum())

    def p99_ms(self) -> float | None:
        return self._percentile(99)

    def _percentile(self, q: float) -> float | None:
        filled = slice(0, self.calls)
        ok = self._latency_ms[filled][~self._error[filled]]
        return round(float(np.percentile(ok, q)), 3) if ok.size else None

    def to_json(self) -> dict[str, Any]:
        mirrored = int(self._mirrored[: self.calls].sum())
        return {
            "requests": self.calls - mirrored,
            "errors": self.errors,
            "mirrored": mirrored,
            "dropped": self.dropped,
            "p50_ms": self._percentile(50),
            "p99_ms": self._percentile(99),
        }


@dataclass(frozen=True)
class Comparison:
    """How two versions' answers are compared: which output of each, and by what rule.

    ``rule`` is ``equal`` (labels or non-float outputs: the whole row must match), ``top1``
    (scores: the argmax of each row must match) or ``max_abs`` (values: largest difference).
    """

    reference_output: str
    candidate_output: str
    rule: Literal["equal", "top1", "max_abs"]

    @property
    def kind(self) -> Kind:
        return "max_abs" if self.rule == "max_abs" else "top1"

    @classmethod
    def plan(cls, reference: ModelVersion, candidate: ModelVersion) -> Comparison:
        """Compare the reference's first output with the candidate's output of the same name,
        else with the candidate's first output."""
        first = reference.outputs[0]
        names = [info.name for info in candidate.outputs]
        other = first.name if first.name in names else names[0]
        meaning = reference.output_meanings.get(first.name, {}).get("kind")
        if meaning == "label" or first.datatype not in ("FP16", "FP32", "FP64"):
            rule: Literal["equal", "top1", "max_abs"] = "equal"
        elif meaning in SCORE_KINDS or (len(first.shape) == 2 and first.shape[1] != 1):
            rule = "top1"
        else:
            rule = "max_abs"
        return cls(first.name, other, rule)

    def rows(
        self, reference: np.ndarray, candidate: np.ndarray
    ) -> tuple[int, int | None, float | None]:
        """Rows compared, rows that agree (None for max_abs) and the largest difference
        (None unless both are floats); raises ValueError when the shapes do not match."""
        if reference.shape != candidate.shape:
            raise ValueError(f"shape {list(candidate.shape)} != {list(reference.shape)}")
        rows = int(reference.shape[0]) if reference.ndim else 1
        both_float = reference.dtype.kind in FLOAT_KINDS and candidate.dtype.kind in FLOAT_KINDS
        diff = None
        if both_float and reference.size:
            delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
            diff = float(np.nanmax(delta)) if not np.isnan(delta).all() else None
        if self.rule == "max_abs":
            return rows, None, diff
        if self.rule == "top1" and reference.ndim == 2 and reference.shape[1] > 1:
            same = np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)
        else:
            flat_ref = reference.reshape(rows, -1)
            same = (flat_ref == candidate.reshape(rows, -1)).all(axis=1)
        return rows, int(np.count_nonzero(same)), diff


class PairStats:
    """The last ``WINDOW`` compared requests of one candidate against the stable reference."""

    def __init__(self, reference: int, candidate: int, comparison: Comparison) -> None:
        self.reference = reference
        self.candidate = candidate
        self.comparison = comparison
        self._rows = np.zeros(WINDOW, dtype=np.int64)
        self._agree = np.zeros(WINDOW, dtype=np.int64)
        self._diff = np.full(WINDOW, np.nan, dtype=np.float64)
        self._count = 0
        self.candidate_errors = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Compare one request's answers; an answer of the wrong shape is a candidate error."""
        try:
            rows, agree, diff = self.comparison.rows(reference, candidate)
        except ValueError:
            self.candidate_errors += 1
            return
        slot = self._count % WINDOW
        self._rows[slot] = rows
        self._agree[slot] = rows if agree is None else agree
        self._diff[slot] = np.nan if diff is None else diff
        self._count += 1

    @property
    def compared(self) -> int:
        return int(self._rows.sum())

    def agreement(self) -> float | None:
        compared = self.compared
        if self.comparison.kind != "top1" or not compared:
            return None
        return float(self._agree.sum()) / compared

    def to_json(self) -> dict[str, Any]:
        agreement = self.agreement()
        filled = self._diff[: min(self._count, WINDOW)]
        known = filled[~np.isnan(filled)]
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "kind": self.comparison.kind,
            "compared": self.compared,
            "agreement": None if agreement is None else round(agreement, 6),
            "max_abs_diff": float(known.max()) if known.size else None,
            "candidate_errors": self.candidate_errors,
        }
