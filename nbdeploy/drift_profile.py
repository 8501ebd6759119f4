"""Drift: the reference profile recorded at deploy time, and the report comparing it with
what a deployment's server saw in its live window.

The profile's features, bins and the population stability index come from
:mod:`nbdeploy.serve.profile`, the very code the server runs, so both sides bin alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nbdeploy import _format
from nbdeploy.serve import profile as shared

DRIFT_THRESHOLD = 0.2
"""A feature whose PSI reaches this has drifted (0.1-0.2: worth watching)."""
WATCH_THRESHOLD = 0.1
MIN_ROWS = 50
"""Below this many reference rows the profile is kept but said to be weak."""


def reference_profile(artifact: Any, *data: Any) -> dict[str, Any] | None:
    """The profile of ``data`` (the sample, the calibration data: their rows together) as
    ``artifact`` sees it: its inputs feature by feature, and its first output, computed by
    running the model. None when there is no data, or nothing in it can be profiled."""
    from nbdeploy._tensors import as_feeds

    parts = []
    for part in data:
        if part is None:
            continue
        try:
            parts.append(as_feeds(artifact.signature, part))
        except Exception:  # noqa: BLE001 - a profile is a bonus: data it cannot read gets none
            continue
    if not parts:
        return None
    try:
        feeds = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    except ValueError:  # parts shaped differently (e.g. images of two sizes): the largest
        feeds = max(parts, key=lambda part: len(next(iter(part.values()))))
    text = artifact.input_kind == "text" or "tokenization" in artifact.metadata
    features = []
    for spec in artifact.signature.inputs:
        tensor = feeds.get(spec.name)
        if tensor is not None and tensor.ndim:
            features += _input_features(spec.name, tensor, text=text)
    features += _output_features(artifact, feeds)
    if not features:
        return None
    rows = int(next(iter(feeds.values())).shape[0])
    return {"schema": shared.SCHEMA, "rows": rows, "window": shared.WINDOW, "features": features}


def _input_features(name: str, tensor: np.ndarray, *, text: bool) -> list[dict[str, Any]]:
    base = {"kind": "input", "tensor": name}
    rows = tensor.shape[0]
    width = int(np.prod(tensor.shape[1:])) if tensor.ndim > 1 else 1
    if tensor.dtype.kind in "OUS":
        if text:
            return [
                shared.numeric_feature(
                    {**base, "feature": f"{name}:{how}", "extract": f"text_{how}"},
                    shared.extract({"extract": f"text_{how}"}, tensor),
                )
                for how in ("length", "words")
            ]
        spec = {**base, "feature": name, "extract": "value"}
        return [shared.categorical_feature(spec, shared.extract(spec, tensor))]
    if width == 1:
        spec = {**base, "feature": name, "extract": "value"}
        return [shared.numeric_feature(spec, shared.extract(spec, tensor))]
    if tensor.ndim == 2 and width <= shared.MAX_COLUMNS:
        flat = tensor.reshape(rows, -1)
        return [
            shared.numeric_feature(
                {**base, "feature": f"{name}[{i}]", "extract": "column", "index": i}, flat[:, i]
            )
            for i in range(width)
        ]
    return [
        shared.numeric_feature(
            {**base, "feature": f"{name}:{how}", "extract": f"row_{how}"},
            shared.extract({"extract": f"row_{how}"}, tensor),
        )
        for how in ("mean", "std")
    ]


def _output_features(artifact: Any, feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The first output's profile: the class it picks, or its values; needs the model run
    here (an ONNX graph whose inputs are what the client sends)."""
    from nbdeploy import _ort

    if artifact.metadata.get("format") == "python" or "tokenization" in artifact.metadata:
        return []
    try:
        outputs = _ort.run(_ort.session(artifact.path, threads=1), feeds)
    except Exception:  # noqa: BLE001 - no output profile when the graph cannot run here
        return []
    name = artifact.signature.outputs[0].name
    tensor = outputs.get(name)
    if tensor is None or not tensor.ndim:
        return []
    kind = ((artifact.metadata.get("outputs") or {}).get(name) or {}).get("kind")
    base = {"kind": "output", "tensor": name}
    if kind in ("probabilities", "logits") or (
        kind is None and tensor.ndim == 2 and tensor.shape[1] > 1 and tensor.dtype.kind == "f"
    ):
        spec = {**base, "feature": f"{name}:class", "extract": "argmax"}
        return [shared.categorical_feature(spec, shared.extract(spec, tensor))]
    if kind == "label" or tensor.dtype.kind in "OUSi":
        spec = {**base, "feature": name, "extract": "value"}
        return [shared.categorical_feature(spec, shared.extract(spec, tensor))]
    flat = tensor.reshape(tensor.shape[0], -1)
    return [
        shared.numeric_feature(
            {**base, "feature": f"{name}[{i}]", "extract": "column", "index": i}, flat[:, i]
        )
        for i in range(min(flat.shape[1], 8))
    ]


@dataclass
class FeatureDrift:
    """One feature's drift: its PSI and the reference and live shares per bin."""

    feature: str
    kind: str
    psi: float | None
    bins: list[str]
    reference: list[float]
    live: list[float]
    flag: str
    """``drift`` (PSI >= 0.2), ``watch`` (>= 0.1), ``ok``, or ``no data``."""


