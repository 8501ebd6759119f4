"""Exports of real torch, scikit-learn and ONNX models, checked in onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError, ParityError
from nbdeploy._tensors import as_feeds
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.artifact import ModelArtifact
from nbdeploy.exporters import as_artifact, eager_runner, export_model, framework_of, parity
from tests.helpers import models

ROOT = Path(__file__).resolve().parents[2]


def _torch_eager(model, *arrays: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()


def _onnx_run(artifact: ModelArtifact, sample) -> dict[str, np.ndarray]:
    sess = _ort.session(artifact.path)
    return _ort.run(sess, as_feeds(artifact.signature, sample))


def _artifacts(home: Path) -> list[Path]:
    folder = home / "artifacts"
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


# ------------------------------------------------------------------------------ torch


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each torch test model exported once (dynamo is a few seconds per model)."""
    x, y = models.digits()
    mlp, cnn = models.mlp(), models.cnn()
    models.train(mlp, x, y, epochs=15)
    images = x.reshape(-1, 1, 8, 8)
    tokens = np.random.default_rng(0).integers(0, 1000, size=(8, 12), dtype=np.int64)
    two = models.two_input()
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 16), dtype=np.float32), rng.random((8, 8), dtype=np.float32)
    cases = {
        "mlp": (mlp, x[:8]),
        "cnn": (cnn, images[:8]),
        "transformer": (models.transformer(), tokens),
        "two_tuple": (two, (a, b)),
        "two_dict_batch1": (two, {"b": b[:1], "a": a[:1]}),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBDEPLOY_HOME", str(tmp_path_factory.mktemp("torch-home")))
        return {
            key: (model, sample, export_model(model, sample, name=None))
            for key, (model, sample) in cases.items()
        }


def test_torch_mlp_signature_parity_and_metadata(torch_exports):
    model, sample, art = torch_exports["mlp"]
    sig = art.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("input", "float32", (-1, 64))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [("output", "float32", (-1, 10))]
    assert sig.dynamic_batch and isinstance(sig.opset, int) and sig.opset >= 17
    assert art.framework == "torch" and art.framework_version.startswith("2.13")
    assert art.name == "sequential" and art.variant == "fp32" and art.input_kind == "tabular"
    assert art.metadata["exporter"] == "dynamo" and "fallback_reason" not in art.metadata
    assert art.metadata["versions"]["torch"].startswith("2.13")
    p = art.parity
    assert p.passed and p.samples == 8 and p.reference == "original"
    assert 0 <= p.max_abs_error < 1e-4 and p.max_rel_error < 1e-4
    assert (p.atol, p.rtol) == (1e-4, 1e-3) and p.top1_agreement == 1.0
    assert art.source_model is model and art.path.is_file()

    stored = ModelArtifact.load(art.directory)
    assert stored.signature == sig and stored.parity == p
    assert json.loads((art.directory / "nbdeploy.json").read_text())["input_kind"] == "tabular"


@pytest.mark.parametrize("key", ["mlp", "cnn", "two_tuple"])
def test_torch_exports_are_batch_size_independent(torch_exports, key):
    """Exported with a batch of 8 (or 1), the model answers batches of 1 and 5 like torch."""
    model, _, art = torch_exports[key]
    x, _ = models.digits()
    rng = np.random.default_rng(7)
    for rows in (1, 5):
        if key == "mlp":
            arrays = (x[100 : 100 + rows],)
        elif key == "cnn":
            arrays = (x[100 : 100 + rows].reshape(-1, 1, 8, 8),)
        else:
            arrays = (
                rng.random((rows, 16), dtype=np.float32),
                rng.random((rows, 8), dtype=np.float32),
            )
        got = _onnx_run(art, arrays)["output"]
        assert got.shape[0] == rows
        np.testing.assert_allclose(got, _torch_eager(model, *arrays), atol=1e-4, rtol=1e-3)


def test_torch_cnn_is_an_image_model(torch_exports):
    _, _, art = torch_exports["cnn"]
    assert art.signature.inputs[0].shape == (-1, 1, 8, 8)
    assert art.input_kind == "image" and art.parity.passed


def test_torch_transformer_takes_int64_tokens_of_any_length(torch_exports):
    model, _, art = torch_exports["transformer"]
    spec = art.signature.inputs[0]
    assert (spec.name, spec.dtype, spec.shape) == ("tokens", "int64", (-1, -1))
    assert art.input_kind == "text" and art.name == "textclassifier"
    assert art.parity.passed and art.parity.max_abs_error < 1e-4
    tokens = np.random.default_rng(3).integers(0, 1000, size=(3, 20), dtype=np.int64)
    got = _onnx_run(art, tokens)["output"]
    np.testing.assert_allclose(got, _torch_eager(model, tokens), atol=1e-4, rtol=1e-3)


def test_torch_two_inputs_are_named_after_forward_parameters(torch_exports):
    for key in ("two_tuple", "two_dict_batch1"):
        _, sample, art = torch_exports[key]
        assert art.signature.input_names == ["a", "b"], key
        assert art.signature.dynamic_batch and art.signature.outputs[0].shape == (-1, 3)
        assert art.parity.passed and art.parity.samples == (8 if key == "two_tuple" else 1)
    _, sample, art = torch_exports["two_dict_batch1"]
    assert sample["a"].shape[0] == 1  # a batch of one is repeated for dynamo, not refused


def test_eager_runner_runs_the_original_torch_model(torch_exports):
    model, sample, art = torch_exports["two_tuple"]
    expected = _torch_eager(model, *sample)
    np.testing.assert_allclose(eager_runner(art, sample)().numpy(), expected, rtol=1e-6)
    feeds = as_feeds(art.signature, sample)
    np.testing.assert_allclose(eager_runner(model, feeds)().numpy(), expected, rtol=1e-6)


def test_torch_export_uses_eval_mode_and_restores_training():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)
    )
    model.train()
    art = export_model(model, np.random.default_rng(0).random((6, 8)), name="dropout")
    assert model.training
    assert art.parity.passed and art.parity.max_abs_error < 1e-4
    assert art.signature.inputs[0].dtype == "float32"  # float64 numpy sample was cast


