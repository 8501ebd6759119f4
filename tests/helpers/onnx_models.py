"""Tiny ONNX graphs built with onnx.helper: no framework needed, exact numbers known."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nbdeploy.artifact import ModelArtifact


def linear_model(in_features: int = 4, out_features: int = 3, seed: int = 0):
    """y = x @ W + b with a dynamic batch dimension; returns (ModelProto, W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weight, bias


def make_artifact(name: str = "linear", seed: int = 0) -> ModelArtifact:
    """A stored (not yet registered) artifact of the linear model, with three labels."""
    from nbdeploy.artifact import store_onnx

    model, _, _ = linear_model(seed=seed)
    return store_onnx(model, name=name, framework="onnx", labels=["a", "b", "c"])


def save_linear(path: Path, seed: int = 0) -> Path:
    import onnx

    model, _, _ = linear_model(seed=seed)
    onnx.save(model, str(path))
    return path


def save_celu(path: Path) -> Path:
    """MatMul then Celu: Celu is float32-only in ONNX, yet the fp16 converter rewrites it, so
    onnxruntime refuses the fp16 variant (a variant that fails for a real reason)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Celu", ["h"], ["y"])],
        "matmul_celu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.eye(8).ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path
