"""JupyterLab in a real browser: the Deployments sidebar, its Stop and Logs buttons, the commands.

Starts ``jupyter lab`` on 127.0.0.1 with a token and drives headless Chromium with Playwright.
Screenshots land in ``test-artifacts/lab/`` at the repository root, with the server's log.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

import nbdeploy as nbd
from nbdeploy import api
from nbdeploy.runtimes import free_port
from tests.helpers.browser import chromium_context, chromium_missing, stop_process
from tests.helpers.onnx_models import save_linear

REPO = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = REPO / "nbdeploy" / "labextension"
ARTIFACTS = REPO / "test-artifacts" / "lab"
NAME = "ui-linear"
SIDEBAR = "#nbdeploy-deployments"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
    pytest.mark.skipif(
        not (BUILT_EXTENSION / "package.json").exists(),
        reason="the lab extension is not built: run scripts/build-labextension.sh",
    ),
]


@dataclass
class Lab:
    url: str
    token: str
    home: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}/nbdeploy/api/{path}", headers=self.auth, timeout=30)


def _write_settings(settings_dir: Path) -> None:
    """No news prompt: it would cover the sidebar and asks the network for news."""
    target = (
        settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    )
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _wait_until_serving(lab: Lab, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited; its log:\n{log.read_text()[-4000:]}")
        try:
            if lab.api("deployments").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"jupyter lab did not answer in 120 s; its log:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab serving the freshly built extension, with its own Jupyter dirs and home.

    Its root dir is NBDEPLOY_HOME, so Voila's server extension renders the demo notebooks
    (``demos/<name>.ipynb``) through the Jupyter URL.
    """
    base = tmp_path_factory.mktemp("lab")
    for sub in ("home", "config", "data", "runtime", "settings", "workspaces", "labext"):
        (base / sub).mkdir()
    _write_settings(base / "settings")
    # The build under test comes first, ahead of any (possibly stale) installed copy.
    (base / "labext" / "nbdeploy").symlink_to(BUILT_EXTENSION)
    (base / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"nbdeploy.jupyter.server": True}}})
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyter-lab.log"
    lab = Lab(
        url=f"http://127.0.0.1:{free_port()}", token=secrets.token_hex(16), home=base / "home"
    )
    env = {
        **os.environ,
        "NBDEPLOY_HOME": str(lab.home),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={lab.url.rsplit(':', 1)[1]}",
        "--ServerApp.port_retries=0",
        "--ServerApp.allow_root=True",
        f"--IdentityProvider.token={lab.token}",
        f"--ServerApp.root_dir={lab.home}",
        f"--LabApp.user_settings_dir={base / 'settings'}",
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
        f"--LabApp.extra_labextensions_path={base / 'labext'}",
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=lab.home
        )
    try:
        _wait_until_serving(lab, process, log)
        yield lab
    finally:
        stop_process(process)