def test_torch_falls_back_to_torchscript_and_keeps_the_reason():
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return self.lin(x) * 2
            return self.lin(x)

    art = export_model(Branchy(), np.ones((4, 4), dtype=np.float32), name="branchy")
    assert art.metadata["exporter"] == "torchscript"
    assert art.metadata["fallback_reason"].startswith("dynamo:")
    assert "data-dependent" in art.metadata["fallback_reason"]
    assert art.signature.dynamic_batch and art.parity.passed


def test_torchscript_first_when_asked(monkeypatch):
    monkeypatch.setenv("NBDEPLOY_TORCH_EXPORTER", "torchscript")
    x, _ = models.digits()
    art = export_model(models.mlp(), x[:8], name="digits", opset=17)
    assert art.metadata["exporter"] == "torchscript" and art.signature.opset == 17
    assert art.signature.dynamic_batch and art.parity.passed and art.name == "digits"


def test_torch_parity_failure_is_reported_and_nothing_is_stored(nbdeploy_home):
    import torch

    class ExportsDifferently(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.lin(x)
            if torch.compiler.is_exporting() or torch.jit.is_tracing():
                return y + 0.5
            return y

    with pytest.raises(ParityError) as caught:
        export_model(ExportsDifferently(), np.ones((4, 4), dtype=np.float32), name=None)
    message = str(caught.value)
    assert "max abs error 0.5" in message and "atol=0.0001, rtol=0.001" in message
    assert "relax the tolerances" in message and "export(..., atol=" in message
    assert caught.value.parity.max_abs_error == pytest.approx(0.5, abs=1e-6)
    assert not caught.value.parity.passed
    assert _artifacts(nbdeploy_home) == []


def test_torch_batch_size_baked_into_the_graph_is_refused():
    import torch

    class Baked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.lin(x.reshape(8, -1))

    with pytest.raises(ExportError, match="batch dimension is not really dynamic"):
        export_model(Baked(), np.ones((8, 4, 4), dtype=np.float32), name=None)


def test_torch_wrong_shape_sample_says_expected_and_given():
    x, _ = models.digits()
    with pytest.raises(InputError) as caught:
        export_model(models.mlp(), x[:4, :32], name=None)
    message = str(caught.value)
    assert "[4, 32]" in message and "expects [batch, 64]" in message
    with pytest.raises(InputError, match=r"Conv2d expects \[batch, 1, H, W\]"):
        export_model(models.cnn(), x[:4], name=None)


def test_torch_nan_sample_and_missing_sample_are_refused():
    x, _ = models.digits()
    bad = x[:4].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN or infinity"):
        export_model(models.mlp(), bad, name=None)
    with pytest.raises(InputError, match="needs a sample input"):
        export_model(models.mlp(), None, name=None)


def test_dict_sample_with_unknown_input_name_is_refused():
    with pytest.raises(InputError, match=r"forward takes \['a', 'b'\]"):
        export_model(models.two_input(), {"a": np.ones((2, 16)), "c": np.ones((2, 8))}, name=None)


# ---------------------------------------------------------------------------- sklearn


@pytest.fixture(scope="module")
def digits_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = models.digits()
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300))])
    return pipe.fit(x[:600], y[:600])


