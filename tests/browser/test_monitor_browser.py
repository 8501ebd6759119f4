"""Watching a deployment run, in a real browser.

- JupyterLab: a linear model served by the process runtime under a load loop; the Deployments
  sidebar draws its request-rate and p99 sparklines and flags the drift of that (repetitive)
  load, and its Monitor button opens the monitor panel in the main area, whose charts show a
  non-zero rate per version.
- JupyterLab against a scripted REST API: a row whose stable version drifted shows the drift
  line, and the sparklines draw exactly the numbers the stats route answered.
- Voila (no JupyterLab): a notebook showing ``Monitor(name)`` renders its SVG charts and keeps
  updating them from the kernel's thread during a load loop.

Reuses the JupyterLab fixtures of ``test_lab_browser.py``; screenshots land in
``test-artifacts/lab/``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nbformat
import numpy as np
import pytest
from nbformat import v4
from playwright.sync_api import expect

import nbdeploy as nbd
from nbdeploy.telemetry import from_series
from nbdeploy.vocabulary import DeploymentView, VersionView
from tests.browser import test_lab_browser as lab_ui
from tests.browser.test_lab_browser import (
    ARTIFACTS,
    BUILT_EXTENSION,
    SIDEBAR,
    Lab,
    open_lab,
    run_from_palette,
    shoot,
)
from tests.helpers.browser import chromium_context, chromium_missing, running_voila
from tests.helpers.onnx_models import save_linear
from tests.jupyter.test_monitor import series

lab = lab_ui.lab
lab_home = lab_ui.lab_home
page = lab_ui.page

NAME = "ui-monitored"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]
needs_build = pytest.mark.skipif(
    not (BUILT_EXTENSION / "package.json").exists(),
    reason="the lab extension is not built: run scripts/build-labextension.sh",
)

POSITIVE_LAST = """(selector) => {
  const lines = [...document.querySelectorAll(selector)];
  return lines.some(line => parseFloat(line.getAttribute('data-last') || '0') > 0);
}"""


def deploy_linear(tmp_path: Path) -> Any:
    sample = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    endpoint = nbd.deploy(
        save_linear(tmp_path / "linear.onnx"), sample, name=NAME, runtime="process"
    )
    return endpoint, sample


@pytest.fixture
def load() -> Iterator[Any]:
    """``load(endpoint, x)`` sends requests from a thread until the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(endpoint: Any, x: np.ndarray) -> None:
        def loop() -> None:
            while not stop.is_set():
                try:
                    endpoint.predict(x)
                except Exception:  # noqa: BLE001 - the endpoint stopping at the test's end
                    time.sleep(0.05)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


@needs_build
def test_sidebar_sparkline_and_monitor_panel_show_the_load(
    lab: Lab, lab_home: Path, page: Any, tmp_path: Path, load: Any
) -> None:
    endpoint, sample = deploy_linear(tmp_path)
    load(endpoint, sample[:2])

    code, report = None, None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = lab.api(f"deployments/{NAME}/stats?window=30")
        code, report = answer.status_code, answer.json()
        if code == 200 and report["total"]["request_rate"] > 0:
            break
        time.sleep(0.5)
    assert code == 200 and report["total"]["request_rate"] > 0, report

    open_lab(page, lab)
    run_from_palette(page, "nbdeploy: Show deployments")
    row = page.locator(f'{SIDEBAR} .nbdeploy-row[data-name="{NAME}"]')
    expect(row).to_be_visible()
    spark = f'{SIDEBAR} .nbdeploy-row[data-name="{NAME}"] .nbdeploy-spark'
    page.wait_for_function(
        POSITIVE_LAST, arg=f"{spark} svg[data-metric='request_rate'] polyline", timeout=60_000
    )
    page.wait_for_function(
        POSITIVE_LAST, arg=f"{spark} svg[data-metric='p99_ms'] polyline", timeout=60_000
    )
    expect(row.locator(".nbdeploy-spark")).to_contain_text("req/s")
    expect(row.locator(".nbdeploy-spark")).to_contain_text("p99")
    # The load sends the same two rows again and again: nothing like the 64 sample rows it was
    # deployed with, so its inputs have drifted, and the row says which feature is worst.
    expect(row.locator(".nbdeploy-drift")).to_have_text(
        re.compile(r"^Drift: \S+ PSI \d+\.\d\d$"), timeout=30_000
    )
    shoot(page, "monitor-sidebar")

    row.get_by_role("button", name="Monitor").click()
    view = page.locator(".nbdeploy-MonitorView")
    expect(view).to_be_visible()
    expect(view.locator(".nbdeploy-monitor-title")).to_have_text(f"Monitor: {NAME}")
    page.wait_for_function(
        POSITIVE_LAST,
        arg=".nbdeploy-MonitorView svg[data-metric='request_rate'] polyline[data-series='v1']",
        timeout=60_000,
    )
    expect(view.locator("svg.nbdeploy-chart")).to_have_count(5)
    expect(view.locator(".nbdeploy-monitor-summary")).to_contain_text("req/s")
    rate = float(view.locator(".nbdeploy-monitor-summary").get_attribute("data-rate") or 0)
    assert rate > 0
    expect(view.locator("tr[data-version='1']")).to_be_visible()
    # It keeps updating: the summary's time moves on while the panel is shown.
    before = view.locator(".nbdeploy-monitor-summary").inner_text()
    expect(view.locator(".nbdeploy-monitor-summary")).not_to_have_text(before, timeout=15_000)
    # The drift part: deployed with a sample, so there is a reference to compare with.
    expect(view.locator(".nbdeploy-monitor-drift")).to_contain_text(f"{NAME} v1", timeout=30_000)
    expect(view.locator(".nbdeploy-monitor-drift .nbdeploy-drift")).to_have_text(
        re.compile(r"^Drift: \S+ PSI \d+\.\d\d$")
    )
    shoot(page, "monitor-panel")

    # The command from the palette opens the same panel, not a second one.
    run_from_palette(page, "nbdeploy: Monitor a deployment")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Monitor which deployment?")
    dialog.get_by_role("button", name=re.compile(r"^ok$", re.IGNORECASE)).click()
    expect(page.locator(".nbdeploy-MonitorView")).to_have_count(1)


