"""Plain typed records shared by every layer: tensor specs, signatures, parity reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nbdeploy._errors import ExportError

InputKind = Literal["image", "text", "tabular", "tensor"]

ONNX_TO_NUMPY: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}

NUMPY_TO_V2: dict[str, str] = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "str": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model: numpy dtype name and shape, ``-1`` for a dynamic dim."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol (V2) datatype name, e.g. ``FP32``."""
        return NUMPY_TO_V2.get(self.dtype, self.dtype.upper())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(
            name=data["name"], dtype=data["dtype"], shape=tuple(int(d) for d in data["shape"])
        )


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of an ONNX model, as read from the model itself."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None = None

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @property
    def dynamic_batch(self) -> bool:
        """True when every input's first dimension is dynamic, so requests can be batched."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.inputs)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, when an input's first dimension is static."""
        return next((s.shape[0] for s in self.inputs if s.shape and s.shape[0] > 0), None)

    @property
    def input_kind(self) -> InputKind:
        """What the demo page offers: an image upload, a text box, a tabular form, or the
        JSON editor (``tensor``).

        Only a model with one input gets a form, since the page builds one tensor from one
        picture, text or row; uint8 and dynamic-size inputs can be images (the deploy sample
        supplies the size).
        """
        if len(self.inputs) != 1:
            return "tensor"
        (spec,) = self.inputs
        shape = spec.shape
        if spec.dtype == "str":
            return "text"
        if spec.dtype.startswith(("int", "uint")) and len(shape) == 2:
            return "text"
        if spec.dtype.startswith(("float", "uint8")):
            if len(shape) == 4 or (len(shape) == 3 and all(d == -1 or d >= 8 for d in shape[1:])):
                return "image"
            if len(shape) == 2 and 0 < shape[1] <= 512:
                return "tabular"
        return "tensor"

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(d) for d in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(d) for d in data["outputs"]),
            opset=data.get("opset"),
        )

    @classmethod
    def from_onnx(cls, model: Any) -> Signature:
        """Read the signature of an ``onnx.ModelProto`` or a path to a ``.onnx`` file.

        Raises ExportError naming every input or output that is not a tensor (a sequence, a
        map, ...), its type and the fix: nbdeploy serves tensors only.
        """
        import onnx

        proto = (
            onnx.load(str(model), load_external_data=False)
            if isinstance(model, str | Path)
            else model
        )
        graph = proto.graph
        initializers = {init.name for init in graph.initializer}
        inputs = [v for v in graph.input if v.name not in initializers]
        _require_tensors(graph, inputs, "input")
        _require_tensors(graph, graph.output, "output")

        def spec(value_info: Any) -> TensorSpec:
            tensor_type = value_info.type.tensor_type
            elem = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            dtype = "str" if elem == np.dtype(object) else np.dtype(elem).name
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim
            )
            return TensorSpec(value_info.name, dtype, dims)

        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        return cls(
            inputs=tuple(spec(v) for v in inputs),
            outputs=tuple(spec(v) for v in graph.output),
            opset=opset,
        )


def onnx_type_text(type_proto: Any) -> str:
    """An ONNX ``TypeProto`` as text, the way onnxruntime prints it: ``tensor(float)``,
    ``seq(map(int64,tensor(float)))``, ``map(string,tensor(double))``, ``optional(...)``."""
    import onnx

    def elem_name(elem_type: int) -> str:
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"type {elem_type}"

    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({elem_name(type_proto.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({elem_name(type_proto.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({onnx_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({onnx_type_text(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        key = elem_name(type_proto.map_type.key_type)
        return f"map({key},{onnx_type_text(type_proto.map_type.value_type)})"
    if kind == "opaque_type":
        opaque = type_proto.opaque_type
        return f"opaque({'.'.join(p for p in (opaque.domain, opaque.name) if p)})"
    return "an unknown type"


def _require_tensors(graph: Any, values: Any, role: str) -> None:
    """One ExportError naming every non-tensor (or untyped tensor) input or output."""
    import onnx

    bad = []
    for value in values:
        if value.type.WhichOneof("value") != "tensor_type":
            bad.append((value.name, onnx_type_text(value.type)))
        elif value.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            bad.append((value.name, "a tensor with no element type"))
    if not bad:
        return
    if len(bad) == 1:
        ((name, text),) = bad
        problem = f"{role} '{name}' of the ONNX model is {text}, not a tensor"
    else:
        listed = ", ".join(f"'{name}' ({text})" for name, text in bad)
        problem = f"{role}s {listed} of the ONNX model are not tensors"
    if role == "input":
        fix = (
            "re-export the model with tensor inputs (e.g. one [batch, features] float tensor,"
            " or one [batch, 1] tensor per column)"
        )
    elif any(_made_by(graph, name) == "ZipMap" for name, _ in bad):
        fix = (
            "pass the file or ModelProto to nbdeploy.export / nbdeploy.deploy, which replace"
            " a ZipMap output by its [batch, classes] probability tensor, or re-export it with"
            " tensor outputs (skl2onnx: options={'zipmap': False})"
        )
    else:
        fix = (
            "re-export the model with tensor outputs (a sequence or map cannot be served;"
            " for a skl2onnx classifier: options={'zipmap': False})"
        )
    raise ExportError(f"{problem}: nbdeploy serves tensors only; {fix}")


def _made_by(graph: Any, value_name: str) -> str | None:
    """The op type of the node that produces ``value_name`` in ``graph``, if any."""
    return next((node.op_type for node in graph.node if value_name in node.output), None)


@dataclass(frozen=True)
class Parity:
    """How far one model's outputs are from a reference's on the same inputs."""

    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    passed: bool
    top1_agreement: float | None = None
    samples: int = 0
    reference: str = "original"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Parity:
        return cls(**data)

    def __str__(self) -> str:
        text = f"max abs {self.max_abs_error:.3g}, max rel {self.max_rel_error:.3g}"
        if self.top1_agreement is not None:
            text += f", top-1 agreement {self.top1_agreement:.1%}"
        return text


@dataclass
class Quantization:
    """What a quantized variant is and how it compares to the fp32 model it came from."""

    mode: str
    status: str = "ok"
    reason: str | None = None
    quantized_nodes: int = 0
    size_ratio: float | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantization:
        return cls(**data)
