"""Off-the-shelf ONNX classifier files: skl2onnx's default ZipMap output, per-column inputs,
and the one clear error for outputs that are not tensors. Real skl2onnx, scikit-learn and
onnxruntime throughout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import nbdeploy as nbd
from nbdeploy import cli
from nbdeploy._errors import ExportError
from nbdeploy._types import Signature, onnx_type_text

pytest.importorskip("skl2onnx")

OPSETS = {"": 17, "ai.onnx.ml": 3}
NAMES = np.array(["setosa", "versicolor", "virginica"])


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def _estimator(kind: str):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if kind == "logreg":
        return LogisticRegression(max_iter=500)
    return RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0)


def _default_file(tmp_path: Path, kind: str, classes: str) -> tuple[Path, object, np.ndarray]:
    """A classifier converted by skl2onnx with default options (ZipMap on), saved to a file."""
    from skl2onnx import to_onnx

    x, y = _iris()
    target = NAMES[y] if classes == "str" else y
    model = _estimator(kind).fit(x, target)
    proto = to_onnx(model, x[:1], target_opset=OPSETS)
    path = tmp_path / f"{kind}_{classes}.onnx"
    onnx.save(proto, str(path))
    return path, model, x


@pytest.fixture(scope="module")
def zipmap_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, np.ndarray]:
    return _default_file(tmp_path_factory.mktemp("zipmap"), "logreg", "int")


@pytest.mark.parametrize("kind", ["logreg", "forest"])
@pytest.mark.parametrize("classes", ["int", "str"])
def test_default_skl2onnx_classifier_file(tmp_path: Path, kind: str, classes: str) -> None:
    path, model, x = _default_file(tmp_path, kind, classes)
    probability = onnx.load(str(path)).graph.output[1]
    key = "int64" if classes == "int" else "string"
    assert onnx_type_text(probability.type) == f"seq(map({key},tensor(float)))"
    expected_classes = [str(c) for c in model.classes_]

    for sample in (None, x[:7]):
        artifact = nbd.export(path, sample)
        outputs = {spec.name: spec for spec in artifact.signature.outputs}
        assert outputs["output_probability"].dtype == "float32"
        assert outputs["output_probability"].shape == (-1, 3)
        assert outputs["output_label"].shape == (-1,)
        assert artifact.labels == expected_classes
        meta = artifact.metadata
        assert meta["outputs"] == {
            "output_probability": {"kind": "probabilities", "classes": expected_classes},
            "output_label": {"kind": "label", "classes": expected_classes},
        }
        (record,) = meta["rewritten"]
        assert record["output"] == "output_probability" and record["removed"] == "ZipMap"
        assert record["before"] == f"seq(map({key},tensor(float)))"
        assert record["after"] == "tensor(float) [-1, 3]"
        if kind == "logreg":  # NaN in, NaN probabilities out: refused by the server
            assert meta["accepts_nan"] == []

        session = ort.InferenceSession(str(artifact.path))
        labels, probabilities = session.run(["output_label", "output_probability"], {"X": x})
        np.testing.assert_allclose(probabilities, model.predict_proba(x), atol=1e-5)
        assert [str(v) for v in labels] == [str(v) for v in model.predict(x)]

    stored = json.loads((artifact.path.parent / "nbdeploy.json").read_text())
    assert stored["metadata"]["outputs"]["output_probability"]["kind"] == "probabilities"


def test_a_given_modelproto_is_not_rewritten_in_place(zipmap_file) -> None:
    path, model, x = zipmap_file
    proto = onnx.load(str(path))
    artifact = nbd.export(proto, x[:4])
    assert any(node.op_type == "ZipMap" for node in proto.graph.node)
    assert artifact.signature.output_names == ["output_label", "output_probability"]


def test_a_zipmap_over_a_graph_input_becomes_an_identity(tmp_path: Path) -> None:
    """No node makes the zipped tensor (it is an input): the output copies it."""
    from onnx import TensorProto, helper

    zipmap = helper.make_node(
        "ZipMap", ["scores"], ["probs"], domain="ai.onnx.ml", classlabels_strings=["no", "yes"]
    )
    value = helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    )
    graph = helper.make_graph(
        [zipmap],
        "zip",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        [helper.make_value_info("probs", helper.make_sequence_type_proto(value))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    proto.ir_version = 8
    scores = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    artifact = nbd.export(proto, scores)
    assert [(s.name, s.shape) for s in artifact.signature.outputs] == [("probs", (-1, 2))]
    assert artifact.labels == ["no", "yes"]
    assert artifact.metadata["outputs"] == {
        "probs": {"kind": "probabilities", "classes": ["no", "yes"]}
    }
    (probs,) = ort.InferenceSession(str(artifact.path)).run(None, {"scores": scores})
    np.testing.assert_array_equal(probs, scores)


def test_labels_given_win_over_the_zipmap_classes(zipmap_file) -> None:
    path, _, _ = zipmap_file
    artifact = nbd.export(path, None, labels=list(NAMES))
    assert artifact.labels == list(NAMES)


def test_bench_on_a_zipmap_file(zipmap_file, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = zipmap_file
    assert cli.main(["bench", str(path), "--json", "--budget", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"] and all(r["p50_ms"] > 0 for r in report["results"])


def test_reading_the_signature_of_a_zipmap_file_says_what_to_do(zipmap_file) -> None:
    path, _, _ = zipmap_file
    with pytest.raises(ExportError) as caught:
        Signature.from_onnx(path)
    message = str(caught.value)
    assert "'output_probability'" in message
    assert "seq(map(int64,tensor(float)))" in message
    assert "nbdeploy.export" in message and "'zipmap': False" in message


def _sequence_model(path: Path) -> Path:
    """A float input whose output is a sequence of tensors, not from a ZipMap."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["parts"])],
        "pieces",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_sequence_output_not_from_zipmap_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _sequence_model(tmp_path / "pieces.onnx")
    for sample in (None, np.zeros((2, 4), np.float32)):
        with pytest.raises(ExportError) as caught:
            nbd.export(path, sample)
        assert str(caught.value) == (
            "output 'parts' of the ONNX model is seq(tensor(float)), not a tensor: nbdeploy"
            " serves tensors only; re-export the model with tensor outputs (a sequence or map"
            " cannot be served; for a skl2onnx classifier: options={'zipmap': False})"
        )
    assert cli.main(["bench", str(path), "--json", "--budget", "0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbdeploy bench: error: output 'parts' of the ONNX model is seq(")
    assert len(err.strip().splitlines()) == 1


def test_a_map_output_after_a_zipmap_is_one_clear_error(tmp_path: Path, zipmap_file) -> None:
    """The first row's map (SequenceAt after the ZipMap) is not a ZipMap output: no rewrite."""
    from onnx import TensorProto, helper

    path, _, _ = zipmap_file
    proto = onnx.load(str(path))
    graph = proto.graph
    graph.node.append(helper.make_node("Constant", [], ["zero"], value_int=0))
    graph.node.append(helper.make_node("SequenceAt", ["output_probability", "zero"], ["first"]))
    first = helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    )
    graph.output.remove(graph.output[1])
    graph.output.append(helper.make_value_info("first", first))
    with pytest.raises(ExportError) as caught:
        nbd.export(proto, None)
    message = str(caught.value)
    assert message.startswith(
        "output 'first' of the ONNX model is map(int64,tensor(float)), not a tensor"
    )
    assert "options={'zipmap': False}" in message


