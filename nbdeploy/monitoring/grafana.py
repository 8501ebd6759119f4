"""A ready Grafana dashboard for nbdeploy's metrics, and the provisioning files that load it.

Grafana is not run here: the user runs one (``docker run grafana/grafana`` or a package) and
points it at these files. Every panel filters on the ``deployment`` and ``version`` template
variables; the ``deployment`` and ``runtime`` labels come from Prometheus' target files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nbdeploy.monitoring._files import monitoring_dir, private_dir, write_private

DASHBOARD_UID = "nbdeploy"
DATASOURCE_UID = "nbdeploy-prometheus"
DATASOURCE_NAME = "nbdeploy Prometheus"
DRIFT_WARN = 0.1
"""Population stability index above which a feature is worth a look."""
DRIFT_ALERT = 0.2
"""Population stability index above which a feature has drifted (the flag's threshold)."""

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
BY_NAME = 'job="nbdeploy", deployment=~"$deployment"'
BY_VERSION = BY_NAME + ', version=~"$version"'
INFER = BY_NAME + r', route=~".*(/infer|:predict)"'
"""The inference routes only: scrapes, health checks and metadata are not traffic."""
QUANTILES = (0.5, 0.95, 0.99)


def _rate(metric: str, labels: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{labels}}}{RATE}))"


def _share(metric: str, labels: str, part: str, by: str) -> str:
    """Fraction of ``metric`` matching ``part``, 0 (not no data) when none does."""
    total = _rate(metric, labels, by)
    return f"({_rate(metric, f'{labels}, {part}', by)} or {total} * 0) / {total}"


def _mean(metric: str, labels: str, by: str) -> str:
    return f"{_rate(metric + '_sum', labels, by)} / {_rate(metric + '_count', labels, by)}"


def _quantiles(metric: str, labels: str, by: str, legend: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, {_rate(metric + '_bucket', labels, by + ', le')})",
            f"{legend} p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


