"""DeployPanel driven the way a user would, by setting widget values and clicking, no browser."""

from __future__ import annotations

import time

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbdeploy as nbd
from nbdeploy import DeployPanel
from nbdeploy.jupyter.panel import DeploymentRow
from tests.helpers import models
from tests.helpers.onnx_models import linear_model, save_linear


@pytest.fixture(autouse=True)
def stop_deployments():
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()


@pytest.fixture
def linear(tmp_path):
    """A namespace with an ONNX file path, its inputs, and the exact weights."""
    _, weight, bias = linear_model()
    namespace = {
        "onnx_path": str(save_linear(tmp_path / "linear.onnx")),
        "x": np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32),
    }
    return namespace, weight, bias


def _click(panel: DeployPanel, button) -> None:
    button.click()
    panel.wait(timeout=300)
    assert not panel.busy


def test_finds_models_and_arrays_without_importing_frameworks(tmp_path, linear):
    namespace, _, _ = linear
    namespace.update(
        net=models.mlp(),
        labels=np.arange(16),
        not_a_path=str(tmp_path / "missing.onnx"),
        text="hello",
        count=3,
        np=np,
        _hidden=models.mlp(),
    )
    panel = DeployPanel(namespace=namespace)

    assert [value for _, value in panel.model_picker.options] == ["onnx_path", "net"]
    assert [value for _, value in panel.sample_picker.options] == ["", "x", "labels"]
    labels = dict(panel.model_picker.options)
    assert "torch" in next(label for label in labels if label.startswith("net:"))
    assert panel.sample_picker.options[1][0] == "x: ndarray float32 (16, 4)"

    namespace["net2"] = models.mlp()
    panel.model_picker.value = "net"
    panel.rescan_button.click()
    assert panel.model_picker.value == "net"
    assert "net2" in [value for _, value in panel.model_picker.options]


def test_defaults_to_the_ipython_namespace():
    shell = InteractiveShell.instance()
    shell.user_ns["panel_net"] = models.mlp()
    try:
        panel = DeployPanel()
        assert panel.namespace is shell.user_ns
        assert "panel_net" in [value for _, value in panel.model_picker.options]
    finally:
        del shell.user_ns["panel_net"]


def test_deploy_lists_the_deployment_and_stop_stops_it(linear):
    namespace, weight, bias = linear
    panel = DeployPanel(namespace=namespace)
    panel.model_picker.value = "onnx_path"
    panel.sample_expression.value = "x[:8]"
    panel.name_box.value = "p1"
    panel.runtime_picker.value = "process"

    _click(panel, panel.deploy_button)

    assert panel.last_error is None, panel.log_text
    assert panel.progress.value == 1.0
    assert "ready:" in panel.log_text and "deployed p1 v1" in panel.log_text
    x = namespace["x"]
    np.testing.assert_allclose(nbd.get("p1").predict(x), x @ weight + bias, rtol=1e-5, atol=1e-5)
    row = panel.deployment_rows["p1"]
    assert isinstance(row, DeploymentRow) and "running" in row.label.value

    summary = panel.summary
    assert summary is not None and "p1 v1 is running on the process runtime" in repr(summary)
    shown = panel.results.outputs[-1]["data"]
    assert shown["text/html"] == summary._repr_html_()
    assert (
        "/v2/models/p1/infer" in shown["text/html"]
        and "Authorization: Bearer" in shown["text/html"]
    )

    row.logs_button.click()
    assert "logs of p1" in row.logs_view.value, "the logs open inside the row that asked"
    row.logs_button.click()
    assert row.logs_view.value == ""

    _click(panel, row.stop_button)

    assert nbd.deployments() == []
    assert panel.deployment_rows == {}
    assert "stopped p1 (version 1)" in panel.log_text


