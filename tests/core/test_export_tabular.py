"""Tabular exports with real scikit-learn, XGBoost and LightGBM models on pandas DataFrames.

Each model is exported on 8 training rows and then checked on held-out rows the export never
saw: the stored ONNX file runs in onnxruntime and must answer like the original model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import as_feeds, column_array, sample_parts
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.artifact import ModelArtifact
from nbdeploy.exporters import eager_runner, export_model, framework_of, output_kind, parity
from tests.helpers import tabular

pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[2]
FRAME_CASES = ("numeric", "mixed", "category", "imputer", "boolean", "iris", "regression")
TREE_CASES = tuple(name for name in tabular.CASES if name.startswith(("xgb_", "lgbm_", "hgb_")))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelArtifact]:
    """Every tabular case exported once on its first 8 training rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBDEPLOY_HOME", str(tmp_path_factory.mktemp("tabular-home")))
        return {
            name: export_model(tabular.case(name).model, tabular.case(name).sample, name=None)
            for name in tabular.CASES
        }


def _onnx(artifact: ModelArtifact, rows) -> dict[str, np.ndarray]:
    return _ort.run(_ort.session(artifact.path), as_feeds(artifact.signature, rows))


def _assert_held_out(case: tabular.Case, artifact: ModelArtifact) -> None:
    """The export answers the held-out rows like the original model (see
    :func:`tabular.assert_answers_match`)."""
    tabular.assert_answers_match(case, case.test, _onnx(artifact, case.test))


# ---------------------------------------------------------------------- DataFrame pipelines


@pytest.mark.parametrize("name", FRAME_CASES)
def test_dataframe_pipeline_gets_one_input_per_column(exports, name):
    case, art = tabular.case(name), exports[name]
    columns = [str(c) for c in case.train.columns]
    assert art.signature.input_names == columns
    assert all(spec.shape == (-1, 1) for spec in art.signature.inputs)
    recorded = art.metadata["columns"]
    assert [c["name"] for c in recorded] == columns
    by_name = {spec.name: spec.dtype for spec in art.signature.inputs}
    assert all(c["onnx_dtype"] == by_name[c["name"]] for c in recorded)
    assert art.framework == "sklearn" and art.parity.passed and art.parity.samples == 8
    _assert_held_out(case, art)
    # nbdeploy.json keeps it where the server and the demo read it
    stored = json.loads((art.path.parent / "nbdeploy.json").read_text())["metadata"]
    assert stored["columns"] == recorded and stored["outputs"] == art.metadata["outputs"]


def test_column_types_strings_categories_and_booleans(exports):
    def column(name: str, col: str) -> tuple[str, dict]:
        art = exports[name]
        spec = next(s for s in art.signature.inputs if s.name == col)
        entry = next(c for c in art.metadata["columns"] if c["name"] == col)
        return spec.dtype, entry

    dtype, size = column("mixed", "size")
    assert dtype == "str" and size["kind"] == "categorical"
    assert size["categories"] == ["large", "medium", "small"]
    dtype, grade = column("category", "texture grade")
    assert dtype == "str" and grade["dtype"] == "category" and grade["kind"] == "categorical"
    assert sorted(grade["categories"]) == ["high", "low", "mid"]
    dtype, smooth = column("boolean", "smooth")
    assert dtype == "bool" and smooth == {
        "name": "smooth",
        "dtype": "bool",
        "kind": "boolean",
        "onnx_dtype": "bool",
    }
    dtype, radius = column("numeric", "mean radius")
    assert dtype == "float32" and radius["kind"] == "numeric" and "categories" not in radius
    assert exports["regression"].signature.inputs[1] == TensorSpec("sex", "str", (-1, 1))
    assert exports["mixed"].signature.inputs[-1].datatype == "BYTES"


