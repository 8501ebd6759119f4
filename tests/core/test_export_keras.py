"""Exports of real Keras 3 models and TensorFlow graphs (tf.Module, SavedModel directories)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import as_feeds
from nbdeploy.exporters import eager_runner, export_model
from tests.helpers import models

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


def _onnx_run(artifact, sample) -> dict[str, np.ndarray]:
    return _ort.run(_ort.session(artifact.path), as_feeds(artifact.signature, sample))


@pytest.fixture(scope="module")
def sequential():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    x, y = models.digits()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:300], y[:300], epochs=2, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def two_inputs():
    keras.utils.set_random_seed(1)
    a, b = keras.Input((16,), name="a"), keras.Input((8,), name="b")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([a, b]))
    return keras.Model([a, b], keras.layers.Dense(3)(hidden), name="two_in")


def test_keras_sequential(sequential):
    x, _ = models.digits()
    art = export_model(sequential, x[:8].astype(np.float64), name=None)
    sig = art.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("input", "float32", (-1, 64))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [("output", "float32", (-1, 10))]
    assert isinstance(sig.opset, int) and art.framework == "keras"
    assert art.framework_version == keras.__version__ and art.name == sequential.name
    assert art.metadata["exporter"] == "keras" and "tensorflow" in art.metadata["versions"]
    assert art.parity.passed and art.parity.max_abs_error < 1e-5
    assert art.parity.top1_agreement == 1.0 and art.input_kind == "tabular"
    for rows in (1, 5):
        batch = x[300 : 300 + rows]
        got = _onnx_run(art, batch)["output"]
        np.testing.assert_allclose(got, sequential(batch, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        eager_runner(art, x[:3])().numpy(), sequential(x[:3], training=False).numpy(), rtol=1e-6
    )


def test_keras_functional_two_inputs_dict_and_list(two_inputs):
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 16)), rng.random((8, 8))
    by_name = export_model(two_inputs, {"b": b, "a": a}, name=None)
    by_position = export_model(two_inputs, [a[:1], b[:1]], name="two-list")
    for art in (by_name, by_position):
        assert art.signature.input_names == ["a", "b"] and art.signature.dynamic_batch
        assert art.signature.outputs[0].shape == (-1, 3) and art.parity.passed
    assert by_name.name == "two_in" and by_position.parity.samples == 1
    got = _onnx_run(by_name, {"a": a[:5], "b": b[:5]})["output"]
    expected = two_inputs([a[:5], b[:5]], training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    feeds = as_feeds(by_name.signature, (a[:2], b[:2]))
    np.testing.assert_allclose(eager_runner(two_inputs, feeds)().numpy(), expected[:2], atol=1e-6)


def test_keras_token_model_is_text_with_dynamic_length():
    keras.utils.set_random_seed(2)
    tokens = keras.Input((None,), dtype="int64", name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(100, 8)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2)(pooled))
    ids = np.random.default_rng(0).integers(0, 100, size=(8, 12))
    art = export_model(model, ids, name="text")
    spec = art.signature.inputs[0]
    assert (spec.name, spec.dtype, spec.shape) == ("tokens", "int64", (-1, -1))
    assert art.input_kind == "text" and art.parity.passed
    longer = np.random.default_rng(1).integers(0, 100, size=(3, 30))
    np.testing.assert_allclose(
        _onnx_run(art, longer)["output"], model(longer, training=False).numpy(), atol=1e-5
    )


def test_keras_wrong_shape_sample_says_expected_and_given(sequential):
    with pytest.raises(InputError) as caught:
        export_model(sequential, np.ones((4, 32), dtype=np.float32), name=None)
    message = str(caught.value)
    assert "rejected the sample (0 [4, 32] float32)" in message
    assert "[None, 64]" in message


class Softmax(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = tf.Variable(tf.random.stateless_normal((8, 3), seed=(1, 2)))

    @tf.function
    def __call__(self, x):
        return tf.nn.softmax(tf.matmul(x, self.weight))


def test_tf_module_with_tf_function():
    module = Softmax()
    x = np.random.default_rng(0).random((8, 8))
    art = export_model(module, x, name=None)
    assert art.framework == "tensorflow" and art.metadata["exporter"] == "tf2onnx"
    assert art.name == "softmax"
    assert [(s.name, s.dtype, s.shape) for s in art.signature.inputs] == [("x", "float32", (-1, 8))]
    assert art.signature.outputs[0].shape == (-1, 3) and art.parity.passed
    batch = x[:5].astype(np.float32)
    np.testing.assert_allclose(_onnx_run(art, batch)["output"], module(batch).numpy(), atol=1e-6)
    np.testing.assert_allclose(eager_runner(module, batch)().numpy(), module(batch).numpy())


def test_saved_model_directory(tmp_path):
    module = Softmax()
    spec = tf.TensorSpec([None, 8], tf.float32, name="features")
    path = tmp_path / "scorer"
    tf.saved_model.save(module, str(path), signatures=module.__call__.get_concrete_function(spec))
    x = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    art = export_model(path, x, name=None)
    assert art.name == "scorer" and art.framework == "tensorflow"
    assert art.signature.input_names == ["features"] and art.signature.dynamic_batch
    assert art.parity.passed and art.parity.max_abs_error < 1e-5
    (output,) = art.signature.output_names
    np.testing.assert_allclose(_onnx_run(art, x[:1])[output], module(x[:1]).numpy(), atol=1e-6)
    with pytest.raises(InputError, match=r"expects features \[None, 8\] float32"):
        export_model(path, np.ones((2, 5), dtype=np.float32), name=None)


def test_keras_state_turned_into_inputs_is_a_clear_error():
    data = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(data)
    model = keras.Sequential([keras.Input((5,)), norm, keras.layers.Dense(3)])
    with pytest.raises(ExportError, match="turned internal state into inputs"):
        export_model(model, data[:8], name="normalized")
