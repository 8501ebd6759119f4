"""The Monitor widget, ``%monitor``, the panel's Monitor tab and the stats/drift REST routes.

Most tests feed the widget scripted reports (``nbdeploy.api.stats`` / ``drift`` replaced by
functions returning real ``StatsReport`` / ``DriftReport`` records), so what is drawn is known
exactly. The last ones run the real thing: a notebook executed by nbclient deploys a model on
the process runtime, shows ``%monitor`` and sends load from a thread; the widget state saved
in the notebook must show a non-zero request rate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from nbformat import v4
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbdeploy as nbd
from nbdeploy import api
from nbdeploy._errors import DeployError
from nbdeploy.drift_profile import DriftReport, FeatureDrift
from nbdeploy.jupyter.magics import DeployMagicError
from nbdeploy.jupyter.monitor import Monitor
from nbdeploy.jupyter.panel import DeployPanel
from nbdeploy.telemetry import from_series
from nbdeploy.vocabulary import DeploymentView
from tests.helpers.onnx_models import save_linear
from tests.helpers.views import deployment_view

NAME = "watched"
BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.05]
POLYLINE = re.compile(r"<polyline data-series='([^']*)' data-last='([^']*)'")


def series(now: float, seconds: int = 60, rates: dict[str, int] | None = None) -> dict[str, Any]:
    """A ``/nbdeploy/series`` answer: each version answers ``rates[v]`` requests a second,
    v2 one error in ten, latencies in the 2-5 ms bucket, batches of 2 rows, 1 ms queueing."""
    rates = rates or {"1": 10, "2": 2}
    samples = []
    for i in range(seconds + 1):
        versions = {}
        for version, rate in rates.items():
            done = rate * i
            errors = done // 10 if version == "2" else 0
            versions[version] = {
                "ok": done - errors,
                "errors": errors,
                "latency": [0, 0, done, done, done, done],
                "batch_rows": done,
                "batches": done // 2,
                "queue_s": 0.001 * done,
                "queued": done,
            }
        samples.append({"t": now - seconds + i, "versions": versions})
    return {"name": NAME, "now": now, "interval_s": 1.0, "buckets": BUCKETS, "samples": samples}


def drift_report(psi: float = 0.41) -> DriftReport:
    bins = ["< 0", "0-1", ">= 1"]
    return DriftReport(
        name=NAME,
        version=1,
        rows=500,
        reference_rows=200,
        window=1000,
        features=[
            FeatureDrift("input[2]", "input", psi, bins, [0.3, 0.4, 0.3], [0.1, 0.2, 0.7], "drift"),
            FeatureDrift("input[0]", "input", 0.02, bins, [0.3, 0.4, 0.3], [0.3, 0.4, 0.3], "ok"),
        ],
    )


class Scripted:
    """``api.stats`` and ``api.drift`` answering from a state the test changes."""

    def __init__(self) -> None:
        self.rates: dict[str, int] | None = None
        self.stats_calls: list[float] = []
        self.drift_calls = 0
        self.fail: str | None = None
        self.drift: DriftReport | None = drift_report()

    def stats(self, name: str, window: float = 60.0) -> Any:
        self.stats_calls.append(window)
        if self.fail:
            raise DeployError(self.fail)
        return from_series(name, series(time.time(), int(window), self.rates))

    def drift_of(self, name: str, version: int | None = None) -> DriftReport:
        self.drift_calls += 1
        if self.drift is None:
            raise DeployError(f"{name} v1 has no reference profile")
        return self.drift


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Scripted:
    state = Scripted()
    monkeypatch.setattr(api, "stats", state.stats)
    monkeypatch.setattr(api, "drift", state.drift_of)
    return state


def chart_lines(html: str, metric: str) -> dict[str, float | None]:
    """The newest value of each line of one chart, as its SVG says it."""
    match = re.search(rf"<svg class='nbd-chart' data-metric='{metric}'.*?</svg>", html)
    assert match, f"no {metric} chart"
    return {label: float(last) if last else None for label, last in POLYLINE.findall(match[0])}


def test_monitor_draws_a_line_per_version_and_the_drift_flag(scripted: Scripted) -> None:
    monitor = Monitor(NAME, autostart=False)
    try:
        assert monitor.refreshes == 1 and monitor.error is None
        rates = chart_lines(monitor.charts.value, "request_rate")
        assert set(rates) == {"v1", "v2"}
        assert rates["v1"] == pytest.approx(10, rel=0.05)
        assert rates["v2"] == pytest.approx(2, rel=0.05)
        errors = chart_lines(monitor.charts.value, "error_rate")
        assert errors["v1"] == 0 and errors["v2"] == pytest.approx(10, abs=1.5)
        latency = chart_lines(monitor.charts.value, "latency")
        assert set(latency) == {"v1 p99", "v2 p99", "v1 p50", "v2 p50"}
        assert all(2 <= value <= 5 for value in latency.values())
        assert chart_lines(monitor.charts.value, "batch_size")["v1"] == pytest.approx(2)
        assert chart_lines(monitor.charts.value, "queue_ms")["v1"] == pytest.approx(1)
        assert "data-rate='12." in monitor.header.value
        assert "12.0 req/s" in monitor.header.value
        assert monitor.drift_flag == "input[2] PSI 0.41"
        assert "drift: input[2] PSI 0.41" in monitor.drift_view.value
        assert "input[0]" in monitor.drift_view.value
        assert ">v2<" in monitor.table.value and ">all<" in monitor.table.value
        assert NAME in repr(monitor)
    finally:
        monitor.close()


def test_a_single_version_without_drift_and_errors_are_shown_not_raised(
    scripted: Scripted,
) -> None:
    scripted.rates = {"1": 4}
    scripted.drift = None
    monitor = Monitor(NAME, window=30, autostart=False)
    try:
        assert set(chart_lines(monitor.charts.value, "request_rate")) == {"v1"}
        assert monitor.drift_flag is None
        assert "no reference profile" in monitor.drift_view.value
        scripted.fail = "the endpoint of watched does not answer"
        monitor.refresh()
        assert monitor.error == "the endpoint of watched does not answer"
        assert "does not answer" in monitor.header.value
        assert monitor.stats is not None  # the last good charts stay
        scripted.fail = None
        monitor.refresh()
        assert monitor.error is None and "does not answer" not in monitor.header.value
    finally:
        monitor.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(nbd.InputError, match="window"):
        Monitor(NAME, window=0)
    with pytest.raises(nbd.InputError, match="every"):
        Monitor(NAME, every=0)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_refreshes_on_a_thread_pauses_when_unseen_and_stops_on_close(scripted: Scripted) -> None:
    monitor = Monitor(NAME, every=0.05, pause_after=0.0)
    thread = monitor._thread
    assert monitor.running
    wait_until(lambda: monitor.refreshes >= 4)

    # The pause button.
    monitor.pause_button.value = True
    assert "paused" in monitor.header.value
    time.sleep(0.15)
    count = monitor.refreshes
    time.sleep(0.3)
    assert monitor.refreshes == count
    monitor.pause_button.value = False
    wait_until(lambda: monitor.refreshes >= count + 3)

    # Shown, then no view left: it stops fetching; a view again resumes it.
    monitor._view_count = 1
    monitor._view_count = 0
    assert monitor.paused
    time.sleep(0.15)
    count = monitor.refreshes
    time.sleep(0.3)
    assert monitor.refreshes == count
    monitor._view_count = 1
    assert not monitor.paused
    wait_until(lambda: monitor.refreshes >= count + 3)

    monitor.close()
    assert thread is not None
    thread.join(timeout=2)
    assert not thread.is_alive()


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdeploy")
    yield shell
    shell.kernel = None


def test_monitor_magic(ip: InteractiveShell, scripted: Scripted, monkeypatch) -> None:
    with pytest.raises(DeployMagicError, match="no active deployment named 'nope'"):
        ip.run_line_magic("monitor", "nope")
    monkeypatch.setattr(api, "get", lambda name: object())

    # In a terminal: the window's numbers once.
    report = ip.run_line_magic("monitor", f"{NAME} --window 20")
    assert report.name == NAME and scripted.stats_calls == [20]

    ip.kernel = object()  # as in a Jupyter kernel: the widget
    monitor = ip.run_line_magic("monitor", f"{NAME} --window 30 --every 0.5")
    try:
        assert isinstance(monitor, Monitor)
        assert (monitor.window, monitor.every, monitor.running) == (30.0, 0.5, True)
    finally:
        monitor.close()
    with pytest.raises(DeployMagicError, match="window must be from 1 to 600"):
        ip.run_line_magic("monitor", f"{NAME} --window 900")
    with pytest.raises(DeployMagicError, match="did you mean --every"):
        ip.run_line_magic("monitor", f"{NAME} --evry 2")


def view(name: str) -> DeploymentView:
    return deployment_view(name, url="http://127.0.0.1:1", created_at="", variant=None)


def test_panel_monitor_tab_follows_the_chosen_deployment(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "deployment_views", lambda: [view(NAME), view("other")])
    panel = DeployPanel(namespace={})
    try:
        assert panel.tabs.titles == ("Deploy", "Monitor")
        assert panel.monitor is None  # nothing polled until the tab is opened
        assert list(panel.monitor_picker.options) == [NAME, "other"]

        panel.deployment_rows[NAME].monitor_button.click()
        assert panel.tabs.selected_index == 1
        monitor = panel.monitor
        assert monitor is not None and monitor.name == NAME and monitor.running
        assert panel.monitor_box.children == (monitor,)
        assert "v1" in chart_lines(monitor.charts.value, "request_rate")

        panel.tabs.selected_index = 0  # the tab is hidden: no more refreshes
        wait_until(lambda: not monitor.running, timeout=5)
        panel.tabs.selected_index = 1
        assert panel.monitor is monitor and monitor.running

        panel.monitor_picker.value = "other"
        assert panel.monitor is not None and panel.monitor.name == "other"
        assert monitor.comm is None  # the previous one is closed
    finally:
        panel.close()
    last = panel.monitor
    assert last is not None
    wait_until(lambda: not last.running, timeout=5)


# ------------------------------------------------------------------ REST: stats and drift


@pytest.fixture
def jp_server_config() -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"nbdeploy.jupyter.server": True}}})


async def fetch(jp_fetch, *parts: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    try:
        response = await jp_fetch("nbdeploy", "api", "deployments", *parts, **kwargs)
    except HTTPClientError as exc:
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


async def test_rest_stats_and_drift_answer_the_reports(
    jp_fetch, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "get", lambda name: object())
    code, body = await fetch(jp_fetch, NAME, "stats", params={"window": "30"})
    assert code == 200 and scripted.stats_calls == [30.0]
    assert body["name"] == NAME and [v["version"] for v in body["versions"]] == [1, 2]
    assert body["total"]["request_rate"] == pytest.approx(12, rel=0.05)
    assert set(body["series"][-1]["request_rate"]) == {"1", "2"}

    code, body = await fetch(jp_fetch, NAME, "stats")
    assert code == 200 and scripted.stats_calls[-1] == 60.0
    for bad in ("0", "601", "soon"):
        code, body = await fetch(jp_fetch, NAME, "stats", params={"window": bad})
        assert code == 400 and "window must be" in body["error"]

    code, body = await fetch(jp_fetch, NAME, "drift")
    assert code == 200
    assert body["drifted"] == ["input[2]"] and body["features"][0]["psi"] == 0.41
    code, body = await fetch(jp_fetch, NAME, "drift", params={"version": "x"})
    assert code == 400

    scripted.drift = None
    code, body = await fetch(jp_fetch, NAME, "drift")
    assert code == 409 and "no reference profile" in body["error"]
    scripted.fail = "the endpoint does not answer"
    code, body = await fetch(jp_fetch, NAME, "stats")
    assert code == 502 and body["error"] == "the endpoint does not answer"


async def test_rest_routes_refuse_unknown_deployments(jp_fetch) -> None:
    for route in ("stats", "drift"):
        code, body = await fetch(jp_fetch, "nope", route)
        assert code == 404 and "'nope'" in body["error"]


# ------------------------------------------------------------------ the real thing


@pytest.fixture
def deployed(tmp_path: Path) -> Any:
    sample = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    endpoint = nbd.deploy(
        save_linear(tmp_path / "linear.onnx"), sample, name=NAME, runtime="process"
    )
    yield endpoint, sample
    for running in nbd.deployments():
        running.stop()


@pytest.mark.slow
def test_monitor_of_a_real_deployment_under_load(deployed: Any) -> None:
    endpoint, sample = deployed
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            endpoint.predict(sample[:2])

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    monitor = Monitor(NAME, window=30, every=0.5)
    try:
        wait_until(lambda: monitor.stats is not None and monitor.stats.total.request_rate > 0, 30)
        wait_until(lambda: (chart_lines(monitor.charts.value, "request_rate")["v1"] or 0) > 0, 30)
        assert monitor.error is None
        assert monitor.drift is not None  # deployed with a sample: a reference profile
    finally:
        stop.set()
        loader.join()
        monitor.close()


MONITOR_NOTEBOOK = [
    "import json, os, threading, time\nimport numpy as np\nimport nbdeploy as nbd\n"
    "%load_ext nbdeploy",
    "x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)\n"
    "ep = nbd.deploy({path!r}, x, name={name!r}, runtime='process')",
    "m = %monitor {name} --window 30 --every 1\nm",
    "stop = threading.Event()\n"
    "def load():\n"
    "    while not stop.is_set():\n"
    "        ep.predict(x[:2])\n"
    "loader = threading.Thread(target=load, daemon=True)\nloader.start()",
    "start = m.refreshes\ndeadline = time.time() + 60\n"
    "while time.time() < deadline and not (m.refreshes >= start + 3 and m.stats is not None\n"
    "        and m.stats.total.request_rate > 0):\n"
    "    time.sleep(0.2)\n"
    "stop.set(); loader.join()\n"
    "print(json.dumps({{'refreshes': m.refreshes - start, 'rate': m.stats.total.request_rate,"
    " 'error': m.error}}))",
    "m.stop()\nnbd.undeploy({name!r})",
]


@pytest.mark.slow
def test_monitor_magic_in_a_notebook_run_by_nbclient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("NBDEPLOY_RUNTIME", "process")
    path = str(save_linear(tmp_path / "linear.onnx"))
    notebook = v4.new_notebook(
        cells=[v4.new_code_cell(cell.format(path=path, name=NAME)) for cell in MONITOR_NOTEBOOK],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    try:
        NotebookClient(
            notebook,
            timeout=240,
            kernel_name="python3",
            store_widget_state=True,
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        for running in nbd.deployments():
            running.stop()
    nbformat.write(notebook, tmp_path / "monitor.ipynb")

    printed = json.loads(notebook.cells[4].outputs[0]["text"])
    assert printed["refreshes"] >= 3 and printed["rate"] > 0 and printed["error"] is None
    shown = notebook.cells[2].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in shown

    # What a frontend would draw, from the widget state saved in the notebook.
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [
        w["state"].get("value") or "" for w in state.values() if w["model_name"] == "HTMLModel"
    ]
    charts = next(value for value in values if "data-metric='request_rate'" in value)
    assert (chart_lines(charts, "request_rate")["v1"] or 0) > 0
    header = next(value for value in values if "nbd-rate" in value)
    assert float(re.search(r"data-rate='([\d.]+)'", header)[1]) > 0
