"""Data profiles for drift: what the inputs and outputs of a model version looked like when it
was checked (the reference, recorded at deploy time), and what they look like now (the live
window the server keeps), compared by the population stability index.

One implementation serves both sides: nbdeploy builds the reference with these functions, and
the server feeds the same features into a :class:`LiveProfile`, so the two always bin alike.

A profile is plain JSON (``metadata["profile"]`` in ``nbdeploy.json``)::

    {"schema": 1, "rows": 500, "window": 1000, "features": [
        {"feature": "input[3]", "kind": "input", "tensor": "input", "extract": "column",
         "index": 3, "type": "numeric", "edges": [...], "expected": [...]},
        {"feature": "color", "kind": "input", "tensor": "color", "extract": "value",
         "type": "categorical", "categories": ["red", "blue"], "expected": [.6, .3, .1]},
        ...]}

Extractions: ``column`` (one column of a ``[rows, features]`` tensor), ``value`` (a
``[rows, 1]`` or ``[rows]`` tensor), ``row_mean`` / ``row_std`` (summary statistics of each
row of an image-like tensor), ``text_length`` / ``text_words`` (of each string), ``argmax``
(the class a score output picks). Categorical features keep their most frequent categories
and one last bucket for every other value.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

SCHEMA = 1
BINS = 10
MAX_COLUMNS = 64
TOP_CATEGORIES = 20
WINDOW = 1000
EPSILON = 1e-4
OTHER = "(other)"


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` proportions against ``expected`` ones: the sum
    of ``(a - e) * ln(a / e)`` over bins, empty bins smoothed by ``EPSILON``. Under 0.1 is
    usually read as stable, 0.1-0.2 as a moderate shift, above 0.2 as a significant one."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def extract(feature: Mapping[str, Any], tensor: np.ndarray) -> np.ndarray:
    """One value per row of ``tensor`` (a model input or output) for ``feature``."""
    how = feature["extract"]
    rows = tensor.shape[0] if tensor.ndim else 1
    if how == "column":
        return tensor.reshape(rows, -1)[:, int(feature["index"])]
    if how == "value":
        return tensor.reshape(rows, -1)[:, 0]
    if how in ("row_mean", "row_std"):
        flat = tensor.reshape(rows, -1).astype(np.float64, copy=False)
        return flat.mean(axis=1) if how == "row_mean" else flat.std(axis=1)
    if how in ("text_length", "text_words"):
        texts = [_text(value) for value in tensor.reshape(rows, -1)[:, 0]]
        if how == "text_length":
            return np.array([len(text) for text in texts], dtype=np.float64)
        return np.array([len(text.split()) for text in texts], dtype=np.float64)
    if how == "argmax":
        return tensor.reshape(rows, -1).argmax(axis=1)
    raise ValueError(f"unknown extraction {how!r}")


def bin_indices(feature: Mapping[str, Any], values: np.ndarray) -> np.ndarray:
    """The bin of each value: by the reference's quantile edges for a numeric feature, by
    category (the last bin: any other) for a categorical one."""
    if feature["type"] == "numeric":
        numbers = values.astype(np.float64, copy=False)
        bins = np.searchsorted(np.asarray(feature["edges"], dtype=np.float64), numbers, "right")
        return np.where(np.isnan(numbers), len(feature["edges"]), bins).astype(np.int16)
    lookup = {category: i for i, category in enumerate(feature["categories"])}
    other = len(feature["categories"])
    return np.array([lookup.get(_key(v), other) for v in values], dtype=np.int16)


def bin_count(feature: Mapping[str, Any]) -> int:
    return len(feature["expected"])


def numeric_feature(base: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    """``base`` with quantile edges from ``values`` (fewer bins for few rows) and the share
    of the values in each bin."""
    numbers = values.astype(np.float64)
    numbers = numbers[~np.isnan(numbers)]
    bins = max(2, min(BINS, len(numbers) // 10)) if len(numbers) else 2
    if len(numbers):
        inner = np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1])
        edges = [float(edge) for edge in np.unique(inner)]
    else:
        edges = [0.0]
    feature = {**base, "type": "numeric", "edges": edges}
    counts = np.bincount(bin_indices(feature, numbers), minlength=len(edges) + 1)
    feature["expected"] = _shares(counts)
    return feature


def categorical_feature(base: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    """``base`` with the most frequent categories of ``values`` and each one's share."""
    keys = [_key(value) for value in values]
    found: dict[str, int] = {}
    for key in keys:
        found[key] = found.get(key, 0) + 1
    categories = sorted(found, key=lambda k: (-found[k], k))[:TOP_CATEGORIES]
    feature = {**base, "type": "categorical", "categories": categories}
    counts = np.bincount(bin_indices(feature, values), minlength=len(categories) + 1)
    feature["expected"] = _shares(counts)
    return feature


