"""Quantized variants of real torch exports, measured against fp32 by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from nbdeploy._errors import QuantizeError
from nbdeploy._types import Parity, Quantization, Signature, TensorSpec
from nbdeploy.artifact import ModelArtifact, store_onnx
from nbdeploy.optimize import quantize_variants, select_auto
from tests.helpers import models
from tests.helpers.onnx_models import save_celu

SEQ_LEN = 16
VOCAB = 1000


def _torch_export(model, sample: np.ndarray, path: Path, input_name: str, dynamic: dict) -> Path:
    import torch

    torch.onnx.export(
        model,
        (torch.from_numpy(sample),),
        str(path),
        dynamo=False,
        input_names=[input_name],
        output_names=["scores"],
        dynamic_axes={input_name: dynamic, "scores": {0: "batch"}},
        opset_version=17,
    )
    return path


def _store(path: Path, name: str) -> ModelArtifact:
    return store_onnx(path, name=name, framework="torch", labels=[str(i) for i in range(10)])


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _token_data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids sprinkled with keywords: the class is whose keywords (25 ids each) appear."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 4, rows)
    tokens = rng.integers(0, VOCAB, (rows, SEQ_LEN))
    own = rng.random((rows, SEQ_LEN)) < 0.5
    in_class = classes[:, None] * 25 + rng.integers(0, 25, (rows, SEQ_LEN))
    return np.where(own, in_class, tokens).astype(np.int64), classes.astype(np.int64)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Briefly trained MLP, CNN and transformer, exported once (stored per test: fresh home)."""
    folder = tmp_path_factory.mktemp("exports")
    x, y = models.digits()
    mlp = models.mlp()
    models.train(mlp, x, y)
    cnn = models.cnn()
    images = x.reshape(-1, 1, 8, 8)
    models.train(cnn, images, y, epochs=15)
    transformer = models.transformer(vocab=VOCAB)
    tokens, classes = _token_data(512, seed=0)
    models.train(transformer, tokens, classes, epochs=20)
    return {
        "mlp": _torch_export(mlp, x[:8], folder / "mlp.onnx", "pixels", {0: "batch"}),
        "cnn": _torch_export(cnn, images[:8], folder / "cnn.onnx", "image", {0: "batch"}),
        "transformer": _torch_export(
            transformer, tokens[:8], folder / "transformer.onnx", "tokens", {0: "batch", 1: "seq"}
        ),
    }


def test_mlp_int8_dynamic_and_fp16_report_size_parity_and_accuracy(exports):
    x, y = models.digits()
    fp32 = _store(exports["mlp"], "digits-mlp")

    int8, fp16 = quantize_variants(fp32, ["int8-dynamic", "fp16"], calibration=x, labels=y)

    assert (int8.variant, fp16.variant) == ("int8-dynamic", "fp16")
    fp32_accuracy = int8.metadata["fp32_accuracy"]
    assert fp32_accuracy > 0.9
    for variant in (int8, fp16):
        assert variant.ok, variant.quantization.reason
        assert variant.quantization.quantized_nodes > 0
        assert variant.parity.reference == "fp32"
        assert variant.parity.samples == len(x)
        assert variant.parity.top1_agreement >= 0.98
        assert abs(variant.quantization.accuracy_delta) <= 0.02
        assert variant.quantization.accuracy == pytest.approx(
            fp32_accuracy + variant.quantization.accuracy_delta
        )
        assert variant.metadata["fp32_sha256"] == fp32.sha256
        assert variant.path != fp32.path
    assert int8.quantization.size_ratio < 0.4
    assert 0.4 < fp16.quantization.size_ratio < 0.6
    assert "MatMulInteger" in _op_types(int8.path)
    assert fp16.parity.max_abs_error < int8.parity.max_abs_error

    reloaded = ModelArtifact.load(int8.directory)
    assert reloaded.quantization == int8.quantization
    assert reloaded.parity == int8.parity
    assert reloaded.variant == "int8-dynamic"


