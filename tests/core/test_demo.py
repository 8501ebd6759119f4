"""The demo page without a browser: preprocessing, the page's pure functions, the generated
notebook run by a real kernel against a real endpoint, and the Voila launcher."""

from __future__ import annotations

import json
import os
import stat
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from nbdeploy import _demo_template as page
from nbdeploy._errors import DeployError, InputError
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.preprocess import apply_image_preprocessing, infer_preprocessing
from tests.helpers.demo import deploy_digits, digit_images, nbdeploy_home, write_digit_png


def signature(*inputs: TensorSpec, outputs: tuple[TensorSpec, ...] | None = None) -> Signature:
    outs = outputs or (TensorSpec("logits", "float32", (-1, 10)),)
    return Signature(inputs=inputs, outputs=outs)


# --- preprocessing inferred from signature + sample -------------------------------------------


def test_image_spec_from_digit_sample_records_layout_range_and_dark_background():
    images, _ = digit_images()
    spec = infer_preprocessing(signature(TensorSpec("x", "float32", (-1, 1, 8, 8))), images[:16])
    assert spec["kind"] == "image"
    assert (spec["layout"], spec["height"], spec["width"], spec["channels"]) == ("NCHW", 8, 8, 1)
    assert spec["range"] == [0.0, 1.0]
    assert spec["background"] == "dark"
    assert spec["input"] == "x" and spec["dtype"] == "float32"
    json.dumps(spec)


@pytest.mark.parametrize(
    ("scale", "expected"), [(16.0, [0.0, 16.0]), (255.0, [0.0, 255.0]), (1.0, [0.0, 1.0])]
)
def test_image_range_is_the_smallest_usual_range_holding_the_sample(scale, expected):
    images, _ = digit_images()
    sample = images[:8] * scale
    spec = infer_preprocessing(signature(TensorSpec("x", "float32", (-1, 1, 8, 8))), sample)
    assert spec["range"] == expected


def test_nhwc_rgb_with_dynamic_size_takes_the_size_from_the_sample():
    sample = np.random.default_rng(0).uniform(-1, 1, (2, 20, 30, 3)).astype(np.float32)
    spec = infer_preprocessing(signature(TensorSpec("img", "float32", (-1, -1, -1, 3))), sample)
    assert (spec["layout"], spec["height"], spec["width"], spec["channels"]) == ("NHWC", 20, 30, 3)
    assert spec["range"] == [-1.0, 1.0]
    assert spec["background"] is None


def test_dynamic_image_size_without_a_sample_is_a_readable_error():
    with pytest.raises(InputError, match="pass a sample"):
        infer_preprocessing(signature(TensorSpec("x", "float32", (-1, 1, -1, -1))), None)


def test_flattened_square_input_can_be_declared_an_image():
    spec = infer_preprocessing(signature(TensorSpec("x", "float32", (-1, 64))), None, kind="image")
    assert (spec["layout"], spec["height"], spec["width"]) == ("flat", 8, 8)


def test_tabular_spec_has_feature_names_and_example_rows():
    sample = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    spec = infer_preprocessing(
        signature(TensorSpec("features", "float32", (-1, 3))), sample, feature_names=["a", "b", "c"]
    )
    assert spec["kind"] == "tabular"
    assert spec["features"] == 3 and spec["feature_names"] == ["a", "b", "c"]
    assert len(spec["examples"]) == 4
    assert spec["examples"][1] == pytest.approx(sample[1].tolist(), rel=1e-5)
    sample[0, 1] = np.nan
    with_gap = infer_preprocessing(signature(TensorSpec("f", "float32", (-1, 3))), sample)
    assert with_gap["examples"][0] == pytest.approx(sample[1].tolist(), rel=1e-5)
    with pytest.raises(InputError, match="2 feature names given for 3 features"):
        infer_preprocessing(
            signature(TensorSpec("f", "float32", (-1, 3))), sample, feature_names=["a", "b"]
        )


def test_text_and_token_id_specs():
    text = infer_preprocessing(signature(TensorSpec("text", "str", (-1,))), None)
    assert (text["kind"], text["encoding"]) == ("text", "string")
    tokens = infer_preprocessing(signature(TensorSpec("ids", "int64", (-1, 12))), None)
    assert (tokens["kind"], tokens["encoding"], tokens["max_length"]) == ("text", "token_ids", 12)