def test_sklearn_pipeline_classifier(digits_pipeline):
    x, _ = models.digits()
    art = export_model(digits_pipeline, x[600:608], name="digits-sk")
    sig = art.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("input", "float32", (-1, 64))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [
        ("label", "int64", (-1,)),
        ("probabilities", "float32", (-1, 10)),
    ]
    assert sig.opset and art.framework == "sklearn" and art.input_kind == "tabular"
    assert art.labels == [str(i) for i in range(10)] and art.metadata["classes"] == list(range(10))
    assert art.metadata["exporter"] == "skl2onnx"
    assert art.parity.passed and 0 < art.parity.max_abs_error < 1e-4
    assert art.parity.top1_agreement == 1.0
    for rows in (1, 5):
        out = _onnx_run(art, x[700 : 700 + rows])
        np.testing.assert_array_equal(out["label"], digits_pipeline.predict(x[700 : 700 + rows]))
        np.testing.assert_allclose(
            out["probabilities"], digits_pipeline.predict_proba(x[700 : 700 + rows]), atol=1e-5
        )
    np.testing.assert_allclose(
        eager_runner(art, x[:3])(), digits_pipeline.predict_proba(x[:3]), rtol=1e-6
    )


def test_sklearn_string_classes_and_regressor():
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge

    features, target = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[target]
    clf = LogisticRegression(max_iter=500).fit(features, names)
    art = export_model(clf, features[::15], name=None)
    assert art.name == "logisticregression" and art.signature.outputs[0].dtype == "str"
    assert art.labels == ["setosa", "versicolor", "virginica"] and art.parity.passed
    assert list(_onnx_run(art, features[:2])["label"]) == list(clf.predict(features[:2]))

    data, y = load_diabetes(return_X_y=True)
    reg = Ridge().fit(data, y)
    art = export_model(reg, data[:8], name=None)
    assert [(s.name, s.shape) for s in art.signature.outputs] == [("prediction", (-1, 1))]
    assert art.parity.passed and art.parity.top1_agreement is None
    np.testing.assert_allclose(
        _onnx_run(art, data[20:25])["prediction"].ravel(), reg.predict(data[20:25]), rtol=1e-4
    )


def test_sklearn_parity_failure_with_zero_tolerance(digits_pipeline, nbdeploy_home):
    """float32 ONNX vs float64 scikit-learn differ by a hair: atol=rtol=0 must fail."""
    x, _ = models.digits()
    with pytest.raises(ParityError) as caught:
        export_model(digits_pipeline, x[:16], name=None, atol=0, rtol=0)
    message = str(caught.value)
    assert "output 'probabilities': max abs error" in message
    assert "atol=0, rtol=0" in message and "relax the tolerances" in message
    assert caught.value.parity.max_abs_error > 0
    assert _artifacts(nbdeploy_home) == []


