"""JupyterLab in a real browser: a name's versions in the Deployments sidebar.

The first test runs the whole way down: two versions of a real model served by the process
runtime behind one endpoint (v2 as a 10 % canary), Promote clicked in the sidebar, v2 then
takes all traffic. The second drives the version controls against a scripted REST API in the
page (no model served), so each button's request and each state the sidebar draws (a guard
trip, a shadow, an idle version) is checked exactly.

Reuses the JupyterLab fixtures of ``test_lab_browser.py``; screenshots land in
``test-artifacts/lab/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from playwright.sync_api import expect

import nbdeploy as nbd
from nbdeploy.vocabulary import DeploymentView, VersionView
from tests.browser import test_lab_browser as lab_ui
from tests.browser.test_lab_browser import (
    BUILT_EXTENSION,
    SIDEBAR,
    Lab,
    open_lab,
    run_from_palette,
    shoot,
)
from tests.helpers.browser import chromium_missing
from tests.helpers.onnx_models import save_linear

# The JupyterLab fixtures of test_lab_browser.py (pytest finds fixtures among a module's names).
lab = lab_ui.lab
lab_home = lab_ui.lab_home
page = lab_ui.page

NAME = "ui-canary"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
    pytest.mark.skipif(
        not (BUILT_EXTENSION / "package.json").exists(),
        reason="the lab extension is not built: run scripts/build-labextension.sh",
    ),
]

LIVE_SUMMARY = r"( · \d+ req · \d+ err)?( · agree \d+(\.\d)?%)?$"


def version_line(row: Any, version: int) -> Any:
    return row.locator(f'.nbdeploy-version[data-version="{version}"]')


def show_sidebar(page: Any, lab: Lab, name: str) -> Any:
    open_lab(page, lab)
    run_from_palette(page, "nbdeploy: Show deployments")
    row = page.locator(f'{SIDEBAR} .nbdeploy-row[data-name="{name}"]')
    expect(row).to_be_visible()
    return row


def test_sidebar_shows_the_canary_and_promotes_it(
    lab: Lab, lab_home: Path, page: Any, tmp_path: Path
) -> None:
    sample = np.zeros((2, 4), np.float32)
    first = nbd.deploy(
        save_linear(tmp_path / "v1.onnx", seed=0), sample, name=NAME, runtime="process"
    )
    old = first.version
    second = nbd.deploy(
        save_linear(tmp_path / "v2.onnx", seed=1),
        sample,
        name=NAME,
        runtime="process",
        canary=10,
    )
    new = max(nbd.traffic(NAME))
    assert new > old
    assert second.url == first.url
    assert second.version == old  # the stable version until the canary is promoted
    assert nbd.traffic(NAME) == {old: 90, new: 10}
    for _ in range(20):
        second.predict(sample)

    row = show_sidebar(page, lab, NAME)
    versions = row.get_by_role("list", name=f"Versions of {NAME}").get_by_role("listitem")
    expect(versions).to_have_count(2)
    stable, canary = version_line(row, old), version_line(row, new)
    expect(stable).to_have_attribute("data-role", "stable")
    expect(canary).to_have_attribute("data-role", "canary")
    expect(stable.locator(".nbdeploy-version-summary")).to_have_text(
        re.compile(rf"^v{old} · stable · 90%{LIVE_SUMMARY}")
    )
    expect(canary.locator(".nbdeploy-version-summary")).to_have_text(
        re.compile(rf"^v{new} · canary · 10%{LIVE_SUMMARY}")
    )
    expect(row.get_by_role("meter", name=f"Traffic to v{old} of {NAME}")).to_have_attribute(
        "aria-valuenow", "90"
    )
    expect(row.get_by_role("meter", name=f"Traffic to v{new} of {NAME}")).to_have_attribute(
        "aria-valuenow", "10"
    )
    # The 20 requests show up as live counts once the server's window is read (mirrors of the
    # canary's requests count as mirrored on the stable version, not as its requests).
    row.page.locator(f'{SIDEBAR} [data-action="refresh"]').click()
    expect(canary.locator(".nbdeploy-version-summary")).to_contain_text(
        re.compile(r" · [1-9]\d* req · 0 err"), timeout=30_000
    )
    # Only candidates can be promoted or stopped; a canary can be rolled back.
    expect(stable.get_by_role("button")).to_have_count(0)
    expect(canary.get_by_role("button", name=f"Stop v{new} of {NAME}")).to_be_visible()
    expect(row.get_by_role("button", name=f"Roll back {NAME}")).to_be_visible()
    expect(row.locator(".nbdeploy-guard")).to_have_count(0)
    shoot(page, "versions-canary")

    canary.get_by_role("button", name=f"Promote v{new} of {NAME}").click()
    promoted = version_line(row, new)
    expect(promoted).to_have_attribute("data-role", "stable", timeout=120_000)
    expect(promoted.locator(".nbdeploy-version-summary")).to_have_text(
        re.compile(rf"^v{new} · stable · 100%{LIVE_SUMMARY}")
    )
    expect(row.get_by_role("meter", name=f"Traffic to v{new} of {NAME}")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(versions).to_have_count(1)
    expect(row.locator(".nbdeploy-row-heading")).to_contain_text(f"v{new}")
    expect(row.get_by_role("button", name=re.compile("^Promote"))).to_have_count(0)
    shoot(page, "versions-promoted")

    assert nbd.traffic(NAME) == {new: 100}
    assert nbd.get(NAME).version == new
    assert nbd.get(NAME).url == first.url


class ScriptedAPI:
    """The nbdeploy REST routes the sidebar calls, answered in the page from a small state.

    The rows are the real ``DeploymentView`` records, so they keep the REST list's shape.
    """

    def __init__(self, lab: Lab) -> None:
        self.base = urlparse(lab.url).path.rstrip("/") + "/nbdeploy/api/"
        self.versions: list[VersionView] = [
            VersionView(1, 100, "stable", 40, 0, 1.2, 3.4, None),
            VersionView(2, 0, "idle", 7, 3, 1.5, 9.9, 0.62),
            VersionView(3, 0, "shadow", 0, 0, None, None, 0.996),
        ]
        self.guard: str | None = "agreement 0.62 < min_agreement 0.99 over 140 rows"
        self.calls: list[tuple[str, str, Any]] = []

    def row(self) -> dict[str, Any]:
        stable = next(v.version for v in self.versions if v.role == "stable")
        return DeploymentView(
            name=NAME,
            version=stable,
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
            versions=self.versions,
            guard=self.guard,
        ).to_dict()

    def handle(self, route: Any) -> None:
        request = route.request
        path = urlparse(request.url).path.removeprefix(self.base)
        body = json.loads(request.post_data) if request.post_data else None
        if path == "deployments" and request.method == "GET":
            route.fulfill(json={"deployments": [self.row()]})
            return
        if request.method == "GET" and path.endswith(("/stats", "/drift")):
            route.fulfill(status=404, json={"error": "not scripted"})  # the sparklines' poll
            return
        self.calls.append((request.method, path, body))
        if path == f"deployments/{NAME}/versions/2" and request.method == "DELETE":
            self.versions = [v for v in self.versions if v.version != 2]
        elif path == f"deployments/{NAME}/promote" and request.method == "POST":
            self.versions = [VersionView(body["version"], 100, "stable", 0, 0, None, None)]
            self.guard = None
        else:
            route.fulfill(status=404, json={"error": f"no such route {path}"})
            return
        route.fulfill(json=self.row())


def test_version_controls_call_the_rest_routes(lab: Lab, lab_home: Path, page: Any) -> None:
    scripted = ScriptedAPI(lab)
    page.route(lambda url: "/nbdeploy/api/" in url, scripted.handle)
    row = show_sidebar(page, lab, NAME)

    # A guard sent traffic back to v1: its reason is in the row, and the numbers per version.
    guard = row.locator(".nbdeploy-guard")
    expect(guard).to_have_text("Guard tripped: agreement 0.62 < min_agreement 0.99 over 140 rows")
    expect(version_line(row, 1).locator(".nbdeploy-version-summary")).to_have_text(
        "v1 · stable · 100% · 40 req · 0 err"
    )
    expect(version_line(row, 2).locator(".nbdeploy-version-summary")).to_have_text(
        "v2 · idle · 0% · 7 req · 3 err · agree 62%"
    )
    expect(version_line(row, 3).locator(".nbdeploy-version-summary")).to_have_text(
        "v3 · shadow · 0% · 0 req · 0 err · agree 99.6%"
    )
    expect(version_line(row, 1).locator(".nbdeploy-weight-fill")).to_have_attribute(
        "style", "width: 100%;"
    )
    # An idle version can be stopped, not promoted; a shadow can be both.
    expect(row.get_by_role("button", name="Promote v2 of")).to_have_count(0)
    expect(row.get_by_role("button", name=f"Promote v3 of {NAME}")).to_be_visible()
    expect(row.get_by_role("button", name=f"Stop v3 of {NAME}")).to_be_visible()
    shoot(page, "versions-guard")

    # Stop version asks first; Cancel sends nothing.
    row.get_by_role("button", name=f"Stop v2 of {NAME}").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text(f"Stop v2 of {NAME}?")
    expect(dialog).to_contain_text("its share of traffic goes to v1")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert scripted.calls == []
    row.get_by_role("button", name=f"Stop v2 of {NAME}").click()
    dialog.get_by_role("button", name="Stop version").click()
    expect(version_line(row, 2)).to_have_count(0)
    assert scripted.calls == [("DELETE", f"deployments/{NAME}/versions/2", None)]

    # Rollback asks what it will do; Cancel again sends nothing.
    row.get_by_role("button", name=f"Roll back {NAME}").click()
    expect(dialog).to_contain_text("All traffic of ui-canary goes back to v1; v3 is unloaded")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)

    row.get_by_role("button", name=f"Promote v3 of {NAME}").click()
    expect(version_line(row, 3)).to_have_attribute("data-role", "stable")
    expect(version_line(row, 3).locator(".nbdeploy-version-summary")).to_have_text(
        "v3 · stable · 100% · 0 req · 0 err"
    )
    expect(guard).to_have_count(0)
    expect(row.locator(".nbdeploy-row-heading")).to_contain_text("v3")
    # v3 is served and earlier versions exist: Rollback stays, to serve the one before.
    expect(row.get_by_role("button", name=f"Roll back {NAME}")).to_have_attribute(
        "title", "Serve the version before v3 instead"
    )
    assert scripted.calls[1:] == [("POST", f"deployments/{NAME}/promote", {"version": 3})]
    shoot(page, "versions-after-promote")