def test_bool_column_into_an_encoder_is_cast_to_float():
    """OneHotEncoder's converter takes no booleans: the column becomes 0.0 / 1.0 and says so."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame, y = tabular.breast_cancer(numeric=4, boolean=True)
    encode = ColumnTransformer(
        [("n", "passthrough", list(frame.columns[:4])), ("b", OneHotEncoder(), ["smooth"])]
    )
    model = make_pipeline(encode, LogisticRegression(max_iter=3000)).fit(frame, y)
    art = export_model(model, frame.head(8), name=None)
    assert art.signature.inputs[-1] == TensorSpec("smooth", "float32", (-1, 1))
    assert art.metadata["columns"][-1]["onnx_dtype"] == "float32"
    got = _onnx(art, frame.iloc[100:140])
    np.testing.assert_allclose(
        got["probabilities"], model.predict_proba(frame.iloc[100:140]), atol=1e-5
    )


def test_missing_strings_reach_the_model_as_empty_strings():
    """A OneHotEncoder that learned NaN as a category treats "" (a missing string) the same."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame, y = tabular.breast_cancer(numeric=4, categorical=True, nan_strings=True)
    encode = ColumnTransformer(
        [
            ("n", "passthrough", list(frame.columns[:4])),
            ("c", OneHotEncoder(handle_unknown="ignore"), ["size"]),
        ]
    )
    model = make_pipeline(encode, LogisticRegression(max_iter=5000)).fit(frame, y)
    assert frame["size"].head(8).isna().any()
    art = export_model(model, frame.head(8), name=None)
    rows = frame.iloc[200:300]
    assert rows["size"].isna().any()
    np.testing.assert_allclose(
        _onnx(art, rows)["probabilities"], model.predict_proba(rows), atol=1e-5
    )


# ------------------------------------------------------------------------ boosted trees


@pytest.mark.parametrize("name", TREE_CASES)
def test_boosted_trees_export_with_parity_on_held_out_rows(exports, name):
    case, art = tabular.case(name), exports[name]
    expected_framework = name.split("_")[0]
    if name.endswith("_pipeline") or name.startswith("hgb"):
        expected_framework = "sklearn"
    assert art.framework == {"xgb": "xgboost", "lgbm": "lightgbm"}.get(
        expected_framework, expected_framework
    )
    assert art.parity.passed
    assert art.signature.input_names == [str(c) for c in case.train.columns]
    _assert_held_out(case, art)
    versions = art.metadata["versions"]
    if name.startswith("xgb"):
        assert "xgboost" in versions and "onnxmltools" in versions
    if name.startswith("lgbm"):
        assert "lightgbm" in versions and "onnxmltools" in versions


def test_tree_models_accept_nan_and_are_checked_on_nan_rows(exports):
    for name in ("xgb_classifier", "lgbm_classifier", "hgb_nan", "hgb_regressor_nan"):
        case, art = tabular.case(name), exports[name]
        numeric = tabular.numeric_columns(case.train)
        assert art.metadata["accepts_nan"] == numeric, name
        assert case.sample.isna().any().any(), "the export sample itself holds NaN"
        nan_rows = case.test[case.test.isna().any(axis=1)]
        assert len(nan_rows) > 5
        _assert_held_out(
            tabular.Case(name, case.model, case.train, nan_rows, case.y_train, case.y_test), art
        )


def test_framework_detection_names_the_booster_library():
    from lightgbm import LGBMRegressor
    from xgboost import XGBClassifier

    assert framework_of(XGBClassifier()) == "xgboost"
    assert framework_of(LGBMRegressor()) == "lightgbm"
    assert framework_of(tabular.case("xgb_pipeline").model) == "sklearn"


# ------------------------------------------------------------------ what outputs mean


def test_output_semantics_are_recorded_exactly(exports):
    binary = {"kind": "label", "classes": ["0", "1"]}
    assert exports["mixed"].metadata["outputs"] == {
        "label": binary,
        "probabilities": {"kind": "probabilities", "classes": ["0", "1"]},
    }
    species = ["setosa", "versicolor", "virginica"]
    assert exports["iris"].metadata["outputs"]["probabilities"] == {
        "kind": "probabilities",
        "classes": species,
    }
    assert exports["iris"].labels == species
    for name in ("regression", "xgb_regressor", "lgbm_regressor", "hgb_regressor_nan"):
        assert exports[name].metadata["outputs"] == {"prediction": {"kind": "value"}}, name
    assert exports["xgb_classifier"].metadata["outputs"]["label"] == binary


