"""Versions of one name side by side: how often they agree, how fast they answer, how well they score.

Two sources feed the same report. ``live_report`` reads the server's own window
(``GET /nbdeploy/stats``): real traffic, latency per request, agreement from mirrored requests.
``offline_report`` sends the user's ``X`` (and scores against ``y``) through every version in the
same batches, interleaved batch by batch, so noise on a shared machine hits all versions alike.
The reference is always the stable version: that is the one traffic falls back to.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from nbdeploy import _format
from nbdeploy._errors import InputError

KINDS = ("top1", "max_abs")
"""``top1``: classifiers, rows agree when their top class (or label) is the same;
``max_abs``: everything else, the largest absolute difference over the rows."""

METRICS = {"top1": "accuracy", "max_abs": "rmse"}
"""The score each kind of output is judged by against ``y``."""

_LEGEND: dict[str, Any] = {
    "loc": "upper center",
    "bbox_to_anchor": (0.5, -0.2),
    "ncol": 2,
    "fontsize": "small",
    "frameon": False,
}
"""Legends sit under their panel, where they never hide a bar."""

PredictVersion = Callable[[int, Any], tuple[Any, float]]
"""``(version, rows) -> (first output array, seconds)``: one inference call on one version."""


@dataclass
class VersionComparison:
    """One version's row in a comparison; latency in ms, agreement against the reference."""

    version: int
    role: str
    weight: int
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    agreement: float | None
    max_abs_diff: float | None
    compared: int
    metric: str | None
    score: float | None
    mirrored: int = 0
    note: str | None = None
    """The first failure's reason, when a version failed (offline only)."""

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in asdict(self).items()}


