"""Rich (HTML) and plain-text views of deployments, variants and benchmarks.

The magic and the panel show the same things; every view here is an object with both
``_repr_html_`` and a plain ``__repr__``, so IPython picks HTML in a notebook and text in a
terminal without the caller having to know which it is in.
"""

from __future__ import annotations

import html
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbdeploy import _format
from nbdeploy._types import Signature
from nbdeploy.artifact import ModelArtifact
from nbdeploy.bench import BenchmarkReport
from nbdeploy.vocabulary import DeploymentView, ProgressEvent, VersionView, runtime_text

MAX_INLINE_ELEMENTS = 4096
CARD_STYLE = (
    "border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;margin:4px 0;"
    "font-family:var(--jp-ui-font-family, sans-serif)"
)
PRE_STYLE = (
    "background:var(--jp-layout-color2, #f6f8fa);padding:6px 8px;border-radius:4px;"
    "white-space:pre-wrap;word-break:break-all;user-select:all;margin:2px 0 8px 0"
)
TABLE_STYLE = "border-collapse:collapse;font-size:90%"
CELL_STYLE = "padding:2px 8px;border-bottom:1px solid #e1e4e8;text-align:left"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th style='{CELL_STYLE}'>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='{CELL_STYLE}'>{esc(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return (
        f"<table style='{TABLE_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def has_measurements(report: BenchmarkReport | None) -> bool:
    return report is not None and any(r.ok and r.p50_ms is not None for r in report.results)


@dataclass
class VariantRow:
    variant: str
    size_bytes: int | None = None
    max_abs_error: float | None = None
    top1_agreement: float | None = None
    accuracy_delta: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    served: bool = False
    note: str = ""

    def cells(self) -> list[str]:
        return [
            self.variant + (" (served)" if self.served else ""),
            _format.size(self.size_bytes),
            f"{self.max_abs_error:.2g}" if self.max_abs_error is not None else "",
            f"{self.top1_agreement:.1%}" if self.top1_agreement is not None else "",
            f"{self.accuracy_delta:+.1%}" if self.accuracy_delta is not None else "",
            _format.ms(self.p50_ms),
            _format.ms(self.p99_ms),
            f"{self.throughput:,.0f}" if self.throughput is not None else "",
            self.note,
        ]


VARIANT_HEADERS = (
    "variant",
    "size",
    "max abs err",
    "top-1 agree",
    "acc. delta",
    "p50 ms",
    "p99 ms",
    "samples/s",
    "note",
)


def variant_rows(
    variants: Sequence[ModelArtifact | dict[str, Any]],
    report: BenchmarkReport | None = None,
    *,
    served: str | None = None,
) -> list[VariantRow]:
    """One row per ONNX variant: what quantization cost (size, parity, accuracy) and bought.

    ``variants`` are artifacts or their :meth:`ModelArtifact.summary` dicts (as kept in a served
    version's metadata). Latencies are the report's in-process onnxruntime rows at the
    smallest batch size measured.
    """
    rows: dict[str, VariantRow] = {}
    for item in variants:
        summary = item.summary() if isinstance(item, ModelArtifact) else item
        row = rows.setdefault(summary["variant"], VariantRow(summary["variant"]))
        row.size_bytes = summary.get("size_bytes")
        parity = summary.get("parity")
        if parity is not None:
            row.max_abs_error = parity.get("max_abs_error")
            row.top1_agreement = parity.get("top1_agreement")
        quantization = summary.get("quantization")
        if quantization is not None:
            row.accuracy_delta = quantization.get("accuracy_delta")
            if quantization.get("status", "ok") != "ok":
                reason = quantization.get("reason") or ""
                row.note = f"{quantization['status']}: {reason}".strip()
    if report is not None:
        in_process = [r for r in report.results if r.engine == "onnxruntime" and r.concurrency == 1]
        batch = min((r.batch_size for r in in_process), default=1)
        for result in in_process:
            if result.batch_size != batch:
                continue
            row = rows.setdefault(result.variant or result.target, VariantRow(result.variant or ""))
            row.size_bytes = row.size_bytes or result.size_bytes
            row.p50_ms, row.p99_ms, row.throughput = result.p50_ms, result.p99_ms, result.throughput
            if not result.ok and not row.note:
                row.note = f"{result.status}: {result.note or ''}".strip()
    if served in rows:
        rows[served].served = True
    return list(rows.values())


def variants_html(rows: Sequence[VariantRow]) -> str:
    return html_table(VARIANT_HEADERS, [row.cells() for row in rows])


def variants_text(rows: Sequence[VariantRow]) -> str:
    return _format.text_table(VARIANT_HEADERS, [row.cells() for row in rows])


@dataclass
class BenchmarkView:
    """A benchmark report shown as its table plus its latency plot."""

    report: BenchmarkReport
    title: str = "benchmark"

    def _repr_html_(self) -> str:
        parts = [f"<div style='{CARD_STYLE}'><b>{esc(self.title)}</b>", self.report._repr_html_()]
        if has_measurements(self.report):
            parts.append(_format.figure_img(self.report.plot(), "latency plot"))
        return "".join(parts) + "</div>"

    def __repr__(self) -> str:
        return f"{self.title}\n{self.report.table()}"


def example_payload(
    signature: Signature, example: dict[str, Any] | None = None
) -> tuple[dict[str, Any], int]:
    """A V2 request (batch 1) and its element count: ``example`` (a real row of the deploy
    sample, ``{input: nested list}``) when it has every input, else zeros."""
    inputs, total = [], 0
    real = _has_row(signature, example)
    for spec in signature.inputs:
        if real:
            data = _flatten(example[spec.name])
            shape = _shape(example[spec.name])
        else:
            shape = [1 if dim < 0 else dim for dim in spec.shape]
            data = [_zero(spec.datatype)] * math.prod(shape)
        total += len(data)
        inputs.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"inputs": inputs}, total


def _has_row(signature: Signature, example: dict[str, Any] | None) -> bool:
    return example is not None and all(spec.name in example for spec in signature.inputs)


def sample_row(served: ModelArtifact) -> dict[str, Any] | None:
    """The deploy sample's first complete row, as recorded with the demo preprocessing."""
    spec = served.metadata.get("preprocessing") or {}
    if spec.get("request_example"):
        return spec["request_example"]
    if spec.get("kind") == "tensor" and spec.get("examples"):
        return spec["examples"]
    if spec.get("kind") == "tabular" and spec.get("input") and spec.get("examples"):
        return {spec["input"]: [spec["examples"][0]]}
    return None


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for part in value for item in _flatten(part)]
    return [value]


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _zero(datatype: str) -> Any:
    return {"BOOL": False, "BYTES": ""}.get(datatype, 0)


def token_command(name: str) -> str:
    """A shell command that prints the deployment's token, for snippets that must not show it:
    this interpreter (it has nbdeploy) asks the store, as ``nbd.get(name).token`` would."""
    found = shutil.which("python")
    python = "python" if found and os.path.abspath(found) == sys.executable else sys.executable
    lookup = f"import nbdeploy; print(nbdeploy.get({json.dumps(name)}).token)"
    return f"{shlex.quote(python)} -c {shlex.quote(lookup)}"


def curl_snippet(
    url: str,
    name: str,
    token: str | None,
    signature: Signature,
    example: dict[str, Any] | None = None,
) -> str:
    """A curl command sending one real row of the sample (zeros without one), as JSON.

    The token is never printed: the header reads ``$NBDEPLOY_TOKEN``, and when that is unset
    asks nbdeploy for it (so the command runs as it is, on this machine)."""
    payload, elements = example_payload(signature, example)
    lines = [f"curl -s -X POST {url}/v2/models/{name}/infer \\"]
    if token:
        lines.append(
            f'  -H "Authorization: Bearer ${{NBDEPLOY_TOKEN:-$({token_command(name)})}}" \\'
        )
    lines.append("  -H 'Content-Type: application/json' \\")
    if elements <= MAX_INLINE_ELEMENTS:
        lines.append(f"  -d {shlex.quote(json.dumps(payload, separators=(',', ':')))}")
    else:
        lines.append("  -d @request.json   # a V2 request body with the inputs shown below")
    return "\n".join(lines)


def python_snippet(
    url: str,
    name: str,
    token: str | None,
    signature: Signature,
    example: dict[str, Any] | None = None,
) -> str:
    """``nbd.get`` plus a raw V2 request with httpx, sending one real row of the sample.

    The token travels in ``ep.headers`` (read from nbdeploy's store), never printed."""
    payload, elements = example_payload(signature, example)
    real = _has_row(signature, example) and elements <= MAX_INLINE_ELEMENTS
    if not real:
        payload, elements = example_payload(signature, None)
    inputs = []
    for entry in payload["inputs"]:
        data = entry["data"]
        shown = repr(data) if real else f"[{data[0]!r}] * {len(data)}" if data else "[]"
        inputs.append(
            f'        {{"name": {json.dumps(entry["name"])}, "shape": {entry["shape"]},'
            f' "datatype": "{entry["datatype"]}", "data": {shown}}},'
        )
    which = "one row of the deploy sample" if real else "zeros shaped like the inputs"
    return "\n".join(
        [
            "import nbdeploy as nbd",
            f'ep = nbd.get("{name}")   # also after a kernel restart',
            "# ep.predict(x) -> numpy (x: arrays, or a DataFrame for a DataFrame model);",
            "# ep.predict_frame(df) -> a DataFrame of labels and per-class probabilities",
            "",
            "import httpx   # or any HTTP client: the endpoint speaks Open Inference Protocol v2",
            "response = httpx.post(",
            f'    "{url}/v2/models/{name}/infer",',
            "    headers=ep.headers,   # the bearer token (elsewhere: $NBDEPLOY_TOKEN)"
            if token
            else "    headers=ep.headers,",
            f'    json={{"inputs": [   # {which}',
            *inputs,
            "    ]},",
            ")",
            'print(response.json()["outputs"])',
        ]
    )


def traffic_text(versions: Sequence[VersionView]) -> str | None:
    """``v1 90% · v2 10% (canary)``: the versions that serve or shadow, or None while only one
    does (a single version's 100% says nothing the headline does not)."""
    serving = [v for v in versions if v.role != "idle"]
    if len(serving) < 2:
        return None
    return " · ".join(
        f"v{v.version} {v.weight}%" + (f" ({v.role})" if v.role in ("canary", "shadow") else "")
        for v in serving
    )


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


VERSION_HEADERS = ("version", "weight", "role", "requests", "errors", "p50 ms", "p99 ms", "agree")


def version_cells(version: VersionView) -> list[str]:
    """One version's row: share of traffic, role and the server's live window figures."""
    return [
        f"v{version.version}",
        f"{version.weight}%",
        version.role,
        _count(version.requests),
        _count(version.errors),
        _format.ms(version.p50_ms),
        _format.ms(version.p99_ms),
        f"{version.agreement:.1%}" if version.agreement is not None else "",
    ]


@dataclass
class VersionsView:
    """What ``%traffic``, ``%promote`` and ``%rollback`` show: a name's versions side by side."""

    name: str
    version: int
    versions: list[VersionView]
    guard: str | None = None
    action: str = ""
    """What just happened (``promoted v2``), empty when only showing."""

    @classmethod
    def of(cls, view: DeploymentView, action: str = "") -> VersionsView:
        return cls(view.name, view.version, list(view.versions), view.guard, action)

    @property
    def traffic(self) -> dict[int, int]:
        return {v.version: v.weight for v in self.versions}

    @property
    def headline(self) -> str:
        split = " · ".join(f"v{v.version} {v.weight}%" for v in self.versions if v.weight)
        done = f"{self.action}: " if self.action else ""
        return f"{done}{self.name} (stable v{self.version}) traffic: {split or 'none'}"

    def _repr_html_(self) -> str:
        parts = [f"<div style='{CARD_STYLE}'><div>{esc(self.headline)}</div>"]
        if self.guard:
            parts.append(f"<div style='color:#cf222e'>guard: {esc(self.guard)}</div>")
        parts.append(html_table(VERSION_HEADERS, [version_cells(v) for v in self.versions]))
        return "".join(parts) + "</div>"

    def __repr__(self) -> str:
        lines = [self.headline]
        if self.guard:
            lines.append(f"guard: {self.guard}")
        if self.versions:
            lines += [
                "",
                _format.text_table(VERSION_HEADERS, [version_cells(v) for v in self.versions]),
            ]
        return "\n".join(lines)


@dataclass
class DeploySummary:
    """What ``%deploy`` ends with: where the endpoint is, what it serves, how fast, how to call it."""

    name: str
    version: int
    runtime: str
    url: str
    status: str
    token: str | None
    signature: Signature
    variants: list[VariantRow] = field(default_factory=list)
    example: dict[str, Any] | None = None
    report: BenchmarkReport | None = None
    demo_url: str | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    traffic: str | None = None
    """The split when more than one version serves (``v1 90% · v2 10% (canary)``)."""

    @classmethod
    def from_endpoint(
        cls,
        endpoint: Any,
        served: ModelArtifact,
        *,
        report: BenchmarkReport | None = None,
        variants_report: BenchmarkReport | None = None,
        demo_url: str | None = None,
        notes: Sequence[str] = (),
        steps: Sequence[str] = (),
        versions: Sequence[VersionView] = (),
    ) -> DeploySummary:
        """``report`` is shown in full; ``variants_report`` (default: ``report``) fills the
        latency columns of the variants table. ``served`` is the version just deployed, which
        is not the endpoint's stable version while it runs as a canary or shadow."""
        return cls(
            name=endpoint.name,
            version=int(served.version or endpoint.version),
            runtime=runtime_text(endpoint.runtime, endpoint.network),
            url=endpoint.url,
            status=endpoint.status,
            token=endpoint.token,
            signature=served.signature,
            example=sample_row(served),
            variants=variant_rows(
                served.metadata.get("variants") or [served],
                variants_report or report,
                served=served.variant,
            ),
            report=report,
            demo_url=demo_url,
            notes=list(notes),
            steps=list(steps),
            traffic=traffic_text(versions),
        )

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    @property
    def headline(self) -> str:
        return f"{self.name} v{self.version} is {self.status} on the {self.runtime} runtime"

    def curl(self) -> str:
        return curl_snippet(self.url, self.name, self.token, self.signature, self.example)

    def python(self) -> str:
        return python_snippet(self.url, self.name, self.token, self.signature, self.example)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.status == "running" else "#9a6700"
        parts = [
            f"<div style='{CARD_STYLE}'>",
            f"<div style='font-size:110%'><b style='color:{color}'>&#9679;</b> "
            f"<b>{esc(self.name)}</b> v{self.version} is <b>{esc(self.status)}</b> "
            f"on the {esc(self.runtime)} runtime</div>",
            f"<div>endpoint: <a href='{esc(self.url)}/v2/models/{esc(self.name)}' "
            f"target='_blank'><code>{esc(self.infer_url)}</code></a></div>",
        ]
        if self.traffic:
            parts.append(f"<div>traffic: {esc(self.traffic)}</div>")
        if self.demo_url:
            parts.append(
                f"<div>demo: <a href='{esc(self.demo_url)}' target='_blank'>"
                f"{esc(self.demo_url)}</a></div>"
            )
        parts.extend(f"<div style='color:#9a6700'>{esc(note)}</div>" for note in self.notes)
        parts.append("<h4 style='margin:8px 0 2px 0'>variants</h4>")
        parts.append(variants_html(self.variants))
        if self.report is not None:
            parts.append("<h4 style='margin:8px 0 2px 0'>benchmark</h4>")
            parts.append(self.report._repr_html_())
            if has_measurements(self.report):
                parts.append(_format.figure_img(self.report.plot(), "latency plot"))
        parts.append("<h4 style='margin:8px 0 2px 0'>call it</h4>")
        parts.append(f"<pre style='{PRE_STYLE}'>{esc(self.curl())}</pre>")
        parts.append(f"<pre style='{PRE_STYLE}'>{esc(self.python())}</pre>")
        if self.steps:
            steps = "".join(f"<div>{esc(step)}</div>" for step in self.steps)
            parts.append(
                f"<details><summary>steps ({len(self.steps)})</summary>"
                f"<div style='font-family:monospace;font-size:85%'>{steps}</div></details>"
            )
        parts.append("</div>")
        return "".join(parts)

    def __repr__(self) -> str:
        lines = [self.headline, f"endpoint: {self.infer_url}"]
        if self.traffic:
            lines.append(f"traffic:  {self.traffic}")
        if self.demo_url:
            lines.append(f"demo:     {self.demo_url}")
        lines.extend(f"note:     {note}" for note in self.notes)
        lines += ["", variants_text(self.variants)]
        if self.report is not None:
            lines += ["", self.report.table()]
        lines += ["", "curl:", self.curl(), "", "python:", self.python()]
        return "\n".join(lines)


DEPLOYMENT_HEADERS = ("name", "version", "runtime", "format", "status", "traffic", "url", "created")


def split_text(view: DeploymentView) -> str:
    """Every version's share for a table cell: the one-line split, or ``v1 100%``."""
    return traffic_text(view.versions) or " · ".join(
        f"v{v.version} {v.weight}%" for v in view.versions if v.weight
    )


@dataclass
class DeploymentTable:
    """What ``%deployments`` returns: the rows as data, shown as a table (with a guard column
    when a guard sent some name's traffic back to its stable version)."""

    rows: list[DeploymentView]

    @property
    def names(self) -> list[str]:
        return [row.name for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def headers(self) -> tuple[str, ...]:
        guarded = any(row.guard for row in self.rows)
        return (*DEPLOYMENT_HEADERS, "guard") if guarded else DEPLOYMENT_HEADERS

    def _cells(self) -> list[list[str]]:
        guarded = len(self.headers) > len(DEPLOYMENT_HEADERS)
        return [
            [
                row.name,
                str(row.version),
                row.runtime_text,
                row.format,
                row.status,
                split_text(row),
                row.infer_url.removesuffix("/infer"),
                row.created_at[:19],
            ]
            + ([row.guard or ""] if guarded else [])
            for row in self.rows
        ]

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<i>no deployments are running</i>"
        return html_table(self.headers, self._cells())

    def __repr__(self) -> str:
        if not self.rows:
            return "no deployments are running"
        return _format.text_table(self.headers, self._cells())


def progress_html(
    steps: Sequence[ProgressEvent], *, done: bool = False, failed: str | None = None
) -> str:
    """The live view ``%deploy`` updates in place while it works; ``failed`` ends it with a ✗."""
    items = "".join(f"<div>{esc(str(step))}</div>" for step in steps[:-1])
    current = str(steps[-1]) if steps else "starting"
    if failed is not None:
        stage = steps[-1].stage if steps else "deploy"
        return (
            f"<div style='{CARD_STYLE};font-family:monospace;font-size:90%'>"
            f"<div style='color:#57606a'>{items}</div><div style='color:#cf222e'><b>&#10007; "
            f"{esc(stage)} failed: {esc(failed)}</b></div></div>"
        )
    marker = "&#10003;" if done else "&#8987;"
    return (
        f"<div style='{CARD_STYLE};font-family:monospace;font-size:90%'>"
        f"<div style='color:#57606a'>{items}</div><div><b>{marker} {esc(current)}</b></div></div>"
    )


CHART_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
ChartLine = Sequence[tuple[float, float | None]]


def _tick(value: float) -> str:
    """A short axis label: 0, 0.25, 3.2, 45, 1.2k."""
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def line_chart_svg(
    title: str,
    lines: dict[str, ChartLine],
    *,
    metric: str,
    unit: str = "",
    span: tuple[float, float] | None = None,
    width: int = 300,
    height: int = 130,
    styles: dict[str, str] | None = None,
) -> str:
    """A small inline SVG line chart, one line per label (a version), gaps where a value is
    None; plain SVG so that it shows in JupyterLab, Voila and any browser without a plotting
    package in the frontend. ``span`` is the time range of the x axis (default: the data's).

    The ``<svg>`` carries ``data-metric`` and every ``<polyline>`` its ``data-series`` and
    ``data-last`` (the newest value), so tests and scripts can read what is drawn."""
    left, right, top, bottom = 34, 8, 30, 16
    plot_w, plot_h = width - left - right, height - top - bottom
    times = [t for line in lines.values() for t, _ in line]
    values = [v for line in lines.values() for _, v in line if v is not None and math.isfinite(v)]
    start, end = span if span is not None else (min(times, default=0.0), max(times, default=1.0))
    end = max(end, start + 1e-9)
    peak = max(values, default=0.0) * 1.1 or 1.0

    def x(t: float) -> float:
        return left + plot_w * (t - start) / (end - start)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        f"<svg class='nbd-chart' data-metric='{esc(metric)}' xmlns='http://www.w3.org/2000/svg'"
        f" width='{width}' height='{height}' viewBox='0 0 {width} {height}'"
        " style='font-family:sans-serif;font-size:10px;background:transparent'>",
        f"<text x='{left}' y='11' font-weight='bold' fill='currentColor'>{esc(title)}</text>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}'"
        " stroke='#8c959f' stroke-width='0.5'/>",
        f"<line x1='{left}' y1='{top}' x2='{left + plot_w}' y2='{top}' stroke='#d0d7de'"
        " stroke-width='0.5' stroke-dasharray='2,2'/>",
        f"<text x='{left - 3}' y='{top + 4}' text-anchor='end' fill='#57606a'>{_tick(peak)}</text>",
        f"<text x='{left - 3}' y='{top + plot_h}' text-anchor='end' fill='#57606a'>0</text>",
        f"<text x='{left}' y='{height - 3}' fill='#57606a'>-{end - start:.0f} s</text>",
        f"<text x='{left + plot_w}' y='{height - 3}' text-anchor='end' fill='#57606a'>now</text>",
    ]
    legend = []
    for index, (label, line) in enumerate(lines.items()):
        color = CHART_COLORS[index % len(CHART_COLORS)]
        dash = (styles or {}).get(label)
        dashed = f" stroke-dasharray='{dash}'" if dash else ""
        last = next((v for _, v in reversed(line) if v is not None), None)
        segments: list[list[str]] = [[]]
        for t, v in line:
            if v is None or not math.isfinite(v):
                segments.append([])
            else:
                segments[-1].append(f"{x(t):.1f},{y(v):.1f}")
        drawn = [points for points in segments if points]
        for points in drawn or [[]]:
            if len(points) == 1:  # a single point: a dot, so that it shows
                cx, cy = points[0].split(",")
                parts.append(f"<circle cx='{cx}' cy='{cy}' r='1.8' fill='{color}'/>")
            parts.append(
                f"<polyline data-series='{esc(label)}' data-last='{'' if last is None else last}'"
                f" points='{' '.join(points)}' fill='none' stroke='{color}' stroke-width='1.5'"
                f"{dashed}/>"
            )
        shown = "-" if last is None else f"{_tick(last)}{unit}"
        legend.append(f"<tspan fill='{color}'>{esc(label)} {esc(shown)}</tspan>")
    if legend:
        parts.append(f"<text x='{left}' y='23'>{' '.join(legend)}</text>")
    parts.append("</svg>")
    return "".join(parts)