def test_sklearn_wrong_feature_count_and_unfitted():
    from sklearn.linear_model import LogisticRegression

    x, y = models.digits()
    with pytest.raises(InputError, match=r"fitted on 64 features; the sample has shape \[4, 10\]"):
        export_model(LogisticRegression(max_iter=50).fit(x[:100], y[:100]), x[:4, :10], name=None)
    with pytest.raises(ExportError, match="not fitted"):
        export_model(LogisticRegression(), x[:4], name=None)


def test_labels_must_match_the_class_columns(digits_pipeline):
    x, _ = models.digits()
    with pytest.raises(
        InputError, match="labels has 3 names but the model's class outputs have 10"
    ):
        export_model(digits_pipeline, x[:4], name=None, labels=["a", "b", "c"])
    art = export_model(digits_pipeline, x[:4], name=None, labels=[f"digit {i}" for i in range(10)])
    assert art.labels[3] == "digit 3"


# ------------------------------------------------------------------------------- ONNX


def test_onnx_file_and_proto_round_trip(digits_pipeline, tmp_path):
    import onnx

    x, _ = models.digits()
    original = export_model(digits_pipeline, x[:8], name="digits")
    copy = tmp_path / "my-digits.onnx"
    copy.write_bytes(original.path.read_bytes())

    from_file = export_model(copy, None, name=None)
    assert from_file.name == "my-digits" and from_file.framework == "onnx"
    assert from_file.parity is None and from_file.source_model is None
    assert from_file.signature == original.signature and from_file.input_kind == "tabular"
    assert from_file.metadata["producer"].startswith("skl2onnx")

    from_proto = export_model(onnx.load(str(copy)), x[:3], name="again", labels=list("0123456789"))
    assert from_proto.name == "again" and from_proto.parity is None
    assert from_proto.signature == original.signature and from_proto.labels[9] == "9"
    np.testing.assert_array_equal(
        _onnx_run(from_proto, x[:5])["label"], digits_pipeline.predict(x[:5])
    )

    with pytest.raises(InputError, match=r"expects shape \[-1, 64\].*\[3, 5\]"):
        export_model(copy, x[:3, :5], name=None)
    with pytest.raises(ExportError, match="has no original model to run"):
        eager_runner(from_file, x[:3])


def test_onnx_sources_that_are_missing_or_not_onnx(tmp_path):
    with pytest.raises(ExportError, match="no such ONNX file: .*missing.onnx"):
        export_model(tmp_path / "missing.onnx", None, name=None)
    junk = tmp_path / "notes.onnx"
    junk.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ExportError, match="notes.onnx is not an ONNX model"):
        export_model(junk, None, name=None)
    with pytest.raises(ExportError, match="is a directory"):
        export_model(tmp_path, None, name=None)


def test_unsupported_object_and_bad_name():
    with pytest.raises(ExportError) as caught:
        export_model({"weights": [1, 2]}, np.ones((2, 2)), name=None)
    message = str(caught.value)
    assert "cannot export a builtins.dict" in message
    for supported in ("torch.nn.Module", "Keras", "tf.Module", "scikit-learn", ".onnx"):
        assert supported in message
    for bad in ("a/b", "Digits"):
        with pytest.raises(InputError, match=f"invalid model name '{bad}': use 1-63 lower-case"):
            export_model(models.mlp(), np.ones((2, 64)), name=bad)


def test_framework_detection_does_not_need_imports(digits_pipeline, tmp_path):
    assert framework_of(digits_pipeline) == "sklearn"
    assert framework_of(models.mlp()) == "torch"
    assert framework_of(tmp_path / "m.onnx") == "onnx"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert framework_of(tmp_path / "sm") == "tensorflow"
    assert framework_of(tmp_path / "m.keras") == "keras"
    assert framework_of(str(tmp_path / "m.h5")) == "keras"