def test_a_map_input_is_one_clear_error(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DictionaryType, FloatTensorType, StringTensorType
    from sklearn.feature_extraction import DictVectorizer

    vectorizer = DictVectorizer(sparse=False).fit([{"a": 1.0, "b": 2.0}])
    proto = to_onnx(
        vectorizer,
        initial_types=[("row", DictionaryType(StringTensorType([1]), FloatTensorType([1])))],
        target_opset=OPSETS,
    )
    with pytest.raises(ExportError) as caught:
        nbd.export(proto, None)
    assert str(caught.value) == (
        "input 'row' of the ONNX model is map(string,tensor(float)), not a tensor: nbdeploy"
        " serves tensors only; re-export the model with tensor inputs (e.g. one [batch,"
        " features] float tensor, or one [batch, 1] tensor per column)"
    )


# -------------------------------------------------------------------- per-column inputs


def _frame():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = 60
    city = rng.choice(["Lyon", "Oslo", "Porto"], size=rows)
    age = rng.uniform(18, 80, size=rows)
    income = rng.normal(40, 10, size=rows) + (city == "Oslo") * 15
    frame = pd.DataFrame({"age": age, "city": city, "income": income})
    target = np.where(income + age * 0.2 > 55, "buys", "skips")
    return frame, target


def _column_pipeline(tmp_path: Path, *, zipmap: bool) -> tuple[Path, object, object]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = _frame()
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["age", "income"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, target)
    types = [
        ("age", FloatTensorType([None, 1])),
        ("city", StringTensorType([None, 1])),
        ("income", FloatTensorType([None, 1])),
    ]
    options = None if zipmap else {LogisticRegression: {"zipmap": False}}
    proto = to_onnx(pipeline, initial_types=types, options=options, target_opset=OPSETS)
    path = tmp_path / ("columns_zipmap.onnx" if zipmap else "columns.onnx")
    onnx.save(proto, str(path))
    return path, pipeline, frame


def _columns(frame) -> dict[str, np.ndarray]:
    """The frame as one [n, 1] feed per column, strings as an object array of str."""
    return {
        "age": frame[["age"]].to_numpy(np.float32),
        "city": frame[["city"]].to_numpy().astype(str).astype(object),
        "income": frame[["income"]].to_numpy(np.float32),
    }


def test_per_column_multi_input_file_exports_and_runs(tmp_path: Path) -> None:
    path, pipeline, frame = _column_pipeline(tmp_path, zipmap=False)
    for sample in (None, _columns(frame[:8])):
        artifact = nbd.export(path, sample)
        inputs = [(s.name, s.dtype, s.shape) for s in artifact.signature.inputs]
        assert inputs == [
            ("age", "float32", (-1, 1)),
            ("city", "str", (-1, 1)),
            ("income", "float32", (-1, 1)),
        ]
        assert artifact.metadata["columns"] == [
            {"name": "age", "dtype": "float32", "kind": "numeric", "onnx_dtype": "float32"},
            {
                "name": "city",
                "dtype": "object",
                "kind": "categorical",
                "onnx_dtype": "str",
                "categories": ["Lyon", "Oslo", "Porto"],  # read from the OneHotEncoder node
            },
            {"name": "income", "dtype": "float32", "kind": "numeric", "onnx_dtype": "float32"},
        ]
        assert "rewritten" not in artifact.metadata
        assert artifact.metadata["outputs"] == {
            "label": {"kind": "label", "classes": ["buys", "skips"]},
            "probabilities": {"kind": "probabilities", "classes": ["buys", "skips"]},
        }
        assert artifact.labels == ["buys", "skips"]
    assert artifact.metadata["accepts_nan"] == []
    session = ort.InferenceSession(str(artifact.path))
    labels, probabilities = session.run(None, _columns(frame))
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(frame), atol=1e-5)
    assert list(labels) == list(pipeline.predict(frame))