def test_multi_input_models_get_the_json_editor_with_the_sample_rows():
    sig = signature(TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int64", (-1, 1)))
    spec = infer_preprocessing(sig, {"a": np.array([[0.5, 1.25]]), "b": np.array([[3]])})
    assert spec["kind"] == "tensor"
    assert spec["examples"] == {"a": [[0.5, 1.25]], "b": [[3]]}


def test_describe_inputs_falls_back_to_the_json_editor_instead_of_failing():
    from nbdeploy.preprocess import describe_inputs

    dynamic = signature(TensorSpec("x", "float32", (-1, 1, -1, -1)))
    assert describe_inputs(dynamic, None, kind="image")["kind"] == "tensor"
    wrong_sample = describe_inputs(dynamic, np.zeros((2, 5)), kind="image")
    assert wrong_sample["kind"] == "tensor"
    images, _ = digit_images()
    fixed = signature(TensorSpec("x", "float32", (-1, 1, 8, 8)))
    assert describe_inputs(fixed, images[:4], kind="image")["background"] == "dark"
    assert describe_inputs(fixed, 1 - images[:4], kind="image")["background"] == "light"


# --- applying it (the very code the page runs) -------------------------------------------------


DIGIT_SPEC = {
    "kind": "image",
    "input": "x",
    "dtype": "float32",
    "layout": "NCHW",
    "height": 8,
    "width": 8,
    "channels": 1,
    "range": [0.0, 1.0],
    "background": "dark",
}


def test_upscaled_digit_png_shrinks_back_to_the_original_pixels(tmp_path):
    images, _ = digit_images()
    path = write_digit_png(1500, tmp_path / "digit.png")
    array = apply_image_preprocessing(Image.open(path), DIGIT_SPEC)
    assert array.shape == (1, 1, 8, 8) and array.dtype == np.float32
    np.testing.assert_allclose(array[0], images[1500], atol=0.5 / 255 + 1e-6)


def test_black_ink_on_white_paper_is_inverted_for_a_dark_background_model(tmp_path):
    dark = apply_image_preprocessing(Image.open(write_digit_png(7, tmp_path / "d.png")), DIGIT_SPEC)
    light_path = write_digit_png(7, tmp_path / "l.png", light=True)
    light = apply_image_preprocessing(Image.open(light_path), DIGIT_SPEC)
    np.testing.assert_allclose(light, dark, atol=1e-6)
    kept = apply_image_preprocessing(Image.open(light_path), {**DIGIT_SPEC, "background": None})
    np.testing.assert_allclose(kept, 1.0 - dark, atol=1e-6)


def test_rgb_nhwc_scaling_mean_std_and_integer_dtypes():
    image = Image.new("RGB", (40, 20), (255, 0, 51))
    spec = {"layout": "NHWC", "height": 10, "width": 20, "channels": 3, "range": [0, 255]}
    array = apply_image_preprocessing(image, spec)
    assert array.shape == (1, 10, 20, 3)
    np.testing.assert_allclose(array[0, 0, 0], [255, 0, 51], atol=1e-3)
    normalised = apply_image_preprocessing(
        image, {**spec, "layout": "NCHW", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    )
    np.testing.assert_allclose(normalised[0, :, 0, 0], [1.0, -1.0, -0.6], atol=1e-5)
    as_uint8 = apply_image_preprocessing(image, {**spec, "dtype": "uint8"})
    assert as_uint8.dtype == np.uint8 and as_uint8[0, 0, 0].tolist() == [255, 0, 51]


def test_transparent_pixels_take_the_models_background(tmp_path):
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((255, 255, 255, 255), (6, 0, 10, 16))
    array = apply_image_preprocessing(image, {**DIGIT_SPEC, "background": None})
    assert array.max() == pytest.approx(1.0) and array[0, 0, 0, 0] == pytest.approx(1.0)
    dark = apply_image_preprocessing(image, DIGIT_SPEC)
    assert dark[0, 0, 0, 0] == 0.0 and dark.max() == pytest.approx(1.0)


def test_not_an_image_is_a_readable_error():
    with pytest.raises(page.DemoError, match=r"could not read 'notes.txt' as an image"):
        page.open_image(b"just some text", "notes.txt")


def test_form_text_and_json_inputs_refuse_bad_values_plainly():
    spec = {"features": 2, "feature_names": ["age", "dose"], "dtype": "float32"}
    np.testing.assert_array_equal(page.tabular_array(["1.5", 2], spec), [[1.5, 2.0]])
    with pytest.raises(page.DemoError, match="feature 'dose' must be a number"):
        page.tabular_array([1, "lots"], spec)
    with pytest.raises(page.DemoError, match="must be a finite number"):
        page.tabular_array([1, float("nan")], spec)
    ids = page.text_array("5, 6 7", {"encoding": "token_ids", "max_length": 5, "dtype": "int64"})
    np.testing.assert_array_equal(ids, [[5, 6, 7, 0, 0]])
    with pytest.raises(page.DemoError, match="token ids"):
        page.text_array("hello", {"encoding": "token_ids"})
    assert page.text_array(" hi ", {"encoding": "string", "shape": [-1, 1]}).tolist() == [["hi"]]
    inputs = [{"name": "a", "dtype": "float32", "shape": [-1, 2]}]
    arrays = page.json_inputs('{"a": [[1, 2]]}', inputs)
    assert arrays["a"].dtype == np.float32 and arrays["a"].tolist() == [[1.0, 2.0]]
    assert page.json_inputs('{"a": {"shape": [3, 2], "fill": 1}}', inputs)["a"].sum() == 6
    with pytest.raises(page.DemoError, match="not valid JSON"):
        page.json_inputs("{a: 1}", inputs)
    with pytest.raises(page.DemoError, match=r"must have shape \[-1, 2\]"):
        page.json_inputs('{"a": [[1, 2, 3]]}', inputs)
    with pytest.raises(page.DemoError, match=r"no value for input\(s\) \['a'\]"):
        page.json_inputs('{"b": 1}', inputs)


def test_scores_become_probabilities_and_the_chart_escapes_labels():
    logits = np.array([[0.0, 2.0, 1.0]])
    probs = page.class_probabilities(logits)
    np.testing.assert_allclose(probs, np.exp([0, 2, 1]) / np.exp([0, 2, 1]).sum())
    np.testing.assert_allclose(page.class_probabilities(np.array([[0.2, 0.8]])), [0.2, 0.8])
    np.testing.assert_allclose(page.class_probabilities(np.array([[0.3]])), [0.7, 0.3])
    sigmoid = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(page.class_probabilities(np.array([[2.0]])), [1 - sigmoid, sigmoid])
    demo = {"output": "p", "labels": ["<b>cat</b>", "dog", "eel"], "top_k": 2}
    ranked = page.ranked_labels({"p": logits}, demo)
    assert [label for label, _ in ranked] == ["dog", "eel"]
    html = page.result_html(page.ranked_labels({"p": -logits}, demo), 12.34, {})
    assert '<b class="nbd-top1">&lt;b&gt;cat&lt;/b&gt;</b>' in html
    assert "12.3" in html and "<b>cat</b>" not in html
    assert "nbd-error" in page.error_html("boom <here>") and "&lt;here&gt;" in page.error_html(
        "<here>"
    )


# --- the page's widgets, driven from Python ---------------------------------------------------


def demo_for(kind: str, preprocessing: dict, inputs: list[dict] | None = None) -> dict:
    inputs = inputs or [{"name": "x", "dtype": "float32", "shape": [-1, 2]}]
    return {
        "kind": kind,
        "preprocessing": {"kind": kind, "input": inputs[0]["name"], **preprocessing},
        "inputs": inputs,
        "output": "p",
        "labels": None,
        "top_k": 3,
    }


def test_tabular_form_has_a_field_per_feature_filled_from_the_examples():
    spec = {"features": 2, "feature_names": ["age", "dose"], "examples": [[1.5, 2], [3, 4]]}
    app = page.DemoApp("http://127.0.0.1:9", None, "m", demo_for("tabular", spec))
    fields = [w for w in app.input_area.children if hasattr(w, "children")][0].children
    assert [f.description for f in fields] == ["age", "dose"]
    np.testing.assert_array_equal(app.read_input()["x"], [[1.5, 2.0]])
    picker = next(w for w in app.input_area.children if "nbd-examples" in w._dom_classes)
    picker.value = 1
    np.testing.assert_array_equal(app.read_input()["x"], [[3.0, 4.0]])


def test_pressing_predict_without_input_or_endpoint_shows_readable_errors():
    image = demo_for("image", {k: v for k, v in DIGIT_SPEC.items() if k != "input"})
    app = page.DemoApp("http://127.0.0.1:9", None, "m", image)
    assert app.pad is not None and app.upload is not None
    app.predict()
    assert "upload an image or draw on the pad first" in app.output.value
    assert not app.predict_button.disabled
    json_app = page.DemoApp("http://127.0.0.1:9", None, "m", demo_for("tensor", {}))
    assert json.loads(json_app.input_area.children[1].value) == {"x": {"shape": [1, 2], "fill": 0}}
    json_app.predict()
    assert "cannot reach the endpoint at http://127.0.0.1:9" in json_app.output.value


def test_text_box_sends_strings():
    demo = demo_for(
        "text",
        {"encoding": "string", "shape": [-1]},
        [{"name": "t", "dtype": "str", "shape": [-1]}],
    )
    app = page.DemoApp("http://127.0.0.1:9", None, "m", demo)
    app.input_area.children[1].value = "great movie"
    assert app.read_input()["t"].tolist() == ["great movie"]


# --- a real deployment: notebook generation, execution, Voila --------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """One digits CNN endpoint for this module, in its own NBDEPLOY_HOME."""
    home = tmp_path_factory.mktemp("demo-home")
    with nbdeploy_home(home):
        endpoint = deploy_digits()
        try:
            yield home, endpoint
        finally:
            from nbdeploy.demo import stop_demo

            stop_demo("digits")
            endpoint.stop()


@pytest.fixture
def digits_home(deployed, monkeypatch):
    home, endpoint = deployed
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    return endpoint


def test_write_demo_is_a_private_standalone_notebook_with_parameters_first(digits_home):
    from nbdeploy.demo import write_demo

    endpoint = digits_home
    path = write_demo("digits")
    assert path.parent.name == "demos" and path.name == "digits.ipynb"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.tags
    assert f"ENDPOINT_URL = {endpoint.url!r}" in code[0].source
    assert f"TOKEN = {endpoint.token!r}" in code[0].source
    assert all("nbdeploy" not in line for line in _import_lines(notebook))


def _import_lines(notebook) -> list[str]:
    return [
        line
        for cell in notebook.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if line.startswith(("import ", "from "))
    ]


def test_generated_notebook_predicts_what_the_endpoint_predicts(digits_home, tmp_path):
    """Run the notebook in a real kernel, feed its page an uploaded PNG, press Predict."""
    from nbclient import NotebookClient

    from nbdeploy.client import V2Client
    from nbdeploy.demo import write_demo

    endpoint = digits_home
    notebook = nbformat.read(write_demo("digits"), as_version=4)
    png = write_digit_png(1500, tmp_path / "digit.png")
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "app = DemoApp(ENDPOINT_URL, TOKEN, MODEL_NAME, DEMO)\n"
            f"content = open({str(png)!r}, 'rb').read()\n"
            "import datetime\n"
            "app.upload.value = ({'name': 'digit.png', 'type': 'image/png', 'size': len(content),"
            " 'content': memoryview(content),"
            " 'last_modified': datetime.datetime.now(datetime.timezone.utc)},)\n"
            "app.predict()\n"
            "print(app.output.value)"
        )
    )
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    html = "".join(out.get("text", "") for out in notebook.cells[-1].outputs)
    spec = notebook_demo_spec(notebook)["preprocessing"]
    array = apply_image_preprocessing(Image.open(png), spec)
    expected = V2Client(endpoint.url, token=endpoint.token).infer("digits", {spec["input"]: array})
    label = str(int(np.argmax(next(iter(expected.values()))[0])))
    assert f'<b class="nbd-top1">{label}</b>' in html
    assert "nbd-latency-ms" in html