def test_export_quantize_benchmark_and_deploy_a_torch_model():
    x, _ = models.digits()
    namespace = {"net": models.mlp(), "x_test": x[:64]}
    panel = DeployPanel(namespace=namespace)
    panel.bench_seconds = 0.05
    panel.model_picker.value = "net"
    panel.sample_picker.value = "x_test"

    _click(panel, panel.export_button)

    assert panel.last_error is None, panel.log_text
    assert panel.artifact.variant == "fp32" and panel.artifact.name == "net"
    assert "parity max abs" in panel.log_text
    assert "fp32" in panel.results.outputs[0]["data"]["text/html"]

    panel.quantize_picker.value = "int8"
    _click(panel, panel.quantize_button)

    assert panel.last_error is None, panel.log_text
    (variant,) = panel.variants
    assert variant.variant.startswith("int8") and variant.ok
    table = panel.results.outputs[0]["data"]["text/plain"]
    assert "fp32" in table and variant.variant in table

    _click(panel, panel.benchmark_button)

    assert panel.last_error is None, panel.log_text
    measured = {(r.target, r.batch_size) for r in panel.report.results if r.ok}
    assert {("net:fp32", 1), (variant.label, 8)} <= measured
    variants_table, benchmark = (output["data"] for output in panel.results.outputs)
    fp32_row = variants_table["text/plain"].splitlines()[2]
    assert (
        fp32_row.startswith("fp32") and f"{panel.report.latency_ms(1)['net:fp32']:.3f}" in fp32_row
    )
    assert "data:image/png;base64," in benchmark["text/html"]

    panel.quantize_picker.value = "none"
    panel.runtime_picker.value = "process"
    _click(panel, panel.deploy_button)

    assert panel.last_error is None, panel.log_text
    assert panel.log_text.count("export: converting") == 1, "deploy re-exported the model"
    endpoint = nbd.get("net")
    assert endpoint.token and endpoint.version == 1
    import torch

    with torch.no_grad():
        expected = namespace["net"](torch.from_numpy(x[:16])).numpy()
    np.testing.assert_allclose(endpoint.predict(x[:16]), expected, rtol=1e-4, atol=1e-4)


def test_buttons_are_disabled_while_busy_and_a_second_click_waits(linear):
    namespace, _, _ = linear
    panel = DeployPanel(namespace=namespace)
    panel.model_picker.value = "onnx_path"
    panel.runtime_picker.value = "process"
    panel.name_box.value = "p2"

    panel.deploy_button.click()
    assert panel.busy
    assert all(button.disabled for button in panel.action_buttons)
    panel.export_button.click()
    panel.wait(timeout=300)

    assert "busy: export waits until the current task has finished" in panel.log_text
    assert not any(button.disabled for button in panel.action_buttons)
    assert [ep.name for ep in nbd.deployments()] == ["p2"]


@pytest.mark.parametrize(
    ("model", "expression", "message"),
    [
        ("onnx_path", "x[:", "error: sample 'x[:' is not a valid Python expression"),
        ("onnx_path", "y_test", "error: sample: no variable named 'y_test'"),
        ("net", "", "error: exporting a torch model needs a sample input"),
    ],
)
def test_errors_are_one_line_in_the_log(linear, model, expression, message):
    namespace, _, _ = linear
    namespace["net"] = models.mlp()
    panel = DeployPanel(namespace=namespace)
    panel.model_picker.value = model
    panel.sample_expression.value = expression

    _click(panel, panel.export_button)

    assert panel.log_lines[-1].startswith(message), panel.log_text
    assert "\n" not in panel.log_lines[-1]
    assert panel.last_error is not None and panel.progress.bar_style == "danger"
    assert not any(button.disabled for button in panel.action_buttons)


def test_nothing_to_pick_is_reported(tmp_path):
    panel = DeployPanel(namespace={"x": np.zeros((2, 2))})

    assert panel.model_picker.options == ()
    panel.export_button.click()

    assert panel.log_lines[-1] == "error: pick a model first (the model dropdown is empty)"
    panel.benchmark_button.click()
    assert panel.last_error is not None


def test_a_dataframe_pipeline_is_picked_benchmarked_and_deployed():
    from tests.helpers import tabular

    case = tabular.case("mixed")
    namespace = {"pipe": case.model, "train": case.train, "head": case.train.head(8)}
    panel = DeployPanel(namespace=namespace)
    assert "pipe" in [value for _, value in panel.model_picker.options]
    assert "head" in [value for _, value in panel.sample_picker.options]
    panel.model_picker.value = "pipe"
    panel.sample_picker.value = "head"
    panel.name_box.value = "frame"
    panel.runtime_picker.value = "process"

    _click(panel, panel.benchmark_button)
    assert panel.last_error is None, panel.log_text
    _click(panel, panel.deploy_button)
    assert panel.last_error is None, panel.log_text
    answers = nbd.get("frame").predict_frame(case.test)
    assert (answers["label"].to_numpy() == case.model.predict(case.test).astype(str)).all()
    nbd.undeploy("frame")