def _panel(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    unit: str,
    kind: str = "timeseries",
    thresholds: list[tuple[str, float | None]] | None = None,
) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for color, value in thresholds or [("green", None)]]
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": kind == "timeseries",
                "instant": kind != "timeseries",
            }
            for index, (expr, legend) in enumerate(queries)
        ],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    }
    if kind == "timeseries" and thresholds:
        panel["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "stat":
        panel["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "textMode": "value_and_name",
        }
    return panel


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


DRIFT_STEPS: list[tuple[str, float | None]] = [
    ("green", None),
    ("yellow", DRIFT_WARN),
    ("red", DRIFT_ALERT),
]


def _panels() -> list[dict[str, Any]]:
    """Every panel in display order (rows included); ids and positions are added after."""
    http = "nbdeploy_http_requests_total"
    model = "nbdeploy_model_requests_total"
    return [
        _row("Traffic"),
        _panel(
            "Targets up",
            "1 when Prometheus scraped the deployment's /metrics at the last attempt.",
            [(f"up{{{BY_NAME}}}", "{{deployment}}")],
            unit="none",
            kind="stat",
            thresholds=[("red", None), ("green", 1)],
        ),
        _panel(
            "Request rate",
            "Inference requests per second (V2 infer and V1 predict routes).",
            [(_rate(http, INFER, "deployment"), "{{deployment}}")],
            unit="reqps",
        ),
        _panel(
            "Error rate",
            "Share of inference requests answered with a server error (5xx) or refused as a"
            " client error (4xx).",
            [
                (_share(http, INFER, 'status=~"5.."', "deployment"), "{{deployment}} 5xx"),
                (_share(http, INFER, 'status=~"4.."', "deployment"), "{{deployment}} 4xx"),
            ],
            unit="percentunit",
        ),
        _panel(
            "Latency",
            "Time from request to response on the inference routes, as the server measures it.",
            _quantiles(
                "nbdeploy_http_request_duration_seconds", INFER, "deployment", "{{deployment}}"
            ),
            unit="s",
        ),
        _panel(
            "Requests in flight",
            "Inference requests admitted and not yet answered; more than the server's"
            " --max-concurrency are refused with 503.",
            [
                (
                    f"sum by (deployment) (nbdeploy_requests_in_flight{{{BY_NAME}}})",
                    "{{deployment}}",
                )
            ],
            unit="none",
        ),
        _panel(
            "Memory budget in use",
            "Share of the server's memory budget held by the requests in flight; a request that"
            " does not fit in what is left is refused with 503.",
            [
                (
                    f"sum by (deployment) (nbdeploy_memory_budget_used_bytes{{{BY_NAME}}})"
                    " / sum by (deployment)"
                    f" (nbdeploy_memory_budget_bytes{{{BY_NAME}}})",
                    "{{deployment}}",
                )
            ],
            unit="percentunit",
        ),
        _row("Batching"),
        _panel(
            "Batch size",
            "Mean rows per onnxruntime run, and mean infer requests merged into each run.",
            [
                (
                    _mean("nbdeploy_batch_size", BY_VERSION, "deployment, version"),
                    "{{deployment}} v{{version}} rows",
                ),
                (
                    _mean("nbdeploy_batch_requests", BY_VERSION, "deployment, version"),
                    "{{deployment}} v{{version}} requests",
                ),
            ],
            unit="none",
        ),
        _panel(
            "Queue time",
            "Time an infer request waited for its onnxruntime run to start.",
            _quantiles(
                "nbdeploy_queue_duration_seconds",
                BY_VERSION,
                "deployment, version",
                "{{deployment}} v{{version}}",
            ),
            unit="s",
        ),
        _panel(
            "Inference time",
            "Duration of each onnxruntime run, merging and splitting the batch included.",
            _quantiles(
                "nbdeploy_inference_duration_seconds",
                BY_VERSION,
                "deployment, version",
                "{{deployment}} v{{version}}",
            ),
            unit="s",
        ),
        _panel(
            "Pending requests",
            "Infer requests queued or running right now.",
            [
                (
                    f"sum by (deployment, version) (nbdeploy_pending_requests{{{BY_VERSION}}})",
                    "{{deployment}} v{{version}}",
                )
            ],
            unit="none",
        ),
        _row("Versions"),
        _panel(
            "Requests by version",
            "Answered inference requests per second, by the version that answered.",
            [(_rate(model, BY_VERSION, "deployment, version"), "{{deployment}} v{{version}}")],
            unit="reqps",
        ),
        _panel(
            "Traffic share by version",
            "Each version's share of its deployment's answered requests (canary splits).",
            [
                (
                    f"{_rate(model, BY_VERSION, 'deployment, version')} / ignoring(version)"
                    f" group_left {_rate(model, BY_NAME, 'deployment')}",
                    "{{deployment}} v{{version}}",
                )
            ],
            unit="percentunit",
        ),
        _panel(
            "Error rate by version",
            "Share of each version's answers that were errors (5xx or a failed inference).",
            [
                (
                    _share(model, BY_VERSION, 'outcome="error"', "deployment, version"),
                    "{{deployment}} v{{version}}",
                )
            ],
            unit="percentunit",
        ),
        _panel(
            "Latency by version",
            "Time to answer an inference request, by the version that answered.",
            _quantiles(
                "nbdeploy_model_request_duration_seconds",
                BY_VERSION,
                "deployment, version",
                "{{deployment}} v{{version}}",
            ),
            unit="s",
        ),
        _row("Drift"),
        _panel(
            "Worst drift score",
            f"Highest population stability index over a version's inputs and outputs (live"
            f" window against the reference profile); above {DRIFT_ALERT} is flagged.",
            [
                (
                    f"max by (deployment, version) (nbdeploy_drift_score{{{BY_VERSION}}})",
                    "{{deployment}} v{{version}}",
                )
            ],
            unit="none",
            kind="stat",
            thresholds=DRIFT_STEPS,
        ),
        _panel(
            "Drift score by feature",
            "Population stability index of each input feature and output.",
            [
                (
                    "max by (deployment, version, kind, feature)"
                    f" (nbdeploy_drift_score{{{BY_VERSION}}})",
                    "{{deployment}} v{{version}} {{kind}} {{feature}}",
                )
            ],
            unit="none",
            thresholds=DRIFT_STEPS,
        ),
        _panel(
            "Drift window",
            "Rows in the live window the drift scores are computed on.",
            [
                (
                    f"sum by (deployment, version) (nbdeploy_drift_window_rows{{{BY_VERSION}}})",
                    "{{deployment}} v{{version}}",
                )
            ],
            unit="none",
        ),
    ]


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids and grid positions: rows span the width, panels two to a line under them."""
    x, y = 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
        if panel["type"] == "row":
            y += 0 if x == 0 else 8
            panel["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            x, y = 0, y + 1
            continue
        panel["gridPos"] = {"h": 8, "w": 12, "x": x, "y": y}
        x, y = (12, y) if x == 0 else (0, y + 8)
    return panels


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """The dashboard JSON (Grafana schema 39)."""
    return {
        "uid": DASHBOARD_UID,
        "title": "nbdeploy",
        "description": "Traffic, latency, batching, versions and drift of nbdeploy deployments.",
        "tags": ["nbdeploy"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-15m", "to": "now"},
        "refresh": "5s",
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {"selected": True, "text": DATASOURCE_NAME, "value": DATASOURCE_UID},
                },
                _query_variable(
                    "deployment", "Deployment", 'label_values(up{job="nbdeploy"}, deployment)'
                ),
                _query_variable(
                    "version",
                    "Version",
                    f"label_values(nbdeploy_batch_size_count{{{BY_NAME}}}, version)",
                ),
            ]
        },
        "panels": _layout(_panels()),
    }


def grafana_dir() -> Path:
    return monitoring_dir() / "grafana"


def dashboards_yaml(dashboards: Path) -> str:
    return (
        "# Written by nbdeploy: loads the nbdeploy dashboard from the folder below.\n"
        "apiVersion: 1\n"
        "providers:\n"
        "  - name: nbdeploy\n"
        "    folder: nbdeploy\n"
        "    type: file\n"
        "    disableDeletion: false\n"
        "    allowUiUpdates: true\n"
        "    updateIntervalSeconds: 30\n"
        "    options:\n"
        f"      path: {json.dumps(str(dashboards))}\n"
    )


def datasource_yaml(prometheus_url: str) -> str:
    return (
        "# Written by nbdeploy: the Prometheus that `nbdeploy monitoring up` runs.\n"
        "apiVersion: 1\n"
        "datasources:\n"
        f"  - name: {json.dumps(DATASOURCE_NAME)}\n"
        f"    uid: {DATASOURCE_UID}\n"
        "    type: prometheus\n"
        "    access: proxy\n"
        f"    url: {json.dumps(prometheus_url)}\n"
        "    isDefault: true\n"
        "    editable: true\n"
        "    jsonData:\n"
        "      timeInterval: 5s\n"
        "      httpMethod: POST\n"
    )


def write_files(prometheus_url: str) -> dict[str, Path]:
    """Write the dashboard and the provisioning files, make a data directory for a Grafana run
    as the user (the documented way with ``--user``); returns them by role."""
    root = grafana_dir()
    files = {
        "dashboard": root / "dashboards" / "nbdeploy.json",
        "dashboards_provisioning": root / "provisioning" / "dashboards" / "nbdeploy.yaml",
        "datasource_provisioning": root / "provisioning" / "datasources" / "prometheus.yaml",
    }
    write_private(files["dashboard"], json.dumps(dashboard(), indent=2) + "\n")
    write_private(files["dashboards_provisioning"], dashboards_yaml(files["dashboard"].parent))
    write_private(files["datasource_provisioning"], datasource_yaml(prometheus_url))
    files["data"] = private_dir(root / "data")
    return files


def instructions(prometheus_url: str, files: dict[str, Path], *, running: bool) -> str:
    """How to point a Grafana at the files: paths, a ``docker run`` line, the datasource URL."""
    provisioning = files["dashboards_provisioning"].parent.parent
    dashboards = files["dashboard"].parent
    lines = [
        "Grafana dashboard and provisioning files (nbdeploy does not run Grafana):",
        f"  dashboard:    {files['dashboard']}",
        f"  provisioning: {provisioning}  (dashboards/ and datasources/)",
        f"  datasource:   {DATASOURCE_NAME} (Prometheus) at {prometheus_url}",
        "",
        "Run a Grafana that loads them (host network, so it reaches Prometheus on 127.0.0.1;",
        "your user id and a data directory of yours, since the files are readable by you only):",
        "  docker run --rm --name nbdeploy-grafana --network host --user $(id -u) \\",
        f"    -v {provisioning}:/etc/grafana/provisioning:ro \\",
        f"    -v {dashboards}:{dashboards}:ro \\",
        f"    -v {files['data']}:/var/lib/grafana \\",
        "    -e GF_SERVER_HTTP_ADDR=127.0.0.1 -e GF_AUTH_ANONYMOUS_ENABLED=true \\",
        "    grafana/grafana",
        "  then open http://127.0.0.1:3000/d/nbdeploy (admin / admin to sign in and edit).",
        "",
        "A Grafana you already run: copy the two provisioning folders into its provisioning",
        f"directory, or import {files['dashboard'].name} (Dashboards > New > Import) and add",
        f"a Prometheus data source with URL {prometheus_url}.",
    ]
    if not running:
        lines += ["", "Prometheus is not running: start it with `nbdeploy monitoring up`."]
    return "\n".join(lines)