def _onnx_classifier(softmax: bool):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3)).astype(np.float32) * 3
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_outputs_and_nan_are_inferred_for_other_exports():
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    probs = export_model(_onnx_classifier(True), x, name=None, labels=["a", "b", "c"])
    assert probs.metadata["outputs"] == {"y": {"kind": "probabilities", "classes": ["a", "b", "c"]}}
    assert probs.metadata["accepts_nan"] == []
    logits = export_model(_onnx_classifier(False), None, name=None)
    assert logits.metadata["outputs"] == {"y": {"kind": "logits"}}


def test_output_kind_rules():
    assert output_kind(np.array([0, 2, 1])) == "label"
    assert output_kind(np.array(["a", "b"], dtype=object)) == "label"
    assert output_kind(np.array([[0.2, 0.8], [0.5, 0.5]], dtype=np.float32)) == "probabilities"
    assert output_kind(np.array([[2.0, -1.0], [0.5, 0.5]])) == "logits"
    assert output_kind(np.array([[0.2, 0.7], [0.5, 0.5]])) == "logits"  # rows do not sum to 1
    assert output_kind(np.array([[1.5], [2.0]])) == "value"
    assert output_kind(np.array([1.5, 2.0])) == "value"


# -------------------------------------------------------------------------- missing values


def test_imputer_pipeline_accepts_nan_and_a_plain_one_does_not(exports):
    case, art = tabular.case("imputer"), exports["imputer"]
    assert case.sample[["mean texture", "mean smoothness", "size"]].isna().any().all()
    assert art.metadata["accepts_nan"] == tabular.numeric_columns(case.train)
    assert "size" not in art.metadata["accepts_nan"]  # a missing string is "", not NaN
    nan_rows = case.test[case.test.isna().any(axis=1)]
    _assert_held_out(
        tabular.Case("imputer", case.model, case.train, nan_rows, case.y_train, case.y_test), art
    )
    assert exports["numeric"].metadata["accepts_nan"] == []
    assert exports["numpy"].metadata["accepts_nan"] == []
    with_nan = tabular.case("numeric").sample.copy()
    with_nan.loc[2, "mean area"] = np.nan
    with pytest.raises(InputError, match=r"column 'mean area' contains NaN but the Pipeline"):
        export_model(tabular.case("numeric").model, with_nan, name=None)


def test_nan_in_a_matrix_input_is_probed_too():
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame, y = tabular.diabetes(nan=True)
    x = frame.to_numpy()
    model = HistGradientBoostingRegressor(max_iter=10).fit(x, y)
    art = export_model(model, x[:8], name=None)
    assert art.signature.input_names == ["input"] and art.metadata["accepts_nan"] == ["input"]
    infinite = x[:8].copy()
    infinite[0, 0] = np.inf
    with pytest.raises(InputError, match="contains infinity"):
        export_model(model, infinite, name=None)


