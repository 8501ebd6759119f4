"""%deploy / %deployments / %undeploy in a real IPython shell, serving on the process runtime."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbdeploy as nbd
from nbdeploy.jupyter.magics import DeployMagic, DeployMagicError
from tests.helpers import models
from tests.helpers.onnx_models import linear_model, save_linear

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdeploy")
    magic = shell.magics_manager.registry["DeployMagic"]
    added = set(shell.user_ns)
    yield shell
    for endpoint in nbd.deployments():
        endpoint.stop()
    for name, trait in magic.traits(config=True).items():
        setattr(magic, name, trait.default())
    for name in set(shell.user_ns) - added:
        del shell.user_ns[name]


@pytest.fixture
def linear(ip, tmp_path):
    """An ONNX y = x @ W + b in the namespace as ``path``, with inputs ``x``."""
    _, weight, bias = linear_model()
    ip.user_ns["path"] = str(save_linear(tmp_path / "linear.onnx"))
    ip.user_ns["x"] = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    return weight, bias


def test_extension_registers_the_magics(ip):
    for name in ("deploy", "deployments", "undeploy"):
        assert name in ip.magics_manager.magics["line"]
    assert any(isinstance(c, DeployMagic) for c in ip.configurables)


def test_load_ext_puts_the_panel_in_the_namespace_without_an_import(ip):
    from nbdeploy.jupyter.panel import DeployPanel

    assert ip.user_ns["DeployPanel"] is DeployPanel
    assert "DeployPanel" in ip.user_ns_hidden, "not listed by %who, not offered as a model"
    ip.run_cell("panel = DeployPanel()")
    assert isinstance(ip.user_ns["panel"], DeployPanel)


def test_deploy_serves_the_model_then_lists_and_stops_it(ip, linear, capsys):
    weight, bias = linear
    endpoint = ip.run_line_magic("deploy", "path --sample x[:8] --name t1 --runtime process")

    assert isinstance(endpoint, nbd.Endpoint)
    assert endpoint.name == "t1" and endpoint.runtime == "process"
    x = ip.user_ns["x"]
    np.testing.assert_allclose(endpoint.predict(x), x @ weight + bias, rtol=1e-5, atol=1e-5)

    out = capsys.readouterr().out
    assert "export:" in out and "ready:" in out, out
    assert "t1 v1 is running on the process runtime" in out
    assert f"{endpoint.url}/v2/models/t1/infer" in out
    assert endpoint.token not in out and "Authorization: Bearer ${NBDEPLOY_TOKEN" in out

    table = ip.run_line_magic("deployments", "")
    assert table.names == ["t1"]
    assert "running" in repr(table) and endpoint.url in repr(table)
    assert "<table" in table._repr_html_()

    ip.run_line_magic("undeploy", "t1")
    assert "stopped t1 (version 1)" in capsys.readouterr().out
    assert nbd.deployments() == []
    assert repr(ip.run_line_magic("deployments", "")) == "no deployments are running"


def test_the_printed_curl_command_works_as_is(ip, linear, capsys):
    weight, bias = linear
    ip.run_line_magic("deploy", "path --name t2 --runtime process")
    out = capsys.readouterr().out
    command = out[out.index("curl -s") : out.index("\n\npython:")]

    reply = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)

    outputs = json.loads(reply.stdout)["outputs"]
    np.testing.assert_allclose(outputs[0]["data"], (np.zeros(4) @ weight + bias), rtol=1e-5)


def test_deploy_a_torch_model_named_after_its_variable(ip):
    import torch

    net = models.mlp()
    x, _ = models.digits()
    ip.user_ns.update(net=net, x_test=x[:32])

    endpoint = ip.run_cell("ep = %deploy net --sample x_test[:8] --runtime process --no-auth")
    assert endpoint.success, endpoint.error_in_exec
    ep = ip.user_ns["ep"]

    assert ep.name == "net" and ep.token is None
    with torch.no_grad():
        expected = net(torch.from_numpy(x[:32])).numpy()
    np.testing.assert_allclose(ep.predict(x[:32]), expected, rtol=1e-4, atol=1e-4)


def test_the_summary_lists_every_variant_that_was_weighed(ip, capsys):
    net = models.mlp()
    x, _ = models.digits()
    ip.user_ns.update(net=net, x_test=x[:64])

    ip.run_line_magic("deploy", "net --sample x_test --runtime process --quantize int8")
    out = capsys.readouterr().out
    table = out[out.index("variant") :]
    assert "fp32" in table
    assert re.search(r"int8-dynamic \(served\)", table), table
    kept = [entry["variant"] for entry in nbd.model("net").metadata["variants"]]
    assert kept == ["fp32", "int8-dynamic"]


def test_config_sets_the_defaults(ip, linear):
    ip.run_line_magic("config", 'DeployMagic.runtime = "process"')
    ip.run_line_magic("config", "DeployMagic.auth = False")

    endpoint = ip.run_line_magic("deploy", "path --name t3")

    assert endpoint.runtime == "process"
    assert endpoint.token is None
    ip.run_line_magic("config", 'DeployMagic.default_quantize = "int4"')
    assert ip.magics_manager.registry["DeployMagic"].default_quantize == "none"


def test_bench_adds_in_process_and_http_rows(ip, linear, capsys):
    ip.run_line_magic("config", "DeployMagic.bench_seconds = 0.2")

    ip.run_line_magic("deploy", "path --sample x[:4] --name t4 --runtime process --bench")

    out = capsys.readouterr().out
    assert "benchmark: over HTTP" in out
    rows = [line for line in out.splitlines() if line.startswith("t4:")]
    assert any(" onnxruntime " in row and row.endswith("ok") for row in rows), out
    assert any(" http-binary " in row and row.endswith("ok") for row in rows), out


def test_undeploy_all_asks_before_stopping_another_sessions_deployments(
    ip, linear, capsys, monkeypatch
):
    with monkeypatch.context() as patch:
        patch.setattr("nbdeploy.deployment.session_owner", lambda: "kernel k-other on elsewhere")
        nbd.deploy(ip.user_ns["path"], name="theirs", runtime="process")
    ip.run_line_magic("deploy", "path --name mine --runtime process")
    capsys.readouterr()

    with pytest.raises(DeployMagicError) as caught:
        ip.run_line_magic("undeploy", "--all")

    assert str(caught.value) == (
        "not stopping 1 deployment(s) made by another session: theirs (kernel k-other on"
        " elsewhere); %undeploy --all --force stops them too"
    )
    assert "stopped mine" in capsys.readouterr().out, "this session's own stop without asking"
    assert [ep.name for ep in nbd.deployments()] == ["theirs"]

    ip.run_line_magic("undeploy", "--all -f")
    assert "stopped theirs" in capsys.readouterr().out
    assert nbd.deployments() == []


def test_undeploy_all_stops_everything(ip, linear, capsys):
    for name in ("a1", "a2"):
        ip.run_line_magic("deploy", f"path --name {name} --runtime process")
    assert sorted(ep.name for ep in nbd.deployments()) == ["a1", "a2"]

    ip.run_line_magic("undeploy", "--all")

    assert nbd.deployments() == []
    out = capsys.readouterr().out
    assert "stopped a1" in out and "stopped a2" in out
    ip.run_line_magic("undeploy", "--all")
    assert "nothing to stop" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("nosuch --sample x", "MODEL: no variable named 'nosuch' in the notebook namespace"),
        ("path --sample x[:", "--sample 'x[:' is not a valid Python expression"),
        ("path --sample y_test[:8]", "--sample: no variable named 'y_test'"),
        ("path --sample x[:8].nope", "AttributeError"),
        ("path --quantize int4", "argument -q/--quantize: invalid choice: 'int4'"),
        ("path --runtime cloud", "invalid choice: 'cloud'"),
        ("path --name 'bad name!' --runtime process", "bad name!"),
        ("", "the following arguments are required: model"),
        (
            "path --quantise int8",
            "unrecognized arguments: --quantise int8 (did you mean --quantize?)",
        ),
        (
            "pth --sample x",
            "MODEL: no variable named 'pth' in the notebook namespace; did you mean 'path'?",
        ),
        (
            "path --sample xx",
            "--sample: no variable named 'xx' in the notebook namespace; did you mean 'x'?",
        ),
    ],
)
def test_bad_input_is_one_readable_error(ip, linear, line, message):
    with pytest.raises(DeployMagicError) as caught:
        ip.run_line_magic("deploy", line)

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert nbd.deployments() == []


def test_a_failing_cell_prints_one_line_not_a_traceback(ip, linear, capsys):
    result = ip.run_cell("%deploy nosuch")

    assert isinstance(result.error_in_exec, DeployMagicError)
    shown = ANSI.sub("", capsys.readouterr().out).strip()
    assert shown == (
        "nbdeploy: MODEL: no variable named 'nosuch' in the notebook namespace (found: path)"
    )


def test_an_unquoted_path_suggests_quoting_it(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_linear(tmp_path / "model.onnx")

    with pytest.raises(DeployMagicError) as caught:
        ip.run_line_magic("deploy", "model.onnx --runtime process")

    assert str(caught.value) == (
        "MODEL: no variable named 'model' in the notebook namespace;"
        ' did you mean %deploy "model.onnx"?'
    )
    endpoint = ip.run_line_magic("deploy", '"model.onnx" --runtime process --name quoted')
    assert endpoint.name == "quoted"


def test_a_failed_deploy_ends_its_progress_with_a_cross(ip, tmp_path, capsys):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")

    result = ip.run_cell(f"%deploy '{bogus}' --runtime process")

    assert isinstance(result.error_in_exec, DeployMagicError)
    lines = ANSI.sub("", capsys.readouterr().out).strip().splitlines()
    assert lines[-2:] == [
        "  \u2717 export failed",
        f"nbdeploy: {bogus} is not an ONNX model: onnx cannot parse it"
        " (Error parsing message with type 'onnx.ModelProto'); to serve the model object itself"
        " instead, pass fallback='python' (%deploy --python)",
    ], lines


def test_undeploy_errors(ip):
    with pytest.raises(DeployMagicError, match="no active deployment named 'ghost'"):
        ip.run_line_magic("undeploy", "ghost")
    with pytest.raises(DeployMagicError, match="or --all"):
        ip.run_line_magic("undeploy", "")
    with pytest.raises(DeployMagicError, match="takes no arguments"):
        ip.run_line_magic("deployments", "extra")


def test_short_errors_off_reraises_the_original_error(ip, linear):
    from nbdeploy.jupyter import ExpressionError

    ip.run_line_magic("config", "DeployMagic.short_errors = False")

    with pytest.raises(ExpressionError):
        ip.run_line_magic("deploy", "nosuch")
    with pytest.raises(nbd.DeployError):
        ip.run_line_magic("undeploy", "ghost")


def test_help_describes_every_option(ip, capsys):
    ip.run_cell("%deploy?")
    text = capsys.readouterr().out

    assert "%deploy" in text
    for option in ("--sample", "--name", "--quantize", "--runtime", "--bench", "--demo"):
        assert option in text
    for option in ("--labels", "--port", "--no-auth", "DeployMagic.runtime"):
        assert option in text


def test_the_printed_python_snippet_runs_as_is(ip, linear, capsys):
    weight, bias = linear
    ip.run_line_magic("deploy", "path --name t5 --runtime process")
    out = capsys.readouterr().out
    snippet = out[out.index("python:\n") + len("python:\n") :]

    namespace: dict = {}
    exec(compile(snippet, "<snippet>", "exec"), namespace)

    assert namespace["ep"].name == "t5"
    outputs = namespace["response"].json()["outputs"]
    np.testing.assert_allclose(outputs[0]["data"], np.zeros(4) @ weight + bias, rtol=1e-5)


def test_in_a_notebook_the_summary_is_html_and_errors_are_error_outputs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = save_linear(tmp_path / "linear.onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")
    cells = [
        "%load_ext nbdeploy\n"
        "%config DeployMagic.runtime = 'process'\n"
        "%config DeployMagic.bench_seconds = 0.2\n"
        "import numpy as np\n"
        "x = np.ones((4, 4), np.float32)",
        f"ep = %deploy '{path}' --sample x --name nb1 --bench",
        "%deploy nosuch",
        "%deployments",
        "ep.stop()",
        f"%deploy '{bogus}'",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(notebook, timeout=180, kernel_name="python3", allow_errors=True)
    try:
        client.execute()
    finally:
        for endpoint in nbd.deployments():
            endpoint.stop()
    deployed, failed, listed = (notebook.cells[i].outputs for i in (1, 2, 3))

    assert [o.output_type for o in deployed] == ["display_data"], deployed
    summary = deployed[0].data
    assert "nb1 v1 is running on the process runtime" in summary["text/plain"]
    page = summary["text/html"]
    assert "/v2/models/nb1/infer" in page and "Authorization: Bearer" in page
    assert "<img alt='latency plot' src='data:image/png;base64," in page
    assert "http-binary" in page

    assert [o.output_type for o in failed] == ["error"]
    assert failed[0].ename == "DeployMagicError"
    assert len(failed[0].traceback) == 1
    assert "no variable named 'nosuch'" in ANSI.sub("", failed[0].traceback[0])

    assert "<table" in listed[0].data["text/html"] and "nb1" in listed[0].data["text/html"]
    assert [o.output_type for o in notebook.cells[4].outputs] == []

    card, error = notebook.cells[5].outputs
    assert card.output_type == "display_data" and error.output_type == "error"
    page = card.data["text/html"]
    assert "&#10007; export failed: " in page and "is not an ONNX model" in page
    assert "&#8987;" not in page, "no step is left looking as if it still ran"


def test_demo_flag_starts_the_demo_page(ip, linear, capsys):
    import httpx

    from nbdeploy.demo import running_demos, stop_demo

    ip.run_line_magic("deploy", "path --sample x[:4] --name t9 --runtime process --demo")
    out = capsys.readouterr().out
    match = re.search(r"^demo: +(http://127\.0\.0\.1:\d+/\S*)", out, re.MULTILINE)
    assert match, out
    try:
        assert httpx.get(match.group(1), timeout=60).status_code == 200
        assert "t9" in [server.name for server in running_demos()]
    finally:
        assert stop_demo("t9")