@pytest.fixture
def lab_home(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point this process's nbdeploy at the lab's home, and stop what the test deployed."""
    monkeypatch.setenv("NBDEPLOY_HOME", str(lab.home))
    yield lab.home
    for endpoint in nbd.deployments():
        endpoint.stop()


@pytest.fixture
def page(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A Chromium page with a fresh profile; its last state is kept as a screenshot."""
    expect.set_options(timeout=15_000)
    with chromium_context(1400, 900) as context:
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        yield page
        shoot(page, f"{request.node.name}-last")


def open_lab(page, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.wait_for_selector(f'.jp-SideBar [data-id="{SIDEBAR[1:]}"]', timeout=90_000)


def run_from_palette(page, label: str, attempts: int = 3) -> None:
    """Open the command palette, type ``label`` and run the command once it is the active item.

    Enter rather than a click: the palette re-renders its items whenever a command's state
    changes (a kernel starting does), which detaches the element a click would aim at. The
    palette also closes when something else takes the focus (a notebook that just opened), so
    an attempt that loses it starts over.
    """
    palette_input = page.locator(".lm-CommandPalette-input")
    active = page.locator(".lm-CommandPalette-item.lm-mod-active .lm-CommandPalette-itemLabel")
    for attempt in range(attempts):
        try:
            page.keyboard.press("Control+Shift+C")
            palette_input.fill(label, timeout=5_000)
            expect(active).to_have_text(label, timeout=5_000)
            palette_input.press("Enter", timeout=5_000)
            expect(palette_input).to_be_hidden(timeout=5_000)
            return
        except (AssertionError, PlaywrightError):
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")


def shoot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_sidebar_lists_opens_logs_and_stops_a_deployment(
    lab: Lab, lab_home: Path, page, tmp_path: Path
) -> None:
    sample = np.zeros((2, 4), np.float32)
    artifact = nbd.export(save_linear(tmp_path / "linear.onnx"), None, name=NAME)
    artifact.benchmark = nbd.benchmark(
        [artifact], sample, batch_sizes=(1,), baseline=False
    ).to_dict()
    endpoint = nbd.deploy(artifact, sample, name=NAME, runtime="process")
    open_lab(page, lab)
    run_from_palette(page, "nbdeploy: Show deployments")
    sidebar = page.locator(SIDEBAR)
    expect(sidebar).to_be_visible()
    row = sidebar.locator(f'.nbdeploy-row[data-name="{NAME}"]')
    expect(row).to_be_visible()
    expect(row.locator(".nbdeploy-status")).to_have_class("nbdeploy-status nbdeploy-status-ok")
    expect(row).to_contain_text(f"v{endpoint.version}")
    expect(row).to_contain_text("process")
    # Remote-style: the endpoint and the demo are opened only through Jupyter's URL.
    proxied = f"{lab.url}/nbdeploy/proxy/{NAME}/"
    expect(row.locator(".nbdeploy-url-text")).to_have_text(proxied)
    expect(row.locator(".nbdeploy-url-direct")).to_have_text(endpoint.url)
    expect(row.locator(".nbdeploy-status")).to_have_attribute(
        "title", f"running: the endpoint answers at {endpoint.url}"
    )
    expect(row.locator(".nbdeploy-p50")).to_have_text(
        re.compile(r"^p50 \d+(\.\d+)? ms( \(in-process\)| · p99 \d+(\.\d+)? ms)$")
    )
    metadata = httpx.get(f"{proxied}v2/models/{NAME}", headers=lab.auth, timeout=30)
    assert metadata.status_code == 200 and metadata.json()["name"] == NAME
    assert httpx.get(f"{proxied}v2/models/{NAME}", timeout=30).status_code in (302, 403)
    (record,) = (lab.home / "jupyter").glob("*.json")
    assert json.loads(record.read_text())["voila"] is True
    shoot(page, "sidebar")

    # No demo server runs yet: Open demo starts one and lands on a page of Jupyter's origin.
    assert api.links(NAME)["demo_direct"] is None
    demo_button = row.locator('[data-action="open-demo"]')
    expect(demo_button).to_be_enabled()
    with page.context.expect_page() as opened:
        demo_button.click()
    demo = opened.value
    demo.wait_for_url(f"{lab.url}/voila/render/demos/{NAME}.ipynb*", timeout=60_000)
    expect(demo.get_by_role("button", name="Predict")).to_be_visible(timeout=60_000)
    demo.get_by_role("button", name="Predict").click()
    expect(demo.locator(".nbd-latency")).to_be_visible(timeout=30_000)
    shoot(demo, "demo")
    demo.close()
    assert api.links(NAME)["demo_direct"] is not None
    api.stop_demo(NAME)

    row.locator('[data-action="logs"]').click()
    logs = page.locator(".nbdeploy-logs")
    expect(logs).to_contain_text("ready")
    expect(page.locator(".lm-TabBar-tab", has_text=f"Logs: {NAME}")).to_be_visible()
    shoot(page, "logs")

    light = sidebar.evaluate("node => getComputedStyle(node).backgroundColor")
    run_from_palette(page, "Use Theme: JupyterLab Dark")
    page.wait_for_selector('body[data-jp-theme-light="false"]', state="attached")
    page.wait_for_selector("#jupyterlab-splash", state="detached")
    expect(sidebar).not_to_have_css("background-color", light)
    shoot(page, "sidebar-dark")
    run_from_palette(page, "Use Theme: JupyterLab Light")
    page.wait_for_selector('body[data-jp-theme-light="true"]', state="attached")

    row.locator('[data-action="stop"]').click()
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    expect(row).to_have_count(0)
    expect(sidebar.locator(".nbdeploy-empty")).to_contain_text("No deployments yet")
    expect(sidebar.locator(".nbdeploy-magic")).to_have_text(
        "%deploy model --sample x[:8] --name my-model"
    )
    expect(sidebar.locator('[data-action="copy-magic"]')).to_be_visible()
    shoot(page, "sidebar-after-stop")

    listing = lab.api("deployments")
    assert listing.status_code == 200
    assert listing.json() == {"deployments": []}
    assert lab.api(f"deployments/{NAME}").status_code == 404
    assert nbd.deployments() == []


def test_a_gone_server_says_why_in_its_tooltip(
    lab: Lab, lab_home: Path, page, tmp_path: Path
) -> None:
    import signal

    sample = np.zeros((2, 4), np.float32)
    endpoint = nbd.deploy(
        save_linear(tmp_path / "linear.onnx"), sample, name="ui-gone", runtime="process"
    )
    os.kill(int(endpoint.handle.ref), signal.SIGKILL)
    open_lab(page, lab)
    run_from_palette(page, "nbdeploy: Show deployments")
    row = page.locator(f'{SIDEBAR} .nbdeploy-row[data-name="ui-gone"]')
    expect(row.locator(".nbdeploy-status")).to_have_attribute(
        "title", "exited: the server process is gone; see Logs", timeout=30_000
    )
    expect(row.locator('[data-action="open-demo"]')).to_be_disabled()
    shoot(page, "sidebar-exited")


def test_insert_deploy_panel_adds_the_cell(lab: Lab, lab_home: Path, page) -> None:
    open_lab(page, lab)
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell").first).to_be_visible()
    expect(page.locator(".jp-StatusBar-Widget", has_text="Idle").first).to_be_visible(
        timeout=60_000
    )

    cells = notebook.locator(".jp-Cell")
    expect(cells).to_have_count(1)

    run_from_palette(page, "nbdeploy: Insert deploy panel")
    expect(cells).to_have_count(2)
    added = cells.nth(1)
    expect(added).to_have_class(re.compile(r"\bjp-CodeCell\b"))
    expect(added).to_have_class(re.compile(r"\bjp-mod-active\b"))
    lines = added.locator(".cm-content .cm-line")
    expect(lines).to_have_text(["from nbdeploy import DeployPanel", "DeployPanel()"])
    shoot(page, "insert-deploy-panel")