def test_cnn_int8_with_calibration_is_static_qdq_and_runs(exports):
    x, y = models.digits()
    images = x.reshape(-1, 1, 8, 8)
    fp32 = _store(exports["cnn"], "digits-cnn")

    (variant,) = quantize_variants(fp32, ["int8"], calibration=images[:400], labels=y[:400])

    assert variant.variant == "int8-static"
    assert variant.ok, variant.quantization.reason
    assert variant.metadata["requested_mode"] == "int8"
    assert variant.metadata["format"] == "QDQ"
    assert variant.metadata["per_channel"] is True
    assert variant.metadata["calibration_rows"] == 256
    ops = _op_types(variant.path)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "ConvInteger" not in ops
    assert variant.quantization.quantized_nodes >= 4
    assert variant.quantization.size_ratio < 0.4
    assert variant.parity.top1_agreement >= 0.95
    assert variant.quantization.accuracy_delta is not None

    session = ort.InferenceSession(str(variant.path), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32.path), providers=["CPUExecutionProvider"])
    held_out = {"image": images[1500:1600]}
    scores = session.run(None, held_out)[0]
    assert scores.shape == (100, 10)
    agreement = np.mean(scores.argmax(1) == reference.run(None, held_out)[0].argmax(1))
    assert agreement >= 0.95