def test_nan_reaching_a_classic_sklearn_tree_is_not_accepted():
    """scikit-learn's RandomForest / DecisionTree take NaN, but skl2onnx does not convert
    their missing-value branches: NaN is accepted only where an imputer fills it first, and a
    sample with NaN going into the trees is refused in one line."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.tree import DecisionTreeClassifier

    frame, y = tabular.breast_cancer(nan=True)
    clean = frame.dropna().head(8)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, y)
    tree = DecisionTreeClassifier(random_state=0).fit(frame, y)
    for model in (forest, tree):
        assert export_model(model, clean, name=None).metadata["accepts_nan"] == []
    imputed = make_pipeline(
        SimpleImputer(), RandomForestClassifier(n_estimators=5, random_state=0)
    ).fit(frame, y)
    art = export_model(imputed, frame.head(8), name=None)
    assert art.metadata["accepts_nan"] == list(frame.columns)
    rows = frame[frame.isna().any(axis=1)]
    np.testing.assert_allclose(
        _onnx(art, rows)["probabilities"], imputed.predict_proba(rows), atol=1e-5
    )
    with pytest.raises(InputError, match="column 'mean texture' contains NaN but the Random"):
        export_model(forest, frame.head(8), name=None)


def test_parity_counts_nan_on_both_sides_as_equal():
    measured, _ = parity.compare(
        [np.array([[np.nan, 1.0]])], [np.array([[np.nan, 1.0]])], atol=0, rtol=0
    )
    assert measured.passed and measured.max_abs_error == 0
    measured, _ = parity.compare(
        [np.array([[np.nan, 1.0]])], [np.array([[0.5, 1.0]])], atol=1, rtol=1
    )
    assert not measured.passed


# ----------------------------------------------------------------------------- feeds


def test_feeds_from_a_dataframe_take_the_signature_columns(exports):
    art = exports["mixed"]
    rows = tabular.case("mixed").test.head(3)
    shuffled = rows[list(reversed(rows.columns))].assign(extra=1.0, note="ignored")
    feeds = as_feeds(art.signature, shuffled)
    assert list(feeds) == art.signature.input_names
    assert feeds["size"].dtype == object and feeds["size"].shape == (3, 1)
    assert all(isinstance(v, str) for v in feeds["size"].ravel())
    assert feeds["mean radius"].dtype == np.float32
    with pytest.raises(
        InputError,
        match=r"lacks column\(s\) \['size', 'mean area'\]|lacks column\(s\) \['mean area', 'size'\]",
    ):
        as_feeds(art.signature, rows.drop(columns=["size", "mean area"]))
    # a column given as a flat list of values, and string columns with missing values
    flat = as_feeds(Signature((TensorSpec("city", "str", (-1, 1)),), ()), {"city": ["Oslo", None]})
    assert flat["city"].tolist() == [["Oslo"], [""]]


def test_sample_parts_of_a_dataframe():
    frame = pd.DataFrame(
        {
            "x": [1.5, np.nan],
            "n": [1, 2],
            "flag": [True, False],
            "city": ["Oslo", None],
            "grade": pd.Categorical(["low", None], categories=["low", "high"]),
            "count": pd.array([3, None], dtype="Int64"),
        }
    )
    parts = sample_parts(frame)
    assert list(parts) == ["x", "n", "flag", "city", "grade", "count"]
    assert all(a.shape == (2, 1) for a in parts.values())
    assert parts["n"].dtype == np.int64 and parts["flag"].dtype == bool
    assert parts["city"].tolist() == [["Oslo"], [""]] and parts["grade"].tolist() == [["low"], [""]]
    assert parts["count"].dtype == np.float64 and np.isnan(parts["count"][1, 0])
    with pytest.raises(InputError, match="column 'when' has dtype datetime64"):
        column_array(pd.Series(pd.to_datetime(["2024-01-01"])), "when")


def test_a_matrix_model_takes_a_whole_dataframe(exports):
    case, art = tabular.case("numpy"), exports["numpy"]
    frame = pd.DataFrame(case.test[:5])
    np.testing.assert_allclose(
        _onnx(art, frame)["probabilities"], case.model.predict_proba(case.test[:5]), atol=1e-5
    )


def test_numpy_matrix_sklearn_export_is_unchanged(exports):
    art = exports["numpy"]
    assert [(s.name, s.dtype, s.shape) for s in art.signature.inputs] == [
        ("input", "float32", (-1, 30))
    ]
    assert art.input_kind == "tabular" and "columns" not in art.metadata
    assert "feature_names" not in art.metadata  # fitted on a matrix: no names to show
    _assert_held_out(tabular.case("numpy"), art)


def test_numpy_sample_of_a_dataframe_fitted_model_records_feature_names():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, y = tabular.breast_cancer(numeric=5)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)
    art = export_model(model, frame.to_numpy()[:8], name=None)
    assert art.signature.input_names == ["input"]
    assert art.metadata["feature_names"] == list(frame.columns)


def test_eager_runner_takes_the_frame_or_its_feeds(exports):
    case, art = tabular.case("mixed"), exports["mixed"]
    want = case.model.predict_proba(case.test.head(4))
    np.testing.assert_allclose(eager_runner(art, case.test.head(4))(), want)
    feeds = as_feeds(art.signature, case.test.head(4))
    np.testing.assert_allclose(eager_runner(case.model, feeds)(), want, atol=1e-6)


# ---------------------------------------------------------------------------- refusals


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_unsupported_tabular_models_are_refused_in_one_line():
    import xgboost
    from lightgbm import LGBMClassifier
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from xgboost import XGBClassifier

    class _Doubler(TransformerMixin, BaseEstimator):
        """A custom transformer skl2onnx has no converter for."""

        def fit(self, x, y=None):
            return self

        def transform(self, x):
            return x * 2

    frame, y = tabular.breast_cancer(numeric=4, category=True)
    numeric = list(frame.columns[:4])
    custom = make_pipeline(
        ColumnTransformer([("double", _Doubler(), numeric)]), LogisticRegression()
    ).fit(frame, y)
    with pytest.raises(ExportError) as caught:
        export_model(custom, frame.head(8), name=None)
    assert "skl2onnx has no converter for" in _one_line(caught) and "_Doubler" in str(caught.value)

    hgb = HistGradientBoostingClassifier(max_iter=3, categorical_features="from_dtype").fit(
        frame, y
    )
    with pytest.raises(ExportError, match="categorical_features=None") as caught:
        export_model(hgb, frame.head(8), name=None)
    _one_line(caught)
    xgb = XGBClassifier(n_estimators=3, enable_categorical=True).fit(frame, y)
    with pytest.raises(ExportError, match="enable_categorical") as caught:
        export_model(xgb, frame.head(8), name=None)
    _one_line(caught)
    lgbm = LGBMClassifier(n_estimators=3, verbose=-1).fit(frame, y)
    with pytest.raises(ExportError, match="pandas category columns") as caught:
        export_model(lgbm, frame.head(8), name=None)
    _one_line(caught)
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(frame[numeric], y), 2)
    with pytest.raises(ExportError, match="XGBClassifier, XGBRegressor") as caught:
        export_model(booster, frame[numeric].head(8), name=None)
    _one_line(caught)


def test_bad_dataframe_samples_are_refused_in_one_line():
    model = tabular.case("mixed").model
    sample = tabular.case("mixed").sample
    with pytest.raises(
        InputError, match=r"lacks column\(s\) \['size'\] that the Pipeline"
    ) as caught:
        export_model(model, sample.drop(columns="size"), name=None)
    _one_line(caught)
    with pytest.raises(InputError, match="fitted on a DataFrame with 9 columns") as caught:
        export_model(model, sample.drop(columns="size").to_numpy(), name=None)
    _one_line(caught)
    with pytest.raises(InputError, match="no rows"):
        export_model(model, sample.head(0), name=None)
    labelled = sample.assign(extra="ignored")  # extra columns are fine
    assert export_model(model, labelled, name=None).signature.input_names == list(sample.columns)


def test_converters_that_need_their_own_options_or_opset():
    """LinearSVC in a Pipeline takes no ZipMap option (its scores are logits); KNNImputer
    needs opset 18: both export without the user choosing anything."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import KNNImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    frame, y = tabular.breast_cancer(numeric=4, nan=True)
    svc = make_pipeline(StandardScaler(), LinearSVC()).fit(
        frame.dropna(), y[frame.notna().all(axis=1)]
    )
    art = export_model(svc, frame.dropna().head(8), name=None)
    assert art.metadata["outputs"]["probabilities"] == {"kind": "logits", "classes": ["0", "1"]}
    knn = make_pipeline(
        ColumnTransformer([("knn", KNNImputer(), list(frame.columns))]), LogisticRegression()
    ).fit(frame, y)
    art = export_model(knn, frame.head(8), name=None)
    assert art.signature.opset == 18 and art.metadata["accepts_nan"] == list(frame.columns)


def test_sample_column_named_like_an_output_is_refused():
    from sklearn.linear_model import LogisticRegression

    frame, y = tabular.breast_cancer(numeric=3)
    frame = frame.rename(columns={"mean perimeter": "label"})
    model = LogisticRegression(max_iter=2000).fit(frame, y)
    with pytest.raises(
        InputError, match=r"column\(s\) \['label'\] have the name of a model output"
    ):
        export_model(model, frame.head(8), name=None)


# --------------------------------------------------------------------------- laziness


def test_dataframe_export_imports_no_booster_library(tmp_path):
    code = (
        "import sys\n"
        "from tests.helpers import tabular\n"
        "import nbdeploy as nbd\n"
        "case = tabular.case('mixed')\n"
        "art = nbd.export(case.model, case.sample)\n"
        "print(art.parity.passed, sorted(m for m in ('xgboost', 'lightgbm', 'onnxmltools',"
        " 'torch', 'tensorflow') if m in sys.modules))\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "[]"]