class ScriptedLab:
    """The deployments list and the stats route answered in the page: one drifted row."""

    def __init__(self, lab: Lab) -> None:
        self.base = urlparse(lab.url).path.rstrip("/") + "/nbdeploy/api/"
        self.report = from_series(NAME, series(time.time(), 60, {"1": 7, "2": 3})).to_dict()

    def row(self) -> dict[str, Any]:
        return DeploymentView(
            name=NAME,
            version=1,
            runtime="process",
            format="onnx",
            state="active",
            status="running",
            owner="",
            url="http://127.0.0.1:1",
            infer_url=f"http://127.0.0.1:1/v2/models/{NAME}/infer",
            proxy_path=f"nbdeploy/proxy/{NAME}/",
            created_at="2026-01-01T00:00:00+00:00",
            variant=None,
            p50_ms=None,
            p99_ms=None,
            latency_source=None,
            demo_url=None,
            versions=[
                VersionView(1, 70, "stable", 420, 0, 1.2, 3.4, None),
                VersionView(2, 30, "canary", 180, 18, 1.5, 4.0, 0.99),
            ],
            drift="input[2] PSI 0.41",
        ).to_dict()

    def handle(self, route: Any) -> None:
        path = urlparse(route.request.url).path.removeprefix(self.base)
        if path == "deployments":
            route.fulfill(json={"deployments": [self.row()]})
        elif path == f"deployments/{NAME}/stats":
            route.fulfill(json=self.report)
        else:
            route.fulfill(status=404, json={"error": f"no such route {path}"})


@needs_build
def test_sidebar_shows_the_drift_flag_and_the_stats_it_was_given(
    lab: Lab, lab_home: Path, page: Any
) -> None:
    scripted = ScriptedLab(lab)
    page.route(lambda url: "/nbdeploy/api/" in url, scripted.handle)
    open_lab(page, lab)
    run_from_palette(page, "nbdeploy: Show deployments")
    row = page.locator(f'{SIDEBAR} .nbdeploy-row[data-name="{NAME}"]')
    expect(row.locator(".nbdeploy-drift")).to_have_text("Drift: input[2] PSI 0.41")
    rate = row.locator(".nbdeploy-spark svg[data-metric='request_rate'] polyline")
    expect(rate).to_have_count(1)
    assert float(rate.get_attribute("data-last") or 0) == pytest.approx(10, rel=0.05)
    expect(row.locator(".nbdeploy-spark")).to_contain_text("10.0 req/s")
    p99 = row.locator(".nbdeploy-spark svg[data-metric='p99_ms'] polyline")
    assert 2 <= float(p99.get_attribute("data-last") or 0) <= 5
    shoot(page, "monitor-sidebar-drift")


def test_monitor_widget_renders_and_updates_in_voila(
    tmp_path: Path, load: Any, nbdeploy_home: Path
) -> None:
    endpoint, sample = deploy_linear(tmp_path)
    try:
        load(endpoint, sample[:2])
        notebook = tmp_path / "monitor.ipynb"
        nbformat.write(
            v4.new_notebook(
                cells=[
                    v4.new_code_cell(
                        "from nbdeploy.jupyter.monitor import Monitor\n"
                        f"Monitor({NAME!r}, window=30, every=1)"
                    )
                ],
                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            ),
            notebook,
        )
        with running_voila(notebook, tmp_path) as url, chromium_context() as browser:
            page = browser.new_page()
            page.goto(url, timeout=90_000)
            page.wait_for_selector("svg.nbd-chart[data-metric='request_rate']", timeout=90_000)
            page.wait_for_function(
                POSITIVE_LAST,
                arg="svg.nbd-chart[data-metric='request_rate'] polyline[data-series='v1']",
                timeout=60_000,
            )
            assert page.locator("svg.nbd-chart").count() == 5
            header = page.locator(".nbd-rate").first
            assert float(header.get_attribute("data-rate") or 0) > 0
            # Pushed from the kernel's thread: the header's clock moves on by itself.
            before = page.locator(".nbdeploy-monitor").first.inner_text()
            page.wait_for_function(
                "(before) => document.querySelector('.nbdeploy-monitor').innerText !== before",
                arg=before,
                timeout=30_000,
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "monitor-voila.png"), full_page=True)
            page.close()
    finally:
        endpoint.stop()
