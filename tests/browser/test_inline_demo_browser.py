"""The inline demo (``ep.demo()`` in a cell) in a real headless Chromium: Voila renders a small
notebook whose cell shows ``nbd.get(name).demo()``, and its label is the endpoint's own."""

from __future__ import annotations

import nbformat
import pytest
from nbformat import v4

from tests.browser.test_demo_browser import endpoint_label, open_demo, predict, upload
from tests.helpers.browser import chromium_context, chromium_missing, running_voila
from tests.helpers.demo import ARTIFACTS, deploy_digits, nbdeploy_home, write_digit_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]

NAME = "digits-inline"


def test_a_cell_showing_ep_demo_predicts_the_endpoints_label(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("inline-browser-home")
    with nbdeploy_home(home):
        endpoint = deploy_digits(NAME)
        notebook = tmp_path / "inline.ipynb"
        nbformat.write(
            v4.new_notebook(
                cells=[v4.new_code_cell(f"import nbdeploy as nbd\nnbd.get({NAME!r}).demo()")],
                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            ),
            notebook,
        )
        try:
            with running_voila(notebook, tmp_path) as url:
                png = write_digit_png(1500, tmp_path / "digit.png")
                expected = endpoint_label(endpoint, png)
                with chromium_context() as browser:
                    page = open_demo(browser, url)
                    upload(page, png)
                    page.wait_for_function(
                        "() => (document.querySelector('img.nbd-preview')"
                        ".getAttribute('src') || '') !== ''",
                        timeout=90_000,
                    )
                    assert predict(page) == expected
                    assert endpoint.token not in page.content()
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "inline-demo.png"), full_page=True)
                    page.close()
        finally:
            endpoint.stop()
