"""The demo page of a raw-text classifier in a real headless Chromium, served by Voila.

The sentiment model (a small BERT with its WordPiece tokenizer) is deployed with
``tokenizer=``: the page is a text box filled with the sample's first text ("Fill with" picks
another); after Predict it must show the label and the probability (softmax of the logits,
said so) that the endpoint's own answer gives for the text typed.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from nbdeploy import _demo_template as page_code
from tests.helpers.browser import chromium_context, chromium_missing, predict
from tests.helpers.demo import ARTIFACTS, nbdeploy_home

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

PAGE_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The sentiment endpoint, its Voila demo and one headless browser."""
    from tests.helpers.text import deploy_sentiment

    home = tmp_path_factory.mktemp("text-browser-home")
    with nbdeploy_home(home):
        from nbdeploy.demo import launch_demo, stop_demo

        endpoint = deploy_sentiment("sentiment")
        try:
            server = launch_demo("sentiment")
            with chromium_context() as browser:
                yield {"endpoint": endpoint, "server": server, "browser": browser}
        finally:
            stop_demo("sentiment")
            endpoint.stop()


def endpoint_answer(endpoint: Any, text: str) -> tuple[str, float]:
    """The label and its probability for ``text``, from a raw V2 request (not the page's code)."""
    from tests.helpers.text import LABELS

    response = httpx.post(
        f"{endpoint.url}/v2/models/{endpoint.name}/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]},
        headers=endpoint.headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    logits = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = int(probabilities.argmax())
    return LABELS[top], float(probabilities[top])


def test_the_text_box_shows_the_endpoints_label_and_probability(demo):
    from tests.helpers.text import SAMPLE_TEXTS

    endpoint = demo["endpoint"]
    page = demo["browser"].new_page()
    try:
        page.goto(demo["server"].url, timeout=PAGE_TIMEOUT_MS)
        page.locator("button.nbd-predict").wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
        box = page.locator(".nbd-text textarea")
        assert box.input_value() == SAMPLE_TEXTS[0]

        label, probability = endpoint_answer(endpoint, SAMPLE_TEXTS[0])
        assert predict(page) == (label, page_code.percent(probability))
        assert "softmax of the logits" in page.locator(".nbd-output").inner_text()

        page.locator(".nbd-examples select").select_option(label="example 2")
        page.wait_for_function(
            "(want) => document.querySelector('.nbd-text textarea').value === want",
            arg=SAMPLE_TEXTS[1],
            timeout=PAGE_TIMEOUT_MS,
        )
        label, probability = endpoint_answer(endpoint, SAMPLE_TEXTS[1])
        assert predict(page) == (label, page_code.percent(probability))

        typed = "Honestly, the acting was brilliant and the music lovely."
        box.fill(typed)
        label, probability = endpoint_answer(endpoint, typed)
        assert predict(page) == (label, page_code.percent(probability))
        assert endpoint.token not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-text.png"), full_page=True)
    finally:
        page.close()
