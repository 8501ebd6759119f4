"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

``tests/browser/conftest.py`` keeps pytest-jupyter's per-test event loop away from
Playwright's sync API, which runs its own.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright python package is not installed"
    return None


@contextmanager
def chromium_context(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A headless Chromium with a fresh profile that reaches 127.0.0.1 only; removed afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="nbdeploy-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": width, "height": height},
            )
            context.route(
                lambda url: not url.startswith("http://127.0.0.1"), lambda route: route.abort()
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def predict(page: Any, timeout_ms: int = 120_000) -> tuple[str, str]:
    """Press a demo page's Predict; the top label and its percentage of the new answer."""
    before = page.locator(".nbd-output").inner_html()
    page.locator("button.nbd-predict").click()
    page.wait_for_function(
        "(before) => { const out = document.querySelector('.nbd-output');"
        " return out.innerHTML !== before && out.querySelector('.nbd-top1-p') !== null; }",
        arg=before,
        timeout=timeout_ms,
    )
    return (
        page.locator(".nbd-output .nbd-top1").inner_text().strip(),
        page.locator(".nbd-output .nbd-top1-p").inner_text().strip(),
    )


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Stop a server a test started (Jupyter, Voila): politely, then by force."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def running_voila(notebook: Path, cwd: Path, timeout: float = 90.0) -> Iterator[str]:
    """Serve ``notebook`` with Voila as nbdeploy launches it (log in ``cwd/voila.log``); yield
    its URL once it answers, stop it afterwards."""
    from nbdeploy.demo import voila_command, voila_env
    from nbdeploy.runtimes.base import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(cwd / "voila.log", "wb") as log:
        process = subprocess.Popen(
            voila_command(notebook, port),
            env=voila_env(),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_voila(url, process, timeout)
            yield url
        finally:
            stop_process(process)


def _wait_for_voila(url: str, process: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voila exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "voila/static/", timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"voila did not answer at {url} in {timeout:.0f} s")
