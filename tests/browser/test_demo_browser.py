"""The Voila demo page in a real headless Chromium, against a real digits endpoint.

The label the page shows must be the one the endpoint itself returns for the same picture,
preprocessed here with the very functions the page runs.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import chromium_context, chromium_missing, stop_process
from tests.helpers.demo import ARTIFACTS, deploy_digits, nbdeploy_home, write_digit_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]

PAGE_TIMEOUT_MS = 90_000
HELD_OUT_DIGIT = 1500


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A deployed digits CNN, its Voila demo server and a headless browser, for the module."""
    home = tmp_path_factory.mktemp("browser-home")
    with nbdeploy_home(home):
        from nbdeploy.demo import launch_demo, stop_demo

        endpoint = deploy_digits()
        try:
            server = launch_demo("digits")
            with chromium_context() as browser:
                yield {"home": home, "endpoint": endpoint, "server": server, "browser": browser}
        finally:
            stop_demo("digits")
            endpoint.stop()


@pytest.fixture
def home_env(demo, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_HOME", str(demo["home"]))
    return demo


def open_demo(browser: Any, url: str) -> Any:
    """Load the page and wait until its Predict button is live."""
    page = browser.new_page()
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    button = page.locator("button.nbd-predict")
    button.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
    assert button.is_enabled()
    return page


def upload(page: Any, path: Path) -> None:
    """ipywidgets 8's FileUpload has no file input in the page: answer its file chooser."""
    with page.expect_file_chooser() as chooser:
        page.locator("button.nbd-upload").click()
    chooser.value.set_files(str(path))


def endpoint_label(endpoint: Any, png: Path) -> str:
    """What the endpoint answers for this picture, preprocessed as the page does."""
    from nbdeploy.client import V2Client
    from nbdeploy.demo import demo_spec
    from nbdeploy.preprocess import apply_image_preprocessing
    from nbdeploy.repository import ModelRepository

    spec = demo_spec(ModelRepository().get(endpoint.name, endpoint.version))
    array = apply_image_preprocessing(Image.open(png), spec["preprocessing"])
    outputs = V2Client(endpoint.url, token=endpoint.token).infer(
        endpoint.name, {spec["preprocessing"]["input"]: array}
    )
    return spec["labels"][int(np.argmax(outputs[spec["output"]][0]))]


def predict(page: Any) -> str:
    """Press Predict and return the top label the page shows."""
    page.locator("button.nbd-predict").click()
    top = page.locator(".nbd-output .nbd-top1")
    top.wait_for(timeout=PAGE_TIMEOUT_MS)
    return top.inner_text().strip()


def test_uploaded_digit_shows_the_label_the_endpoint_returns(home_env, tmp_path):
    png = write_digit_png(HELD_OUT_DIGIT, tmp_path / "digit.png")
    expected = endpoint_label(home_env["endpoint"], png)
    page = open_demo(home_env["browser"], home_env["server"].url)
    try:
        upload(page, png)
        page.wait_for_function(
            "() => (document.querySelector('img.nbd-preview').getAttribute('src') || '') !== ''",
            timeout=PAGE_TIMEOUT_MS,
        )
        assert predict(page) == expected
        latency = float(page.locator(".nbd-latency-ms").inner_text())
        assert latency > 0
        assert page.locator(".nbd-row").count() == 5
        assert home_env["endpoint"].token not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-digits-upload.png"), full_page=True)
    finally:
        page.close()


def test_a_file_that_is_not_an_image_shows_a_readable_error(home_env, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture of a digit")
    page = open_demo(home_env["browser"], home_env["server"].url)
    try:
        upload(page, notes)
        error = page.locator(".nbd-output .nbd-error")
        error.wait_for(timeout=PAGE_TIMEOUT_MS)
        assert "could not read 'notes.txt' as an image" in error.inner_text()
        page.locator("button.nbd-predict").click()
        page.wait_for_function(
            "() => document.querySelector('.nbd-output .nbd-error')"
            " && !document.querySelector('.nbd-output .nbd-busy')",
            timeout=PAGE_TIMEOUT_MS,
        )
        assert "please upload a PNG" in page.locator(".nbd-output .nbd-error").inner_text()
        assert page.locator(".nbd-top1").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-digits-bad-upload.png"), full_page=True)
    finally:
        page.close()


def test_drawing_on_the_pad_inks_it_and_gets_a_prediction(home_env):
    page = open_demo(home_env["browser"], home_env["server"].url)
    try:
        pad = page.locator("canvas.nbd-pad")
        pad.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function(
            "() => { const c = document.querySelector('canvas.nbd-pad');"
            " return c.getContext('2d').getImageData(2, 2, 1, 1).data[3] === 255; }",
            timeout=PAGE_TIMEOUT_MS,
        )
        box = pad.bounding_box()
        x, top, bottom = box["x"] + box["width"] / 2, box["y"] + 30, box["y"] + box["height"] - 30
        page.mouse.move(x, top)
        page.mouse.down()
        for step in range(1, 21):
            page.mouse.move(x, top + (bottom - top) * step / 20)
        page.mouse.up()
        page.wait_for_function(
            "() => document.querySelector('canvas.nbd-pad').getContext('2d')"
            ".getImageData(96, 96, 1, 1).data[0] === 255",
            timeout=PAGE_TIMEOUT_MS,
        )
        assert predict(page) in {str(d) for d in range(10)}
    finally:
        page.close()


def test_the_page_is_reachable_through_jupyter_servers_voila_extension(home_env, tmp_path):
    from nbdeploy.demo import voila_env, voila_extension_path
    from nbdeploy.runtimes import free_port

    token, port = secrets.token_hex(16), free_port()
    log = open(tmp_path / "jupyter.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={home_env['home']}",
            f"--IdentityProvider.token={token}",
            "--ServerApp.allow_root=True",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=voila_env(),
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_jupyter(base, token, server, tmp_path / "jupyter.log")
        png = write_digit_png(HELD_OUT_DIGIT, tmp_path / "digit.png")
        url = f"{base}{voila_extension_path('digits', home_env['home'])}?token={token}"
        page = open_demo(home_env["browser"], url)
        try:
            upload(page, png)
            assert predict(page) == endpoint_label(home_env["endpoint"], png)
        finally:
            page.close()
    finally:
        stop_process(server)
        log.close()


def wait_for_jupyter(
    base: str, token: str, server: subprocess.Popen, log: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the Jupyter server exited at start:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"the Jupyter server did not answer within {timeout} s")
