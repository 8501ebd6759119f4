"""Tabular models without a browser: the demo spec of a DataFrame model (columns, categories,
ranges, example rows), the page's form and prediction code run in-process against a real
endpoint, ``ep.predict(df)`` / ``ep.predict_frame(df)``, the summary's snippets, and a softmax
head quantized to int8 whose probabilities the page must show as the endpoint returns them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest

from nbdeploy import _demo_template as page
from nbdeploy._errors import InputError
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.preprocess import infer_preprocessing, tabular_inputs
from tests.helpers import tabular
from tests.helpers.demo import nbdeploy_home
from tests.helpers.tabular_demo import (
    CANCER_LABELS,
    answer_shown,
    deploy_case,
    deploy_softmax_iris,
    endpoint_answer,
    row_inputs,
)

pd = pytest.importorskip("pandas")

# --- the spec, from the signature and a DataFrame sample ---------------------------------------


def frame_signature(frame) -> Signature:
    kinds = {"f": "float32", "i": "int64", "b": "bool"}
    return Signature(
        inputs=tuple(
            TensorSpec(c, kinds.get(frame[c].dtype.kind, "str"), (-1, 1)) for c in frame.columns
        ),
        outputs=(TensorSpec("probabilities", "float32", (-1, 2)),),
    )


def mixed_frame():
    """Numeric breast-cancer columns, a string column, a bool column and an int64 column."""
    frame, _ = tabular.breast_cancer(numeric=4, categorical=True, boolean=True)
    visits = np.random.default_rng(0).integers(0, 12, len(frame))
    return frame.assign(visits=visits.astype(np.int64))


def test_spec_of_a_dataframe_model_has_columns_categories_ranges_and_rows():
    frame = mixed_frame()
    sample = frame.head(8)
    spec = infer_preprocessing(frame_signature(frame), sample.assign(unused=1.0))
    assert (spec["kind"], spec["layout"]) == ("tabular", "columns")
    assert [c["name"] for c in spec["columns"]] == list(frame.columns)
    assert spec["feature_names"][0] == "mean radius"
    by_name = {c["name"]: c for c in spec["columns"]}
    assert by_name["size"]["kind"] == "categorical" and by_name["size"]["dtype"] == "str"
    assert by_name["size"]["categories"] == sorted(set(sample["size"]))
    assert by_name["smooth"]["kind"] == "boolean"
    radius = by_name["mean radius"]
    assert radius["kind"] == "numeric" and radius["dtype"] == "float32"
    assert np.float32(radius["min"]) == sample["mean radius"].astype(np.float32).min()
    assert np.float32(radius["max"]) == sample["mean radius"].astype(np.float32).max()
    visits = by_name["visits"]
    assert visits["dtype"] == "int64" and isinstance(visits["min"], int)
    assert len(spec["examples"]) == 8
    for row, (_, expected) in zip(spec["examples"], sample.iterrows(), strict=True):
        for column, value, want in zip(spec["columns"], row, expected, strict=True):
            if column["kind"] == "numeric":
                assert np.asarray(value, column["dtype"]) == np.asarray(want, column["dtype"])
            else:
                assert value == want
    first = spec["request_example"]
    assert set(first) == set(frame.columns)
    assert first["size"] == [[sample["size"].iloc[0]]]
    assert first["smooth"] == [[bool(sample["smooth"].iloc[0])]]
    assert np.float32(first["mean radius"][0][0]) == np.float32(sample["mean radius"].iloc[0])
    json.dumps(spec)


def test_missing_numbers_are_kept_as_blanks_and_the_request_example_skips_them():
    sample = mixed_frame().head(4).copy()
    sample.iloc[0, 1] = np.nan
    spec = infer_preprocessing(frame_signature(sample), sample)
    assert spec["examples"][0][1] is None
    second = sample.iloc[1]
    assert np.float32(spec["request_example"][sample.columns[1]][0][0]) == np.float32(
        second.iloc[1]
    )
    assert spec["request_example"]["size"] == [[second["size"]]]


def test_a_one_matrix_model_labels_fields_with_the_recorded_feature_names(tmp_path):
    from nbdeploy.artifact import ModelArtifact
    from nbdeploy.demo import demo_spec
    from nbdeploy.preprocess import describe_inputs

    signature = Signature(
        inputs=(TensorSpec("X", "float32", (-1, 3)),),
        outputs=(TensorSpec("probabilities", "float32", (-1, 2)),),
    )
    sample = np.array([[1.5, 2.0, 3.25], [0.5, 8.0, 1.0]], dtype=np.float32)
    preprocessing = describe_inputs(signature, sample, kind="tabular")
    assert [c["name"] for c in preprocessing["columns"]] == ["x0", "x1", "x2"]
    assert preprocessing["columns"][1]["min"] == 2.0 and preprocessing["columns"][1]["max"] == 8.0
    artifact = ModelArtifact(
        path=tmp_path / "model.onnx",
        name="m",
        signature=signature,
        framework="sklearn",
        input_kind="tabular",
        metadata={
            "preprocessing": preprocessing,
            "feature_names": ["age", "dose", "weight"],
            "outputs": {"probabilities": {"kind": "probabilities", "classes": ["no", "yes"]}},
        },
    )
    spec = demo_spec(artifact)
    assert spec["preprocessing"]["feature_names"] == ["age", "dose", "weight"]
    assert [c["name"] for c in spec["preprocessing"]["columns"]] == ["age", "dose", "weight"]
    assert spec["labels"] == ["no", "yes"] and spec["output"] == "probabilities"
    app = page.DemoApp("http://127.0.0.1:9", None, "m", spec)
    assert [f.description.split(" <")[0] for f in app.fields] == ["age", "dose", "weight"]
    assert "2 – 8" in app.fields[1].description
    np.testing.assert_array_equal(app.read_input()["X"], sample[:1])


# --- what the outputs mean: recorded, never guessed -------------------------------------------


def test_probabilities_are_shown_as_returned_even_when_they_do_not_sum_to_one():
    """The bug from the issue: int8 probabilities summing to 0.996 were re-softmaxed."""
    outputs = {"probs": np.array([[0.9647059, 0.0235294, 0.0078431]], dtype=np.float32)}
    demo = {
        "outputs": {"probs": {"kind": "probabilities"}},
        "labels": ["a", "b", "c"],
        "top_k": 3,
    }
    answer = page.read_prediction(outputs, demo)
    assert answer["label"] == "a" and answer["scores"] == "probabilities"
    assert page.percent(answer["probability"]) == "96.5%"
    html = page.result_html(answer["ranked"], 1.0, outputs, **_shown(answer))
    assert "96.5%" in html and "as the endpoint returned them" in html


def test_logits_get_a_labelled_softmax_and_the_label_output_names_the_class():
    logits = np.array([[0.0, 2.0, 1.0]], dtype=np.float32)
    demo = {"outputs": {"scores": {"kind": "logits", "classes": ["x", "y", "z"]}}, "top_k": 2}
    answer = page.read_prediction({"scores": logits}, demo)
    expected = np.exp([0, 2, 1]) / np.exp([0, 2, 1]).sum()
    assert answer["label"] == "y" and answer["scores"] == "softmax of the logits"
    assert answer["probability"] == pytest.approx(expected[1])
    html = page.result_html(answer["ranked"][:2], 1.0, {}, **_shown(answer))
    assert "softmax of the logits" in html and html.count('class="nbd-row') == 2

    labelled = {
        "label": np.array([b"no"], dtype=object),
        "probabilities": np.array([[0.45, 0.55]], dtype=np.float32),
    }
    record = {
        "label": {"kind": "label", "classes": ["no", "yes"]},
        "probabilities": {"kind": "probabilities", "classes": ["no", "yes"]},
    }
    answer = page.read_prediction(labelled, {"outputs": record})
    assert answer["label"] == "no" and answer["probability"] == pytest.approx(0.45)

    value = page.read_prediction(
        {"y": np.array([[151.25]], dtype=np.float32)}, {"outputs": {"y": {"kind": "value"}}}
    )
    assert value["label"] == "151.25" and value["ranked"] == []
    assert '<b class="nbd-top1">151.25</b>' in page.result_html([], 1.0, {}, **_shown(value))


def _shown(answer: dict) -> dict:
    return {k: answer[k] for k in ("label", "probability", "scores")}


def test_prediction_frame_of_classifiers_and_regressors():
    from nbdeploy.endpoint import prediction_frame

    index = pd.Index([10, 11], name="patient")
    outputs = {
        "label": np.array([b"yes", b"no"], dtype=object),
        "probabilities": np.array([[0.1, 0.9], [0.7, 0.29]], dtype=np.float32),
    }
    record = {
        "label": {"kind": "label", "classes": ["no", "yes"]},
        "probabilities": {"kind": "probabilities", "classes": ["no", "yes"]},
    }
    frame = prediction_frame(outputs, record, index=index)
    assert list(frame.columns) == ["label", "p(no)", "p(yes)"]
    assert frame.index.equals(index) and frame["label"].tolist() == ["yes", "no"]
    np.testing.assert_array_equal(frame["p(yes)"], outputs["probabilities"][:, 1])
    logits = prediction_frame({"z": np.array([[0.0, 3.0]], dtype=np.float32)}, labels=["a", "b"])
    assert logits["label"].tolist() == ["b"]
    assert logits["p(b)"].iloc[0] == pytest.approx(np.exp(3) / (1 + np.exp(3)), rel=1e-6)
    regression = prediction_frame({"y": np.array([[1.5], [2.5]], dtype=np.float32)})
    assert list(regression.columns) == ["prediction"] and regression["prediction"].tolist() == [
        1.5,
        2.5,
    ]
    several = prediction_frame({"y": np.zeros((2, 2), dtype=np.float32)}, {"y": {"kind": "value"}})
    assert list(several.columns) == ["prediction_0", "prediction_1"]


# --- the form, driven from Python -------------------------------------------------------------


def test_the_form_offers_categories_ranges_and_example_rows():
    frame = mixed_frame()
    sample = frame.head(8)
    spec = infer_preprocessing(frame_signature(frame), sample)
    demo = {"kind": "tabular", "preprocessing": spec, "inputs": [], "top_k": 3}
    app = page.DemoApp("http://127.0.0.1:9", None, "m", demo)
    names = [c["name"] for c in spec["columns"]]
    size = app.fields[names.index("size")]
    assert type(size).__name__ == "Dropdown"
    assert [value for _, value in size.options] == sorted(set(sample["size"]))
    assert type(app.fields[names.index("smooth")]).__name__ == "Checkbox"
    assert app.fields[0].description.startswith(names[0])
    assert "nbd-range" in app.fields[0].description
    assert app.examples_picker.options[1] == ("example 2", 1)
    app.examples_picker.value = 1
    inputs = app.read_input()
    assert set(inputs) == set(names)
    assert inputs["size"].dtype == object
    assert inputs["size"].tolist() == [[sample["size"].iloc[1]]]
    assert inputs["smooth"].dtype == bool and inputs["smooth"][0, 0] == sample["smooth"].iloc[1]
    assert inputs["visits"].dtype == np.int64 and inputs["visits"][0, 0] == sample["visits"].iloc[1]
    assert inputs[names[0]].dtype == np.float32
    assert inputs[names[0]][0, 0] == np.float32(sample.iloc[1, 0])
    other = next(c for c in size.options[::-1] if c[1] != sample["size"].iloc[1])[1]
    size.value = other
    assert app.read_input()["size"].tolist() == [[other]]

    app.fields[1].value = ""
    with pytest.raises(
        page.DemoError, match=r"column 'mean texture' needs a number .*missing values"
    ):
        app.read_input()
    app.fields[1].value = "lots"
    with pytest.raises(page.DemoError, match=r"must be a number; got 'lots'"):
        app.read_input()
    assert np.isnan(
        tabular_inputs(
            ["" if i == 1 else v for i, v in enumerate(spec["examples"][0])],
            spec,
            accepts_nan=[names[1]],
        )[names[1]][0, 0]
    )
    app.fields[names.index("visits")].value = "2.5"
    app.fields[1].value = "1"
    with pytest.raises(page.DemoError, match="takes whole numbers"):
        app.read_input()


# --- a real DataFrame pipeline on the process runtime -----------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The "mixed" pipeline (numeric + string columns, ColumnTransformer), deployed once."""
    home = tmp_path_factory.mktemp("tabular-home")
    with nbdeploy_home(home):
        case, endpoint = deploy_case("cancer")
        try:
            yield {"home": home, "case": case, "endpoint": endpoint}
        finally:
            endpoint.stop()