@dataclass
class CompareReport:
    """Every version of ``name`` against the ``reference`` (stable) version."""

    name: str
    source: Literal["live", "offline"]
    reference: int
    kind: str
    versions: list[VersionComparison]
    generated_at: str = field(default_factory=lambda: _now())
    rows: int | None = None
    """Offline: rows of ``X`` sent to every version."""
    batch_size: int | None = None
    """Offline: rows per call; latency is per call, so per batch of this many rows."""
    since: str | None = None
    """Live: when the server's window started."""
    generation: int | None = None
    """Live: the routing generation the stats belong to."""

    @property
    def latency(self) -> str:
        """What one latency figure measures, in words (live: one request; offline: one batch)."""
        if self.source == "offline":
            return f"per batch of {self.batch_size} rows"
        return "per request"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "reference": self.reference,
            "kind": self.kind,
            "latency": self.latency,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "since": self.since,
            "generation": self.generation,
            "generated_at": self.generated_at,
            "summary": self.summary(),
            "versions": [v.to_dict() for v in self.versions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def get(self, version: int) -> VersionComparison:
        """The row of ``version``; KeyError when it is not in the report."""
        for row in self.versions:
            if row.version == version:
                return row
        raise KeyError(version)

    def summary(self) -> str:
        """One sentence for a magic or a CLI to print under the table."""
        reference = self._reference_row()
        errors = sum(v.errors for v in self.versions)
        error_text = f"{errors:,} error" + ("" if errors == 1 else "s")
        candidates = [v for v in self.versions if v.version != self.reference]
        if reference is None or not candidates:
            p99 = f"p99 {_ms_text(reference.p99_ms)}" if reference is not None else ""
            return "; ".join(
                filter(None, [f"v{self.reference} is the only version", p99, error_text])
            )
        clauses = [self._candidate_clause(c, reference) for c in candidates]
        return "; ".join([*clauses, error_text])

    def _candidate_clause(self, row: VersionComparison, reference: VersionComparison) -> str:
        v, ref = f"v{row.version}", f"v{reference.version}"
        rows = f"{row.compared:,} row" + ("" if row.compared == 1 else "s")
        if row.compared == 0:
            head = f"{v} has not been compared with {ref} yet"
        elif self.kind == "top1" and row.agreement is not None:
            head = f"{v} agrees with {ref} on {row.agreement:.1%} of {rows}"
        elif row.max_abs_diff is not None:
            head = f"{v} differs from {ref} by at most {row.max_abs_diff:.3g} over {rows}"
        else:
            head = f"{v} compared with {ref} on {rows}"
        parts = [head, f"p99 {_ms_text(row.p99_ms)} vs {_ms_text(reference.p99_ms)}"]
        if row.metric is not None and (row.score is not None or reference.score is not None):
            parts.append(
                f"{row.metric} {_score_text(row.metric, row.score)}"
                f" vs {_score_text(row.metric, reference.score)}"
            )
        return "; ".join(parts)

    def _reference_row(self) -> VersionComparison | None:
        return next((v for v in self.versions if v.version == self.reference), None)

    def table(self) -> str:
        """An aligned plain-text table, followed by what the latency is measured over."""
        headers, rows, right = self._rows()
        return _format.text_table(headers, rows, right=right) + f"\nlatency {self.latency}"

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()

    def _rows(self) -> tuple[list[str], list[list[str]], list[int]]:
        live = self.source == "live"
        metric = next((v.metric for v in self.versions if v.metric is not None), None)
        agreement_header = "agreement" if self.kind == "top1" else "max |diff|"
        headers = ["version", "role", "weight", "requests" if live else "rows", "errors"]
        headers += ["mirrored"] if live else []
        headers += ["p50 ms", "p99 ms", agreement_header, "compared"]
        headers += [metric] if metric else []
        rows = []
        for v in self.versions:
            row = [f"v{v.version}", v.role, f"{v.weight}%", f"{v.requests:,}", f"{v.errors:,}"]
            row += [f"{v.mirrored:,}"] if live else []
            row += [_format.ms(v.p50_ms), _format.ms(v.p99_ms)]
            if v.version == self.reference:
                row += ["reference", ""]
            else:
                row += [self._agreement_cell(v), f"{v.compared:,}"]
            row += [_score_text(metric, v.score) if v.score is not None else ""] if metric else []
            rows.append(row)
        return headers, rows, list(range(2, len(headers)))

    def _agreement_cell(self, row: VersionComparison) -> str:
        if self.kind == "top1":
            return f"{row.agreement:.1%}" if row.agreement is not None else ""
        return f"{row.max_abs_diff:.3g}" if row.max_abs_diff is not None else ""

    def plot(self) -> Any:
        """A matplotlib Figure: p50/p99 latency per version, and agreement (plus score) per version.

        Built on ``matplotlib.figure.Figure`` directly: no pyplot global state, any backend.
        """
        from matplotlib.figure import Figure

        labels = [f"v{v.version}\n{v.role}" for v in self.versions]
        x = np.arange(len(self.versions))
        width = 0.38
        fig = Figure(figsize=(max(7.0, 1.6 * len(self.versions) + 4.0), 3.2), layout="constrained")
        latency_ax, agreement_ax = fig.subplots(1, 2)

        p50 = np.array([_nan(v.p50_ms) for v in self.versions], dtype=float)
        p99 = np.array([_nan(v.p99_ms) for v in self.versions], dtype=float)
        latency_ax.bar(x - width / 2, np.nan_to_num(p50), width, color="#4c72b0", label="p50")
        latency_ax.bar(x + width / 2, np.nan_to_num(p99), width, color="#dd8452", label="p99")
        latency_ax.set_xticks(x, labels, fontsize="small")
        latency_ax.set_ylabel(f"latency (ms, {self.latency})", fontsize="small")
        latency_ax.set_title("latency", fontsize="medium")
        latency_ax.legend(**_LEGEND)

        top1 = self.kind == "top1"
        agree = [
            _nan(v.agreement if top1 else v.max_abs_diff) if v.version != self.reference else np.nan
            for v in self.versions
        ]
        scores = [_nan(v.score) for v in self.versions]
        has_score = any(not math.isnan(s) for s in scores)
        shift = width / 2 if has_score else 0.0
        agreement_ax.bar(
            x - shift,
            np.nan_to_num(agree),
            width,
            color="#55a868",
            label=f"agreement with v{self.reference}"
            if top1
            else f"max |diff| vs v{self.reference}",
        )
        if has_score:
            metric = next(v.metric for v in self.versions if v.metric is not None)
            agreement_ax.bar(x + shift, np.nan_to_num(scores), width, color="#8172b3", label=metric)
        for i, v in enumerate(self.versions):
            if v.version == self.reference:
                agreement_ax.text(
                    i - shift,
                    0.03,
                    "reference",
                    transform=agreement_ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                    rotation=90,
                )
        if top1:
            agreement_ax.set_ylim(0, 1.05)
            agreement_ax.yaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
        agreement_ax.set_xticks(x, labels, fontsize="small")
        agreement_ax.set_title("agreement" + (" and score" if has_score else ""), fontsize="medium")
        agreement_ax.legend(**_LEGEND)
        fig.suptitle(f"{self.name}: {self.source} comparison", fontsize="small")
        return fig

    def _repr_html_(self) -> str:
        headers, rows, _ = self._rows()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        caption = html.escape(f"{self.summary()} (latency {self.latency})")
        table = (
            f"<table><caption style='caption-side:bottom'>{caption}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
        return table + self._plot_html()

    def _plot_html(self) -> str:
        """The plot as an embedded PNG; nothing when matplotlib is not installed."""
        try:
            figure = self.plot()
        except ImportError:
            return ""
        return "<br>" + _format.figure_img(figure, f"{self.name} versions compared")


# --------------------------------------------------------------------------- live


def live_report(name: str, stats: Mapping[str, Any]) -> CompareReport:
    """The report for the server's own window, from the JSON of ``GET /nbdeploy/stats``."""
    raw_versions = stats.get("versions") or {}
    if not raw_versions:
        raise InputError(f"the server for {name!r} reports no loaded version to compare")
    pairs = list(stats.get("pairs") or [])
    by_candidate = {int(p["candidate"]): p for p in pairs}
    roles = {int(key): str(value.get("role", "idle")) for key, value in raw_versions.items()}
    stable = [v for v, role in roles.items() if role == "stable"]
    if stable:
        reference = stable[0]
    elif pairs:
        reference = int(pairs[0]["reference"])
    else:
        reference = min(roles)
    rows = []
    for key, value in raw_versions.items():
        version = int(key)
        pair = by_candidate.get(version) if version != reference else None
        rows.append(
            VersionComparison(
                version=version,
                role=roles[version],
                weight=int(value.get("weight") or 0),
                requests=int(value.get("requests") or 0),
                errors=int(value.get("errors") or 0),
                p50_ms=_optional_float(value.get("p50_ms")),
                p99_ms=_optional_float(value.get("p99_ms")),
                agreement=_optional_float(pair.get("agreement")) if pair else None,
                max_abs_diff=_optional_float(pair.get("max_abs_diff")) if pair else None,
                compared=int(pair.get("compared") or 0) if pair else 0,
                metric=None,
                score=None,
                mirrored=int(value.get("mirrored") or 0),
            )
        )
    kind = str(pairs[0].get("kind") or "top1") if pairs else "top1"
    generation = stats.get("generation")
    return CompareReport(
        name=name,
        source="live",
        reference=reference,
        kind=kind,
        versions=_ordered(rows, reference),
        since=stats.get("since"),
        generation=int(generation) if generation is not None else None,
    )


# --------------------------------------------------------------------------- offline


@dataclass
class _Tally:
    """What one version produced over the batches: outputs by batch, latencies, failures."""

    outputs: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    note: str | None = None


def offline_report(
    name: str,
    predict_version: PredictVersion,
    versions: Sequence[tuple[int, str, int]],
    X: Any,
    y: Any = None,
    *,
    kind: str = "top1",
    batch_size: int = 64,
    labels: Sequence[str] | None = None,
) -> CompareReport:
    """Send ``X`` through every version in batches and compare them on the same rows.

    ``versions`` holds ``(version, role, weight)``; the one with role ``stable`` is the reference.
    A call that raises counts one error for its version and its rows are left out of the
    agreement and the score. ``y`` (class indices or label strings for ``top1``, numbers for
    ``max_abs``) adds accuracy or rmse; ``labels`` maps class indices to label strings.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
    if not versions:
        raise InputError(f"{name!r} has no version to compare")
    n = _length(X, "X")
    if n == 0:
        raise InputError("X is empty: give at least one row to compare the versions on")
    truth = None
    if y is not None:
        truth = _as_array(y)
        if len(truth) != n:
            raise InputError(f"X has {n:,} rows but y has {len(truth):,}: they must match")
    plan = [(int(v), str(role), int(weight)) for v, role, weight in versions]
    reference = next((v for v, role, _ in plan if role == "stable"), plan[0][0])

    starts = list(range(0, n, batch_size))
    tallies = {v: _Tally() for v, _, _ in plan}
    for start in starts:
        rows = _take(X, start, min(start + batch_size, n))
        expected = min(batch_size, n - start)
        for version, _, _ in plan:
            tally = tallies[version]
            try:
                output, seconds = predict_version(version, rows)
                array = _as_array(output)
                if len(array) != expected:
                    raise InputError(f"answered {len(array)} rows for a batch of {expected}")
            except Exception as exc:
                tally.errors += 1
                tally.note = tally.note or _format.reason(exc, with_type=True)
                continue
            tally.outputs[start] = array
            tally.seconds.append(float(seconds))

    metric = METRICS[kind] if truth is not None else None
    ref_tally = tallies[reference]
    result = []
    for version, role, weight in plan:
        tally = tallies[version]
        agreement = max_abs = None
        compared = 0
        if version != reference:
            agreement, max_abs, compared = _agreement(kind, ref_tally.outputs, tally.outputs)
        score = None
        if truth is not None and tally.outputs:
            score = _score(kind, tally.outputs, truth, batch_size, labels)
        p50, p99 = _percentiles(tally.seconds)
        result.append(
            VersionComparison(
                version=version,
                role=role,
                weight=weight,
                requests=n,
                errors=tally.errors,
                p50_ms=p50,
                p99_ms=p99,
                agreement=agreement,
                max_abs_diff=max_abs,
                compared=compared,
                metric=metric,
                score=score,
                note=tally.note,
            )
        )
    return CompareReport(
        name=name,
        source="offline",
        reference=reference,
        kind=kind,
        versions=_ordered(result, reference),
        rows=n,
        batch_size=batch_size,
    )


def _agreement(
    kind: str, reference: Mapping[int, np.ndarray], candidate: Mapping[int, np.ndarray]
) -> tuple[float | None, float | None, int]:
    """(agreement, max abs difference, rows compared) over the batches both versions answered."""
    shared = [start for start in candidate if start in reference]
    if not shared:
        return None, None, 0
    if kind == "top1":
        same = np.concatenate([_rows_equal(top1(reference[s]), top1(candidate[s])) for s in shared])
        return float(same.mean()), None, int(same.size)
    diffs, compared = [], 0
    for start in shared:
        ref, cand = _numeric(reference[start]), _numeric(candidate[start])
        compared += len(ref)
        if ref.shape != cand.shape:
            raise InputError(
                f"the versions' outputs have different shapes ({ref.shape} and {cand.shape}):"
                " they cannot be compared value by value"
            )
        diffs.append(float(np.max(np.abs(ref - cand))) if ref.size else 0.0)
    return None, max(diffs), compared


def top1(output: Any) -> np.ndarray:
    """Each row's prediction: the argmax of float scores with several columns, else the value
    itself (labels, class indices, strings; bytes decoded to str)."""
    array = _as_array(output)
    if array.dtype.kind == "f" and array.ndim >= 2 and int(np.prod(array.shape[1:])) > 1:
        return array.reshape(len(array), -1).argmax(axis=1)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    return _decoded(array)


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        return np.zeros(len(a), dtype=bool)
    equal = np.asarray(a == b)
    return equal.reshape(len(a), -1).all(axis=1) if equal.ndim > 1 else equal


def _score(
    kind: str,
    outputs: Mapping[int, np.ndarray],
    truth: np.ndarray,
    batch_size: int,
    labels: Sequence[str] | None,
) -> float:
    """Accuracy (top1) or rmse (max_abs) of one version over the rows it answered."""
    starts = sorted(outputs)
    expected = np.concatenate([truth[s : s + batch_size] for s in starts])
    if kind == "max_abs":
        predicted = np.concatenate([_numeric(outputs[s]) for s in starts])
        target = _numeric(expected)
        flat_p, flat_t = predicted.reshape(len(predicted), -1), target.reshape(len(target), -1)
        if flat_p.shape != flat_t.shape:
            raise InputError(
                f"y has shape {expected.shape} per row set but the model answers {predicted.shape}:"
                " rmse needs one target value per output value"
            )
        return float(np.sqrt(np.mean((flat_p - flat_t) ** 2)))
    predicted = np.concatenate([top1(outputs[s]) for s in starts])
    if expected.ndim == 2 and expected.shape[1] == 1:
        expected = expected[:, 0]
    return float(np.mean(_same_classes(predicted, _decoded(expected), labels)))


def _same_classes(
    predicted: np.ndarray, expected: np.ndarray, labels: Sequence[str] | None
) -> np.ndarray:
    """Row-wise equality of predictions and ``y``, mapping indices to labels when one side
    holds strings and the other class indices."""
    pred_text, true_text = _is_text(predicted), _is_text(expected)
    if pred_text == true_text:
        return _rows_equal(predicted, expected)
    if not labels:
        side = "y holds label strings" if true_text else "the model answers label strings"
        raise InputError(
            f"{side} but the other side holds class indices, and the model has no labels"
            " to map one to the other: pass y as class indices"
        )
    names = [str(label) for label in labels]
    indices, texts = (expected, predicted) if pred_text else (predicted, expected)
    mapped = np.array(
        [names[int(i)] if 0 <= int(i) < len(names) else None for i in indices.ravel()],
        dtype=object,
    )
    return np.asarray(mapped == texts.astype(object).ravel(), dtype=bool)


# --------------------------------------------------------------------------- helpers


def _ordered(rows: list[VersionComparison], reference: int) -> list[VersionComparison]:
    """The reference first, then the others by version number."""
    return sorted(rows, key=lambda v: (v.version != reference, v.version))


def _length(data: Any, what: str) -> int:
    if isinstance(data, Mapping):
        lengths = {key: len(value) for key, value in data.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"the columns of {what} have different lengths: {lengths}")
        return next(iter(lengths.values()), 0)
    try:
        return len(data)
    except TypeError as exc:
        raise InputError(f"{what} must hold rows (an array, a list or a DataFrame)") from exc


def _take(data: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an array, a list, a DataFrame or a dict of columns."""
    if isinstance(data, Mapping):
        return {key: value[start:stop] for key, value in data.items()}
    if hasattr(data, "iloc"):
        return data.iloc[start:stop]
    return data[start:stop]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    return array


def _decoded(array: np.ndarray) -> np.ndarray:
    """Bytes become str, so b"cat" from one version equals "cat" from another or from y."""
    if array.dtype.kind == "S" or (
        array.dtype.kind == "O" and array.size and isinstance(array.flat[0], bytes)
    ):
        return np.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.ravel()],
            dtype=object,
        ).reshape(array.shape)
    return array


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "USO"


def _numeric(array: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            "max_abs compares numbers, but an output holds text: use kind='top1' for labels"
        ) from exc


def _percentiles(seconds: Sequence[float]) -> tuple[float | None, float | None]:
    if not seconds:
        return None, None
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _ms_text(value: float | None) -> str:
    return f"{_format.ms(value)} ms" if value is not None else "n/a"


def _score_text(metric: str | None, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" if metric == "accuracy" else f"{value:.4g}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