def notebook_demo_spec(notebook) -> dict:
    source = next(cell.source for cell in notebook.cells if cell.source.startswith("DEMO = "))
    namespace: dict = {}
    exec(source, namespace)
    return namespace["DEMO"]


def test_demo_without_recorded_preprocessing_is_inferred_from_the_signature(digits_home):
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    artifact = ModelRepository().get("digits")
    artifact.metadata.pop("preprocessing", None)
    spec = demo_spec(artifact, top_k=3)
    assert spec["kind"] == "image" and spec["top_k"] == 3
    assert spec["preprocessing"]["height"] == 8 and spec["preprocessing"]["layout"] == "NCHW"
    assert spec["labels"] == [str(d) for d in range(10)]
    assert spec["output"] == artifact.signature.outputs[0].name


def test_a_wrong_token_tells_where_to_set_it(digits_home):
    images, _ = digit_images()
    endpoint = digits_home
    name = endpoint.signature.inputs[0].name
    outputs, latency_ms = page.infer(endpoint.url, endpoint.token, "digits", {name: images[:1]})
    assert latency_ms > 0 and next(iter(outputs.values())).shape == (1, 10)
    with pytest.raises(page.DemoError, match=r"could not prove.*set TOKEN at the top"):
        page.infer(endpoint.url, "wrong", "digits", {name: images[:1]})


