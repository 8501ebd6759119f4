"""The demo page of tabular models in a real headless Chromium, served by Voila.

A DataFrame pipeline (numeric columns and a string column): the form has the real column names,
a dropdown of categories, "fill with example N"; what it shows after Predict must be the label
and the top probability the endpoint returns for that row. A softmax head quantized to int8:
the page shows the endpoint's probability as returned (it once re-applied softmax).
"""

from __future__ import annotations

from typing import Any

import pytest

from nbdeploy import _demo_template as page_code
from tests.helpers.browser import chromium_context, chromium_missing, predict
from tests.helpers.demo import ARTIFACTS, nbdeploy_home
from tests.helpers.tabular_demo import deploy_case, deploy_softmax_iris, endpoint_answer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]

PAGE_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Both models deployed, their Voila demos served, and one headless browser."""
    home = tmp_path_factory.mktemp("tabular-browser-home")
    with nbdeploy_home(home):
        from nbdeploy.demo import launch_demo, stop_demo

        endpoints: dict[str, Any] = {}
        try:
            endpoints["cancer"] = deploy_case("cancer")[1]
            endpoints["iris-int8"] = deploy_softmax_iris("iris-int8")[0]
            servers = {name: launch_demo(name) for name in endpoints}
            with chromium_context() as browser:
                yield {"home": home, "endpoints": endpoints, "servers": servers, "browser": browser}
        finally:
            for name, endpoint in endpoints.items():
                stop_demo(name)
                endpoint.stop()


@pytest.fixture
def home_env(demos, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_HOME", str(demos["home"]))
    return demos


def spec_of(endpoint: Any) -> dict[str, Any]:
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    return demo_spec(ModelRepository().get(endpoint.name, endpoint.version))


def open_demo(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    button = page.locator("button.nbd-predict")
    button.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
    return page


def fill_with_example(page: Any, number: int, first_value: Any) -> None:
    """Choose "example N" and wait until the first field shows that row's value."""
    page.locator(".nbd-examples select").select_option(label=f"example {number}")
    expected = str(first_value)
    page.wait_for_function(
        "(want) => document.querySelector('.nbd-feature input').value === want",
        arg=expected,
        timeout=PAGE_TIMEOUT_MS,
    )


def shown_value(column: dict[str, Any], value: Any) -> str:
    return repr(float(value)) if column["dtype"].startswith("float") else str(value)


def test_the_form_with_a_category_and_an_example_row_shows_the_endpoints_answer(home_env):
    endpoint = home_env["endpoints"]["cancer"]
    demo = spec_of(endpoint)
    columns = demo["preprocessing"]["columns"]
    row = list(demo["preprocessing"]["examples"][1])
    page = open_demo(home_env["browser"], home_env["servers"]["cancer"].url)
    try:
        labels = [t.strip() for t in page.locator(".nbd-feature label").all_inner_texts()]
        assert labels[0].startswith("mean radius") and "size" in labels
        size = page.locator(".nbd-feature select")
        assert size.locator("option").all_inner_texts() == ["large", "medium", "small"]
        size.select_option("small")
        fill_with_example(page, 2, shown_value(columns[0], row[0]))
        assert size.input_value() == row[-1], "filling takes the row's category too"

        label, probability = endpoint_answer(endpoint, demo, row)
        assert predict(page) == (label, page_code.percent(probability))

        other = next(c for c in ("small", "medium", "large") if c != row[-1])
        size.select_option(other)
        label, probability = endpoint_answer(endpoint, demo, [*row[:-1], other])
        assert predict(page) == (label, page_code.percent(probability))
        assert "as the endpoint returned them" in page.locator(".nbd-output").inner_text()
        assert endpoint.token not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-tabular-form.png"), full_page=True)
    finally:
        page.close()


def test_an_int8_softmax_head_shows_the_probability_the_endpoint_returns(home_env):
    endpoint = home_env["endpoints"]["iris-int8"]
    demo = spec_of(endpoint)
    assert demo["outputs"][demo["output"]]["kind"] == "probabilities"
    row = demo["preprocessing"]["examples"][1]
    page = open_demo(home_env["browser"], home_env["servers"]["iris-int8"].url)
    try:
        fill_with_example(page, 2, shown_value(demo["preprocessing"]["columns"][0], row[0]))
        label, probability = endpoint_answer(endpoint, demo, row)
        assert predict(page) == (label, page_code.percent(probability))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-int8-softmax.png"), full_page=True)
    finally:
        page.close()