def test_as_artifact_returns_loads_or_exports(digits_pipeline, tmp_path):
    x, _ = models.digits()
    exported = as_artifact(digits_pipeline, x[:8], name="digits-sk")
    assert exported.name == "digits-sk" and exported.parity.passed
    assert exported.source_model is digits_pipeline
    assert as_artifact(exported) is exported
    loaded = as_artifact(str(exported.directory), name="ignored")
    assert loaded.name == "digits-sk" and loaded.signature == exported.signature
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(exported.path.read_bytes())
    from_file = as_artifact(copy)
    assert from_file.framework == "onnx" and from_file.name == "copy"
    with pytest.raises(InputError, match="needs a sample input"):
        as_artifact(digits_pipeline)


@pytest.mark.parametrize(
    ("inputs", "kind"),
    [
        ([("x", "float32", (-1, 64))], "tabular"),
        ([("x", "float32", (-1, 1000))], "tensor"),
        ([("x", "float32", (-1, 1, 8, 8))], "image"),
        ([("x", "uint8", (-1, 28, 28))], "image"),
        ([("x", "float32", (-1, -1, -1))], "image"),
        ([("x", "float32", (-1, 4, 4))], "tensor"),
        ([("ids", "int64", (-1, -1))], "text"),
        ([("text", "str", (-1,))], "text"),
        ([("ids", "int64", (-1, -1)), ("mask", "int64", (-1, -1))], "tensor"),
        ([], "tensor"),
    ],
)
def test_signature_input_kind_offers_a_form_only_for_one_input(inputs, kind):
    signature = Signature(inputs=tuple(TensorSpec(*spec) for spec in inputs), outputs=())
    assert signature.input_kind == kind


# ----------------------------------------------------------------------------- parity


def test_parity_compare_handles_layouts_labels_and_zero_references():
    ref = [np.array([0.0, 0.0, 1.0]), np.array([1, 2, 3])]
    got = [np.array([[1e-6], [0.0], [1.0]], dtype=np.float32), np.array([1, 2, 3])]
    result, diffs = parity.compare(ref, got, atol=1e-5, rtol=0, names=["value", "label"])
    assert result.passed and result.max_abs_error == pytest.approx(1e-6, rel=1e-3)
    assert result.max_rel_error == pytest.approx(1e-6, rel=1e-3) and result.samples == 3
    assert [d.discrete for d in diffs] == [False, True]

    result, diffs = parity.compare(ref, [got[0], np.array([1, 2, 4])], atol=1e-5, rtol=0)
    assert not result.passed
    with pytest.raises(ParityError, match="output 'output_1': 1 of 3 values differ"):
        parity.ensure(result, diffs)

    logits = np.array([[0.1, 0.9], [0.8, 0.2]])
    swapped = np.array([[0.9, 0.1], [0.8, 0.2]])
    result, _ = parity.compare([logits], [swapped], atol=1e-3, rtol=1e-3, reference_name="fp32")
    assert result.top1_agreement == 0.5 and not result.passed and result.reference == "fp32"

    nan_out, _ = parity.compare([np.ones(2)], [np.array([1.0, np.nan])], atol=1, rtol=1)
    assert not nan_out.passed


# ------------------------------------------------------------------------- laziness


def test_importing_nbdeploy_export_loads_no_framework(tmp_path):
    code = (
        "import sys, nbdeploy\n"
        "nbdeploy.export\n"
        "import nbdeploy.exporters\n"
        "from nbdeploy.exporters import export_model, eager_runner, parity\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'sklearn') if m in sys.modules))\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_sklearn_export_loads_neither_torch_nor_tensorflow(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "import nbdeploy as nbd\n"
        "x = np.random.default_rng(0).random((40, 3)); y = (x[:, 0] > 0.5).astype(int)\n"
        "art = nbd.export(LogisticRegression().fit(x, y), x[:4])\n"
        "again = nbd.export(LogisticRegression().fit(x, y), x[:4], name='second')\n"
        "print(art.parity.passed, again.name, 'torch' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "second", "False", "False"]