def test_cnn_int8_without_calibration_stays_dynamic_and_leaves_conv_alone(exports):
    fp32 = _store(exports["cnn"], "digits-cnn")

    (variant,) = quantize_variants(fp32, "int8")

    assert variant.variant == "int8-dynamic"
    assert variant.ok, variant.quantization.reason
    assert variant.metadata["evaluation_data"] == "random"
    assert "Conv" not in variant.metadata["op_types"]
    ops = _op_types(variant.path)
    assert "ConvInteger" not in ops and "Conv" in ops
    assert "MatMulInteger" in ops
    session = ort.InferenceSession(str(variant.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)


def test_transformer_int8_is_small_after_preprocessing(exports):
    tokens, classes = _token_data(128, seed=1)
    fp32 = _store(exports["transformer"], "text")

    (variant,) = quantize_variants(fp32, ["int8"], calibration=tokens, labels=classes)

    assert variant.variant == "int8-dynamic"
    assert variant.ok, variant.quantization.reason
    assert not variant.metadata["quant_pre_process"].startswith("none"), variant.metadata[
        "quant_pre_process"
    ]
    assert variant.quantization.size_ratio <= 0.3
    assert variant.size_bytes <= 0.3 * fp32.size_bytes
    assert "MatMulInteger" in _op_types(variant.path)
    assert variant.metadata["fp32_accuracy"] > 0.8
    assert variant.parity.top1_agreement >= 0.9
    assert variant.parity.samples == 128


def _relu_add_model(path: Path) -> Path:
    """A graph with nothing a quantizer can touch: Relu then Add of a tiny bias."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["positive"]),
            helper.make_node("Add", ["positive", "bias"], ["y"]),
        ],
        "relu_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("bias", TensorProto.FLOAT, [4], [0.5, -0.5, 1.0, 2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def test_graph_without_quantizable_ops_is_reported_as_noop(tmp_path):
    fp32 = store_onnx(_relu_add_model(tmp_path / "relu_add.onnx"), name="relu", framework="onnx")

    int8, fp16 = quantize_variants(fp32, ["int8", "fp16"])

    assert int8.variant == "int8-dynamic"
    assert not int8.ok
    assert int8.quantization.status == "noop"
    assert int8.quantization.quantized_nodes == 0
    assert "nothing was quantized" in int8.quantization.reason
    assert "Relu" in int8.quantization.reason
    assert not fp16.ok
    assert fp16.quantization.status == "noop"
    assert "not smaller" in fp16.quantization.reason
    assert int8.parity.max_abs_error == 0.0
    assert int8.parity.top1_agreement == 1.0
    assert ModelArtifact.load(int8.directory).quantization.status == "noop"


def test_variant_onnxruntime_cannot_run_is_reported_as_failed(tmp_path):
    """Celu is float32-only in ONNX, yet the fp16 converter rewrites it: the result is invalid."""
    fp32 = store_onnx(save_celu(tmp_path / "celu.onnx"), name="celu", framework="onnx")

    (fp16,) = quantize_variants(fp32, ["fp16"])

    assert not fp16.ok
    assert fp16.quantization.status == "failed"
    assert "onnxruntime cannot run the fp16 model" in fp16.quantization.reason
    assert fp16.parity is None
    assert fp16.path.exists() and fp16.path != fp32.path


def test_fp32_mode_adds_nothing(tmp_path):
    fp32 = store_onnx(_relu_add_model(tmp_path / "relu_add.onnx"), name="relu", framework="onnx")
    assert quantize_variants(fp32, ["fp32"]) == []


def test_unknown_mode_is_refused_with_the_valid_ones(tmp_path):
    fp32 = store_onnx(_relu_add_model(tmp_path / "relu_add.onnx"), name="relu", framework="onnx")
    with pytest.raises(QuantizeError, match="int4") as caught:
        quantize_variants(fp32, ["int8", "int4"])
    assert "int8-static" in str(caught.value) and "fp16" in str(caught.value)


def test_static_quantization_without_calibration_is_refused(exports):
    fp32 = _store(exports["mlp"], "digits-mlp")
    with pytest.raises(QuantizeError, match="calibration"):
        quantize_variants(fp32, ["int8-static"])


def test_labels_without_calibration_are_refused(exports):
    fp32 = _store(exports["mlp"], "digits-mlp")
    with pytest.raises(QuantizeError, match="calibration"):
        quantize_variants(fp32, ["int8-dynamic"], labels=np.zeros(8, np.int64))


def test_labels_must_be_class_indices_for_every_row(exports):
    x, _ = models.digits()
    fp32 = _store(exports["mlp"], "digits-mlp")
    with pytest.raises(QuantizeError, match="class indices"):
        quantize_variants(fp32, ["fp16"], calibration=x[:10], labels=["a"] * 10)
    with pytest.raises(QuantizeError, match="one class index per calibration row"):
        quantize_variants(fp32, ["fp16"], calibration=x[:10], labels=np.zeros(4, np.int64))


def _fake(variant: str, agreement: float | None, *, status: str = "ok", passed: bool = True):
    """Artifacts for the selection logic, which reads only variant, parity and status."""
    signature = Signature(inputs=(TensorSpec("x", "float32", (-1, 4)),), outputs=())
    return ModelArtifact(
        path=Path("/nonexistent") / variant / "model.onnx",
        name="m",
        signature=signature,
        framework="torch",
        variant=variant,
        parity=Parity(0.1, 0.01, 0.05, 0.05, passed, top1_agreement=agreement, reference="fp32"),
        quantization=None if variant == "fp32" else Quantization(mode=variant, status=status),
    )


def test_select_auto_picks_the_fastest_qualifying_variant():
    fp32 = _fake("fp32", None)
    int8 = _fake("int8-dynamic", 0.995)
    fp16 = _fake("fp16", 1.0)
    latency = {"fp32": 2.0, "int8-dynamic": 0.8, "fp16": 1.5}

    assert select_auto(fp32, [int8, fp16], latency) is int8
    assert select_auto(fp32, [int8, fp16], latency, min_agreement=0.999) is fp16
    assert select_auto(fp32, [int8, fp16], {**latency, "fp16": 2.5}, min_agreement=0.999) is fp32


def test_select_auto_reads_latencies_keyed_by_label_as_benchmark_reports_do():
    fp32 = _fake("fp32", None)
    fp16 = _fake("fp16", 1.0)
    latency = {"m:fp32": 2.0, "m:fp16": 1.0}

    assert select_auto(fp32, [fp16], latency) is fp16
    assert select_auto(fp32, [fp16], {**latency, "m:fp32": 0.5}) is fp32


def test_select_auto_falls_back_to_fp32():
    fp32 = _fake("fp32", None)
    latency = {"fp32": 2.0, "int8-static": 0.5, "int8-dynamic": 0.6, "fp16": 0.7}
    disagreeing = _fake("int8-static", 0.9)
    noop = _fake("int8-dynamic", 1.0, status="noop")
    untimed = _fake("fp16", 1.0)

    assert select_auto(fp32, [disagreeing, noop], latency) is fp32
    assert select_auto(fp32, [untimed], {"fp32": 2.0}) is fp32
    assert select_auto(fp32, [], {}) is fp32


def test_select_auto_uses_parity_for_models_without_class_scores():
    fp32 = _fake("fp32", None)
    regression_ok = _fake("int8-dynamic", None, passed=True)
    regression_off = _fake("int8-static", None, passed=False)
    latency = {"fp32": 2.0, "int8-dynamic": 1.0, "int8-static": 0.5}

    assert select_auto(fp32, [regression_ok, regression_off], latency) is regression_ok