@pytest.fixture
def cancer(served, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_HOME", str(served["home"]))
    return served


def test_predict_sends_a_dataframe_column_by_column(cancer):
    endpoint, case = cancer["endpoint"], cancer["case"]
    held_out = case.test.iloc[:40]
    outputs = endpoint.predict(held_out.assign(comment="not a model column"))
    np.testing.assert_allclose(
        outputs["probabilities"], case.model.predict_proba(held_out), atol=1e-5
    )
    np.testing.assert_array_equal(outputs["label"], case.model.predict(held_out))
    with pytest.raises(InputError) as missing:
        endpoint.predict(held_out.drop(columns=["size", "mean area"]))
    message = str(missing.value)
    assert "\n" not in message and "'size'" in message and "'mean area'" in message


def test_predict_frame_is_indexed_like_the_input_with_labels_and_probabilities(cancer):
    endpoint, case = cancer["endpoint"], cancer["case"]
    held_out = case.test.iloc[[50, 3, 77, 102]].set_axis(["a", "b", "c", "d"])
    result = endpoint.predict_frame(held_out)
    assert list(result.columns) == ["label", "p(malignant)", "p(benign)"]
    assert result.index.equals(held_out.index)
    expected = [CANCER_LABELS[i] for i in case.model.predict(held_out)]
    assert result["label"].tolist() == expected
    raw = endpoint.predict(held_out)["probabilities"]
    np.testing.assert_array_equal(result["p(malignant)"].to_numpy(), raw[:, 0])
    np.testing.assert_array_equal(result["p(benign)"].to_numpy(), raw[:, 1])


def test_the_page_predicts_what_the_endpoint_returns_for_each_example(cancer):
    from nbdeploy.demo import demo_spec

    endpoint = cancer["endpoint"]
    demo = demo_spec(endpoint.artifact)
    assert demo["outputs"]["probabilities"]["kind"] == "probabilities"
    examples = demo["preprocessing"]["examples"]
    assert len(examples) == 8
    app = page.DemoApp(endpoint.url, endpoint.token, endpoint.name, demo)
    size = app.fields[[c["name"] for c in demo["preprocessing"]["columns"]].index("size")]
    categories = [value for _, value in size.options]
    assert categories == ["large", "medium", "small"], "the encoder's categories, all of them"
    for index in range(len(examples)):
        app.examples_picker.value = index
        for category in (None, categories[index % len(categories)]):
            if category is not None:
                size.value = category
            app.predict()
            label, probability = endpoint_answer(endpoint, demo, [f.value for f in app.fields])
            assert answer_shown(app.output.value) == (label, page.percent(probability))


def test_the_generated_notebook_runs_the_form_in_a_real_kernel(cancer):
    from nbclient import NotebookClient

    from nbdeploy.demo import write_demo

    endpoint = cancer["endpoint"]
    notebook = nbformat.read(write_demo(endpoint.name), as_version=4)
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "app = DemoApp(ENDPOINT_URL, TOKEN, MODEL_NAME, DEMO)\n"
            "app.examples_picker.value = 1\n"
            "app.predict()\n"
            "print(app.output.value)\n"
            "print('ROW', [f.value for f in app.fields])"
        )
    )
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    text = "".join(out.get("text", "") for out in notebook.cells[-1].outputs)
    row = eval(text.split("ROW ", 1)[1])  # noqa: S307 - a list literal the cell printed
    from nbdeploy.demo import demo_spec

    demo = demo_spec(endpoint.artifact)
    assert row == [
        str(v) if not isinstance(v, str) else v for v in demo["preprocessing"]["examples"][1]
    ]
    label, probability = endpoint_answer(endpoint, demo, row)
    assert answer_shown(text) == (label, page.percent(probability))