@dataclass
class DriftReport:
    """Per feature of one version, worst first: how far the live window is from the reference."""

    name: str
    version: int
    rows: int
    reference_rows: int
    window: int
    features: list[FeatureDrift] = field(default_factory=list)
    threshold: float = DRIFT_THRESHOLD
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.flag == "drift"]

    @property
    def worst(self) -> FeatureDrift | None:
        scored = [f for f in self.features if f.psi is not None]
        return scored[0] if scored else None

    def summary(self) -> str:
        if not self.rows:
            return f"{self.name} v{self.version}: no live requests yet to compare"
        worst = self.worst
        head = (
            f"{self.name} v{self.version}: {len(self.drifted)} of {len(self.features)} features"
            f" drifted (PSI >= {self.threshold:g}) over the last {self.rows:,} rows"
        )
        if worst is None:
            return head
        return f"{head}; worst {worst.feature} at {worst.psi:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted, "summary": self.summary()}

    def table(self) -> str:
        rows = [
            [f.feature, f.kind, "-" if f.psi is None else f"{f.psi:.3f}", f.flag]
            for f in self.features
        ]
        weak = (
            f" (a weak reference: {self.reference_rows} rows)"
            if self.reference_rows < MIN_ROWS
            else ""
        )
        return (
            _format.text_table(["feature", "kind", "psi", "flag"], rows)
            + f"\n{self.summary()}{weak}"
        )

    def __str__(self) -> str:
        return self.table()

    def plot(self, top: int = 6) -> Any:
        """Reference vs live shares per bin for the ``top`` worst features."""
        import matplotlib.pyplot as plt

        shown = [f for f in self.features if f.psi is not None][:top] or self.features[:top]
        columns = min(3, max(1, len(shown)))
        rows = max(1, -(-len(shown) // columns))
        figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
        for axis in axes.ravel()[len(shown) :]:
            axis.set_visible(False)
        for axis, feature in zip(axes.ravel(), shown, strict=False):
            positions = np.arange(len(feature.bins))
            axis.bar(positions - 0.2, feature.reference, 0.4, label="reference")
            axis.bar(positions + 0.2, feature.live, 0.4, label="live")
            score = "no data" if feature.psi is None else f"PSI {feature.psi:.3f}"
            axis.set_title(f"{feature.feature} ({score})", fontsize="small")
            axis.set_xticks(positions, feature.bins, rotation=45, ha="right", fontsize="x-small")
        axes.ravel()[0].legend(fontsize="x-small")
        figure.suptitle(self.summary(), fontsize="small")
        figure.tight_layout()
        return figure

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(f.feature)}</td><td>{f.kind}</td>"
            f"<td>{'-' if f.psi is None else f'{f.psi:.3f}'}</td>"
            f"<td style='color:{_COLORS[f.flag]}'>{f.flag}</td></tr>"
            for f in self.features
        )
        picture = ""
        try:
            import matplotlib.pyplot as plt

            figure = self.plot()
            picture = _format.figure_img(figure, f"drift of {self.name}", dpi=80)
            plt.close(figure)
        except ImportError:
            pass
        return (
            f"<div><b>{html.escape(self.summary())}</b><table><tr><th>feature</th><th>kind</th>"
            f"<th>PSI</th><th>flag</th></tr>{rows}</table>{picture}</div>"
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


_COLORS = {"drift": "#cf222e", "watch": "#9a6700", "ok": "#1a7f37", "no data": "#57606a"}


def flag(score: float | None, threshold: float = DRIFT_THRESHOLD) -> str:
    if score is None:
        return "no data"
    if score >= threshold:
        return "drift"
    return "watch" if score >= WATCH_THRESHOLD else "ok"


def report(
    name: str,
    version: int,
    profile: dict[str, Any],
    live: dict[str, Any],
    threshold: float = DRIFT_THRESHOLD,
) -> DriftReport:
    """Join the reference ``profile`` with one version's live window as the server reports
    it (``{"rows", "window", "features": [{"feature", "psi", "counts"}]}``), worst first."""
    by_name = {f["feature"]: f for f in live.get("features") or []}
    features = []
    for reference in profile["features"]:
        seen = by_name.get(reference["feature"]) or {}
        counts = np.asarray(seen.get("counts") or [0] * len(reference["expected"]), float)
        total = counts.sum()
        score = seen.get("psi")
        features.append(
            FeatureDrift(
                feature=reference["feature"],
                kind=reference["kind"],
                psi=None if score is None else float(score),
                bins=_bin_labels(reference),
                reference=[float(v) for v in reference["expected"]],
                live=[float(v) for v in (counts / total if total else counts)],
                flag=flag(score, threshold),
            )
        )
    features.sort(key=lambda f: (f.psi is None, -(f.psi or 0.0)))
    return DriftReport(
        name=name,
        version=version,
        rows=int(live.get("rows") or 0),
        reference_rows=int(profile.get("rows") or 0),
        window=int(live.get("window") or profile.get("window") or shared.WINDOW),
        features=features,
        threshold=threshold,
    )


def _bin_labels(feature: dict[str, Any]) -> list[str]:
    if feature["type"] == "categorical":
        return [*feature["categories"], shared.OTHER]
    edges = feature["edges"]
    labels = [f"< {edges[0]:.3g}"]
    labels += [f"{low:.3g}-{high:.3g}" for low, high in zip(edges, edges[1:], strict=False)]
    return [*labels, f">= {edges[-1]:.3g}"]