def _shares(counts: np.ndarray) -> list[float]:
    total = int(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _key(value: Any) -> str:
    """A category's name: strings as themselves, numbers without trailing ``.0``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


class LiveProfile:
    """The same features over the last ``window`` rows a version answered: a fixed ring of
    bin indices and running counts, so a request costs its own rows and nothing grows.

    Rows are binned together, many requests at a time if the caller joins them: the numeric
    columns of one tensor in one comparison against all their edges, and every feature's
    counts in one ``bincount``. ``observe`` runs on the server's monitoring thread while
    ``scores`` answers a scrape on the event loop: a lock keeps one update's counts together.
    """

    def __init__(self, profile: Mapping[str, Any], window: int | None = None) -> None:
        self.features = list(profile["features"])
        self.window = int(window or profile.get("window") or WINDOW)
        self.ring = np.zeros((self.window, len(self.features)), dtype=np.int16)
        sizes = [bin_count(f) for f in self.features]
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._flat = np.zeros(int(sum(sizes)), dtype=np.int64)
        self.counts = [self._flat[o : o + n] for o, n in zip(self._offsets, sizes, strict=True)]
        self._columns = _column_groups(self.features)
        self.filled = 0
        self.next = 0
        self._lock = threading.Lock()

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Add one request's rows (inputs as decoded, outputs as computed), or the rows of
        several requests joined along axis 0."""
        block = self.bins(inputs, outputs)
        if block is None:
            return
        with self._lock:
            self._add(block[-self.window :])

    def bins(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        """``[rows, features]`` bin indices, or None when a profiled tensor is missing (an
        output the client did not ask for) or there are no rows."""
        tensors: dict[tuple[str, str], np.ndarray] = {}
        for feature in self.features:
            key = (feature["kind"], feature["tensor"])
            if key not in tensors:
                source = inputs if feature["kind"] == "input" else outputs
                tensor = source.get(feature["tensor"])
                if tensor is None:
                    return None
                tensors[key] = np.asarray(tensor)
        rows = min((t.shape[0] if t.ndim else 1) for t in tensors.values()) if tensors else 0
        if not rows:
            return None
        block = np.empty((rows, len(self.features)), dtype=np.int16)
        done = set()
        for key, (indices, columns, edges, widths) in self._columns.items():
            tensor = tensors[key]
            values = tensor.reshape(tensor.shape[0], -1)[:rows, columns].astype(np.float64)
            found = (values[:, :, None] >= edges[None, :, :]).sum(axis=2)
            found = np.minimum(found, widths)  # +inf passes the padding; it belongs at the top
            block[:, indices] = np.where(np.isnan(values), widths, found)
            done.update(indices)
        for i, feature in enumerate(self.features):
            if i not in done:
                tensor = tensors[(feature["kind"], feature["tensor"])]
                block[:, i] = bin_indices(feature, extract(feature, tensor))[:rows]
        np.clip(block, 0, (self._sizes - 1).astype(np.int16), out=block)
        return block

    def _add(self, block: np.ndarray) -> None:
        positions = (self.next + np.arange(len(block))) % self.window
        # Slots already holding a row (all of them once the window is full) lose it first.
        held = positions < self.filled if self.filled < self.window else slice(None)
        evicted = self.ring[positions[held]]
        self.ring[positions] = block
        size = len(self._flat)
        self._flat += np.bincount((block + self._offsets).ravel(), minlength=size)
        if len(evicted):
            self._flat -= np.bincount((evicted + self._offsets).ravel(), minlength=size)
        self.filled = min(self.window, self.filled + len(block))
        self.next = int((self.next + len(block)) % self.window)

    @property
    def rows(self) -> int:
        """Rows in the live window."""
        return self.filled

    def scores(self) -> list[dict[str, Any]]:
        """Per feature: its PSI against the reference (None before any row) and live counts."""
        with self._lock:
            counted = [counts.copy() for counts in self.counts]
        found = []
        for feature, counts in zip(self.features, counted, strict=True):
            total = int(counts.sum())
            score = psi(feature["expected"], counts / total) if total else None
            found.append(
                {
                    "feature": feature["feature"],
                    "kind": feature["kind"],
                    "psi": score,
                    "counts": counts.tolist(),
                }
            )
        return found


def _column_groups(
    features: list[dict[str, Any]],
) -> dict[tuple[str, str], tuple[list[int], list[int], np.ndarray, np.ndarray]]:
    """Numeric ``column`` features grouped by tensor: their positions, their columns, their
    edges padded with +inf into one matrix, and their edge counts (what
    ``np.searchsorted(edges, v, "right")`` counts: edges <= v)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, feature in enumerate(features):
        if feature["extract"] == "column" and feature["type"] == "numeric":
            groups.setdefault((feature["kind"], feature["tensor"]), []).append(i)
    found = {}
    for key, indices in groups.items():
        width = max(len(features[i]["edges"]) for i in indices)
        edges = np.full((len(indices), width), np.inf)
        for row, i in enumerate(indices):
            edges[row, : len(features[i]["edges"])] = features[i]["edges"]
        widths = np.array([len(features[i]["edges"]) for i in indices])
        columns = [int(features[i]["index"]) for i in indices]
        found[key] = (indices, columns, edges, widths)
    return found