def test_per_column_file_with_a_dataframe_sample(tmp_path: Path) -> None:
    path, pipeline, frame = _column_pipeline(tmp_path, zipmap=True)
    sample = frame[:8].assign(unused=1.0)  # extra columns of a DataFrame are ignored
    artifact = nbd.export(path, sample)
    columns = artifact.metadata["columns"]
    assert [(c["name"], c["dtype"], c["kind"]) for c in columns] == [
        ("age", str(frame.dtypes["age"]), "numeric"),
        ("city", str(frame.dtypes["city"]), "categorical"),
        ("income", str(frame.dtypes["income"]), "numeric"),
    ]
    assert columns[1]["categories"] == ["Lyon", "Oslo", "Porto"]
    assert artifact.metadata["outputs"]["output_label"] == {
        "kind": "label",
        "classes": ["buys", "skips"],
    }
    assert artifact.labels == ["buys", "skips"]
    assert artifact.metadata["rewritten"][0]["after"] == "tensor(float) [-1, 2]"
    session = ort.InferenceSession(str(artifact.path))
    (probabilities,) = session.run(["output_probability"], _columns(frame))
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(frame), atol=1e-5)


def test_a_bench_of_a_per_column_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = _column_pipeline(tmp_path, zipmap=True)
    assert cli.main(["bench", str(path), "--json", "--budget", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"]


# ------------------------------------------------------------------------ end to end


def test_deploy_a_zipmap_file_on_the_process_runtime(zipmap_file) -> None:
    path, model, x = zipmap_file
    try:
        ep = nbd.deploy(path, name="zipmap", runtime="process")
        answer = ep.predict(x[:10])
        np.testing.assert_allclose(
            answer["output_probability"], model.predict_proba(x[:10]), atol=1e-5
        )
        assert [int(v) for v in answer["output_label"]] == list(model.predict(x[:10]))
        meta = ep.metadata()
        assert meta["outputs"][1] == {
            "name": "output_probability",
            "datatype": "FP32",
            "shape": [-1, 3],
        }
        assert meta["parameters"]["outputs"]["output_probability"] == {
            "kind": "probabilities",
            "classes": ["0", "1", "2"],
        }
        assert meta["parameters"]["labels"] == ["0", "1", "2"]
    finally:
        nbd.undeploy("zipmap")
