"""Plain typed records shared by every layer: tensor specs, signatures, parity reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
        """Read the signature of an ``onnx.ModelProto`` or a path to a ``.onnx`` file."""
        import onnx

        proto = (
            onnx.load(str(model), load_external_data=False)
            if isinstance(model, str | Path)
            else model
        )
        initializers = {init.name for init in proto.graph.initializer}

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
            inputs=tuple(spec(v) for v in proto.graph.input if v.name not in initializers),
            outputs=tuple(spec(v) for v in proto.graph.output),
            opset=opset,
        )


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