def test_the_summary_snippets_send_a_real_row_and_never_print_the_token(cancer):
    from nbdeploy.jupyter.render import DeploySummary

    endpoint, sample = cancer["endpoint"], cancer["case"].sample
    summary = DeploySummary.from_endpoint(endpoint, endpoint.artifact)
    curl, python = summary.curl(), summary.python()
    for snippet in (curl, python, repr(summary), summary._repr_html_()):
        assert endpoint.token not in snippet
    assert "$NBDEPLOY_TOKEN" in curl.replace("${NBDEPLOY_TOKEN", "$NBDEPLOY_TOKEN")
    assert "headers=ep.headers" in python
    first = sample.iloc[0]
    radius = float(str(np.float32(first["mean radius"])))
    for entry in (
        {"name": "mean radius", "shape": [1, 1], "datatype": "FP32", "data": [radius]},
        {"name": "size", "shape": [1, 1], "datatype": "BYTES", "data": [first["size"]]},
    ):
        assert json.dumps(entry, separators=(",", ":")) in curl
    assert f'"data": [{radius!r}]' in python
    expected = endpoint.predict(sample.iloc[:1])

    reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    outputs = {o["name"]: o["data"] for o in json.loads(reply.stdout)["outputs"]}
    assert outputs["label"] == [int(expected["label"][0])]
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"][0], rtol=1e-6)

    namespace: dict = {}
    exec(compile(python, "<snippet>", "exec"), namespace)
    data = {o["name"]: o["data"] for o in namespace["response"].json()["outputs"]}
    assert data == outputs