def test_the_log_is_single_spaced_and_scrolled_to_the_newest_line(linear):
    panel = DeployPanel(namespace=linear[0])
    for i in range(3):
        panel._log(f"line {i}\n")
    page = panel.log_view.value
    assert "<br>" not in page and "\n" not in page
    assert page.count("<div style='white-space:pre-wrap;margin:0'>") == 3
    assert "flex-direction:column-reverse" in page, "a reversed column stays scrolled to the end"
    assert page.index("line 0") < page.index("line 2")


def test_the_list_refreshes_itself_while_the_panel_is_displayed(linear, tmp_path):
    namespace = linear[0]
    shell = InteractiveShell.instance()
    panel = DeployPanel(namespace=namespace)
    panel.refresh_interval = 0.2
    assert not panel.auto_refreshing
    shell.display_formatter.format(panel)  # what displaying the panel in a cell does
    assert panel.auto_refreshing
    try:
        nbd.deploy(namespace["onnx_path"], name="p-auto", runtime="process")
        deadline = time.monotonic() + 30
        while "p-auto" not in panel.deployment_rows and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "p-auto" in panel.deployment_rows, "appeared without pressing refresh"
        assert "p-auto" in panel.deployments_box.children[0].label.value
    finally:
        panel.close()
    panel._refresher.join(timeout=5)
    assert not panel.auto_refreshing, "closing the panel stops the timer"


def test_stopping_another_sessions_deployment_asks_first(linear, monkeypatch):
    namespace = linear[0]
    with monkeypatch.context() as patch:
        patch.setattr("nbdeploy.deployment.session_owner", lambda: "kernel other on elsewhere")
        nbd.deploy(namespace["onnx_path"], name="p-theirs", runtime="process")
    nbd.deploy(namespace["onnx_path"], name="p-mine", runtime="process")
    panel = DeployPanel(namespace=namespace)
    theirs, mine = panel.deployment_rows["p-theirs"], panel.deployment_rows["p-mine"]

    theirs.stop_button.click()
    assert theirs.asking and not panel.busy
    assert theirs.question.value == "stop p-theirs, made by kernel other on elsewhere?"
    theirs.cancel_button.click()
    assert not theirs.asking
    assert sorted(ep.name for ep in nbd.deployments()) == ["p-mine", "p-theirs"]

    _click(panel, mine.stop_button)  # this session's own: no question
    assert [ep.name for ep in nbd.deployments()] == ["p-theirs"]

    theirs.stop_button.click()
    _click(panel, theirs.confirm_button)
    assert nbd.deployments() == []
    assert "stopped p-theirs (version 1)" in panel.log_text


def test_in_a_notebook_the_panel_needs_no_import_and_shows_the_deploy_summary(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = save_linear(tmp_path / "linear.onnx")
    cells = [
        "%load_ext nbdeploy\nimport numpy as np\n"
        f"onnx_path = '{path}'\nx = np.ones((4, 4), np.float32)",
        "panel = DeployPanel()\npanel.refresh_interval = 0.2\npanel",
        "panel.model_picker.value = 'onnx_path'\npanel.sample_picker.value = 'x'\n"
        "panel.name_box.value = 'p-nb'\npanel.runtime_picker.value = 'process'\n"
        "panel.deploy_button.click()\npanel.wait(300)\nprint(panel.last_error)\npanel.summary",
        "import time\nimport nbdeploy as nbd\n"
        "nbd.deploy(onnx_path, name='p-api', runtime='process')\n"
        "deadline = time.monotonic() + 30\n"
        "while 'p-api' not in panel.deployment_rows and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "print(sorted(panel.deployment_rows))",
        "panel.close()\npanel._refresher.join(5)\nprint('refreshing:', panel.auto_refreshing)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(notebook, timeout=300, kernel_name="python3")
    try:
        client.execute()
    finally:
        for endpoint in nbd.deployments():
            endpoint.stop()
    shown, deployed, listed, closed = (notebook.cells[i].outputs for i in (1, 2, 3, 4))

    assert "application/vnd.jupyter.widget-view+json" in shown[0].data
    assert deployed[0].text == "None\n"
    summary = deployed[1].data
    assert "p-nb v1 is running on the process runtime" in summary["text/plain"]
    assert "/v2/models/p-nb/infer" in summary["text/html"]
    assert listed[0].text == "['p-api', 'p-nb']\n", "the list refreshed by itself"
    assert closed[0].text == "refreshing: False\n"