def test_a_page_holding_a_stale_url_follows_the_deployment(digits_home, tmp_path):
    """After a redeploy the port changes; a page that has nbdeploy finds the new one by name."""
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    endpoint = digits_home
    demo = demo_spec(ModelRepository().get("digits"))
    app = page.DemoApp("http://127.0.0.1:9", "stale-token", "digits", demo)
    app.upload.value = (
        {
            "name": "digit.png",
            "type": "image/png",
            "size": 0,
            "content": memoryview(write_digit_png(3, tmp_path / "d.png").read_bytes()),
            "last_modified": datetime.now(UTC),
        },
    )
    app.predict()
    assert 'class="nbd-top1"' in app.output.value, app.output.value
    assert (app.url, app.token) == (endpoint.url, endpoint.token)


def test_launch_demo_serves_the_page_without_its_token_and_stops_cleanly(digits_home):
    from nbdeploy.demo import launch_demo, running_demos, stop_demo

    endpoint = digits_home
    server = launch_demo("digits")
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.alive
        assert launch_demo("digits").pid == server.pid
        assert [s.name for s in running_demos()] == ["digits"]
        page_html = _get(server.url)
        assert "digits: live demo" in page_html
        assert "application/vnd.jupyter.widget-view+json" in page_html
        assert endpoint.token not in page_html
        assert "def apply_image_preprocessing" not in page_html
        notebook = nbformat.read(server.notebook, as_version=4)
        notebook.cells.insert(0, nbformat.v4.new_markdown_cell("regenerated-marker"))
        nbformat.write(notebook, server.notebook)
        assert "regenerated-marker" in _get(server.url), "Voila should re-read the notebook"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(server.url + "voila/files/digits.ipynb")
        assert refused.value.code in (403, 404)
        kernels = _children_of(server.pid)
        assert kernels, "loading the page should have started a kernel"
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in kernels]
        assert {command[0].decode() for command in commands} == {sys.executable}
        assert all(b"ipykernel_launcher" in command for command in commands)
    finally:
        assert stop_demo("digits")
    assert not server.alive
    assert not any(Path(f"/proc/{pid}").exists() for pid in kernels)
    assert running_demos() == []
    assert not stop_demo("digits")


def test_launch_on_a_taken_port_is_a_readable_error(digits_home):
    import socket

    from nbdeploy.demo import launch_demo

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(DeployError, match="already in use"):
            launch_demo("digits", port=sock.getsockname()[1])


def test_demo_of_an_unknown_deployment_names_the_running_ones(digits_home):
    from nbdeploy.demo import write_demo

    with pytest.raises(DeployError, match=r"no active deployment named 'nope'.*digits"):
        write_demo("nope")


def test_voila_extension_path_needs_the_demo_under_the_server_root(digits_home, tmp_path):
    from nbdeploy.demo import voila_extension_path

    home = Path(os.environ["NBDEPLOY_HOME"])
    assert voila_extension_path("digits", home) == "voila/render/demos/digits.ipynb"
    with pytest.raises(DeployError, match="outside the Jupyter server's root"):
        voila_extension_path("digits", tmp_path)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read().decode()


def _children_of(pid: int) -> list[int]:
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat_file.parent.name))
    return children