# --- a softmax head quantized to int8 (the 22.5% vs 96.5%) ----------------------------


def test_the_int8_softmax_head_shows_the_endpoints_exact_top_probability(tmp_path, monkeypatch):
    from nbdeploy.demo import demo_spec

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path))
    endpoint, x = deploy_softmax_iris("iris-int8")
    try:
        artifact = endpoint.artifact
        assert artifact.variant.startswith("int8")
        demo = demo_spec(artifact)
        name = demo["output"]
        assert demo["outputs"][name]["kind"] == "probabilities"
        served = endpoint.predict(x)
        assert np.abs(served.sum(axis=1) - 1).max() > 1e-3, "int8 sums should be off from 1"
        app = page.DemoApp(endpoint.url, endpoint.token, endpoint.name, demo)
        for index in range(len(demo["preprocessing"]["examples"])):
            app.examples_picker.value = index
            app.predict()
            inputs = row_inputs(demo, [f.value for f in app.fields])
            returned = endpoint.predict(inputs)
            top = int(np.argmax(returned[0]))
            assert answer_shown(app.output.value) == (
                demo["labels"][top],
                page.percent(float(returned[0, top])),
            )
            assert "as the endpoint returned them" in app.output.value
    finally:
        endpoint.stop()


def test_answer_shown_reads_what_the_page_prints():
    html = page.result_html([("a", 0.5)], 1.0, {}, label="a", probability=0.5)
    assert answer_shown(html) == ("a", "50.0%")
    assert re.search("nbd-latency-ms", html)
    assert Path(page.__file__).name == "_demo_template.py"


def test_a_blank_number_is_sent_as_missing_to_a_model_that_imputes(tmp_path, monkeypatch):
    from nbdeploy.demo import demo_spec

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path))
    case, endpoint = deploy_case("imputer-demo", case="imputer")
    try:
        demo = demo_spec(endpoint.artifact)
        assert "mean texture" in demo["accepts_nan"]
        first = demo["preprocessing"]["examples"][0]
        assert np.isnan(case.sample["mean texture"].iloc[0]) and first[1] is None
        app = page.DemoApp(endpoint.url, endpoint.token, endpoint.name, demo)
        assert [f.value for f in app.fields][1] == ""
        assert "Leave a number blank for a missing value" in app.input_area.children[0].value
        app.predict()
        label, probability = endpoint_answer(endpoint, demo, [f.value for f in app.fields])
        assert answer_shown(app.output.value) == (label, page.percent(probability))
        expected = case.model.predict_proba(case.sample.iloc[:1])[0]
        assert probability == pytest.approx(expected[int(label)], abs=1e-5)
    finally:
        endpoint.stop()
