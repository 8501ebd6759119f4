"""The inline demo: ``ep.demo()`` is the Voila page's own widget tree, built from the same spec,
calling the same endpoint from the kernel's process."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from nbdeploy import _demo_template as page
from tests.helpers.demo import deploy_digits, nbdeploy_home, write_digit_png


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    home = tmp_path_factory.mktemp("inline-demo-home")
    with nbdeploy_home(home):
        endpoint = deploy_digits("digits-inline")
        try:
            yield home, endpoint
        finally:
            endpoint.stop()


def walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def test_inline_demo_predicts_the_same_label_as_the_endpoint(deployed, monkeypatch, tmp_path):
    import ipywidgets as w

    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    home, endpoint = deployed
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    widget = endpoint.demo()
    assert "nbd-demo" in widget._dom_classes
    parts = list(walk(widget))
    upload = next(p for p in parts if isinstance(p, w.FileUpload))
    predict = next(p for p in parts if "nbd-predict" in getattr(p, "_dom_classes", ()))
    output = next(p for p in parts if "nbd-output" in getattr(p, "_dom_classes", ()))

    spec = demo_spec(ModelRepository().get("digits-inline"))
    for index in (3, 7, 11):
        png = write_digit_png(index, tmp_path / f"d{index}.png").read_bytes()
        upload.value = (
            {
                "name": f"d{index}.png",
                "type": "image/png",
                "size": len(png),
                "content": memoryview(png),
                "last_modified": datetime.now(UTC),
            },
        )
        predict.click()
        pixels = page.apply_image_preprocessing(page.open_image(png), spec["preprocessing"])
        expected = str(int(np.argmax(endpoint.predict(pixels))))
        assert f'<b class="nbd-top1">{expected}</b>' in output.value, output.value


def test_inline_demo_by_name_is_the_same_page(deployed, monkeypatch):
    from nbdeploy.demo import inline_demo

    home, _ = deployed
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    widget = inline_demo("digits-inline", top_k=3)
    assert "nbd-demo" in widget._dom_classes


def test_a_kernel_links_through_the_jupyter_server_that_started_it(deployed, monkeypatch):
    """A kernel finds its server's record by JPY_PARENT_PID (or its parent pid); a record of a
    process that is gone is ignored."""
    import json
    import subprocess
    import sys

    from nbdeploy import _procs, api

    home, endpoint = deployed
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    assert api.links("digits-inline") == {
        "endpoint": endpoint.url,
        "endpoint_direct": endpoint.url,
        "demo": None,
        "demo_direct": None,
    }
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = home / "jupyter" / f"{server.pid}.json"
        record.parent.mkdir(exist_ok=True)
        info = {"base_url": "/user/ada/", "root_dir": str(home), "voila": True}
        record.write_text(json.dumps({**info, "start_time": _procs.start_time(server.pid)}))
        monkeypatch.setenv("JPY_PARENT_PID", str(server.pid))
        links = api.links("digits-inline")
        assert links["endpoint"] == "/user/ada/nbdeploy/proxy/digits-inline/"
        assert links["endpoint_direct"] == endpoint.url
        record.write_text(json.dumps({**info, "start_time": "1"}))
        assert api.links("digits-inline")["endpoint"] == endpoint.url
    finally:
        server.kill()
        server.wait()
