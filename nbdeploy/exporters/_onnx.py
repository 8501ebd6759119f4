"""ONNX plumbing shared by every exporter, and ONNX files/protos given directly by the user."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _ort
from nbdeploy._errors import ExportError, InputError, NbdeployError
from nbdeploy._tensors import as_feeds, check_finite, sample_parts
from nbdeploy._types import Signature
from nbdeploy.exporters.base import Exported
from nbdeploy.vocabulary import safe_name

GENERIC_GRAPH_NAMES = {"", "main_graph", "torch_jit", "tf2onnx", "model", "graph"}


def load(source: Any) -> Any:
    """An ``onnx.ModelProto`` from a proto, or from a path that must exist and parse as ONNX."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise ExportError(f"no such ONNX file: {path}")
    if path.is_dir():
        raise ExportError(
            f"{path} is a directory, not an ONNX file (a TensorFlow SavedModel directory"
            " holds saved_model.pb)"
        )
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not an ONNX model: onnx cannot parse it ({exc})") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ExportError(f"{path} is not an ONNX model: it holds no graph")
    return proto


def tidy(proto: Any) -> Any:
    """Drop duplicate opset imports (skl2onnx writes the default domain twice) and per-node
    debug metadata (the dynamo exporter records stack traces there: ~100 KB that every
    served copy and quantized variant would carry)."""
    _drop_node_metadata(proto.graph)
    seen: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = entry.domain or ""
        seen[domain] = max(seen.get(domain, 0), entry.version)
    if len(seen) != len(proto.opset_import):
        del proto.opset_import[:]
        for domain, version in seen.items():
            proto.opset_import.add(domain=domain, version=version)
    return proto


def _drop_node_metadata(graph: Any) -> None:
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _drop_node_metadata(attr.g)
            for sub in attr.graphs:
                _drop_node_metadata(sub)


def rename_io(proto: Any, renames: Mapping[str, str]) -> Any:
    """Rename graph inputs/outputs everywhere they are referenced (nodes, subgraphs, infos)."""
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return proto

    def fix_graph(graph: Any) -> None:
        for node in graph.node:
            for i, value in enumerate(node.input):
                if value in renames:
                    node.input[i] = renames[value]
            for i, value in enumerate(node.output):
                if value in renames:
                    node.output[i] = renames[value]
            for attr in node.attribute:
                if attr.HasField("g"):
                    fix_graph(attr.g)
                for sub in attr.graphs:
                    fix_graph(sub)
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.name in renames:
                info.name = renames[info.name]

    fix_graph(proto.graph)
    return proto


def output_names(count: int) -> list[str]:
    """``output`` for one output, ``output_0..`` for several."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


@contextmanager
def saved(proto: Any) -> Iterator[Path]:
    """The proto written to a temporary ``model.onnx`` (removed afterwards)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="nbdeploy-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(path))
        yield path


def run(model: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session (or the model at a path) once; runtime failures become an ExportError."""
    sess = _ort.session(model) if isinstance(model, str | Path) else model
    try:
        return _ort.run(sess, dict(feeds))
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise ExportError(f"onnxruntime failed to run the model on inputs {shapes}: {exc}") from exc


def require_dynamic_batch(signature: Signature, exporter: str) -> None:
    """Every input and output must have a dynamic first dimension, or batching breaks."""
    fixed = [
        f"{spec.name} {list(spec.shape)}"
        for spec in (*signature.inputs, *signature.outputs)
        if not spec.shape or spec.shape[0] != -1
    ]
    if fixed:
        raise ExportError(
            f"the {exporter} export has no dynamic batch dimension on {', '.join(fixed)}"
            " (expected -1 as the first dimension of every input and output)"
        )


def check_batch_independence(
    sess: Any,
    feeds: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
) -> None:
    """A row's result must not depend on the batch it is in, or the batch dim is fake.

    Runs the first row alone (or a single-row sample twice) and compares with the full run.
    """
    rows = int(next(iter(feeds.values())).shape[0])
    if rows >= 2:
        trial = {k: v[:1] for k, v in feeds.items()}
        sizes = (1, rows)
    else:
        trial = {k: np.concatenate([v, v]) for k, v in feeds.items()}
        sizes = (2, 1)
    advice = (
        ": the model's batch dimension is not really dynamic, e.g. a reshape bakes in the"
        " sample's batch size; use x.reshape(x.shape[0], -1) or flatten instead of fixed sizes"
    )
    try:
        got = run(sess, trial)
    except ExportError as exc:
        raise ExportError(
            f"the export fails at batch size {sizes[0]} although the sample had {sizes[1]}"
            f" row(s){advice} ({exc})"
        ) from exc
    for name, expected in outputs.items():
        actual = got[name][:1] if rows >= 2 else got[name][1:2]
        expected = expected[:1]
        same_shape = actual.shape == expected.shape
        if expected.dtype.kind in "fc":
            equal = same_shape and np.allclose(
                actual, expected, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4)
            )
        else:
            equal = same_shape and bool(np.all(actual == expected))
        if not equal:
            raise ExportError(
                f"output '{name}' of the export changes with the batch size (row 0 differs"
                f" between batch {sizes[0]} and batch {sizes[1]}){advice}"
            )


def check_labels(signature: Signature, labels: list[str] | None) -> None:
    """Labels must name the columns of some 2-D output, or the demo would mislabel classes."""
    if labels is None:
        return
    widths = [
        spec.shape[1] for spec in signature.outputs if len(spec.shape) == 2 and spec.shape[1] > 1
    ]
    if widths and len(labels) not in widths:
        raise InputError(
            f"labels has {len(labels)} names but the model's class outputs have"
            f" {' or '.join(str(w) for w in widths)} columns"
        )


class OnnxExporter:
    """ONNX files and protos, stored as given: validated, and run on the sample when there is
    one, but with no original model there is no parity to measure and nothing to run eagerly.
    """

    framework = "onnx"

    def detect(self, model: Any) -> bool:
        """A ModelProto, or any path: the registry asks Keras and TensorFlow about paths first."""
        cls = type(model)
        return isinstance(model, str | Path) or (
            cls.__module__.startswith("onnx") and cls.__name__ == "ModelProto"
        )

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """The validated proto; ``opset`` is ignored, an ONNX model keeps its own."""
        import onnx

        proto = tidy(load(model))
        is_path = not isinstance(model, onnx.ModelProto)
        try:
            onnx.checker.check_model(str(model) if is_path else proto)
        except Exception as exc:
            raise ExportError(f"the ONNX model is invalid: {exc}") from exc
        if sample is not None:
            _check_runs_on(proto, sample)
        producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
        return Exported(
            proto=proto,
            feeds={},
            reference=None,
            framework=self.framework,
            framework_version=self.versions()["onnx"],
            default_name=safe_name(Path(model).stem) if is_path else _graph_name(proto),
            metadata={"exporter": "onnx", "producer": producer or None},
        )

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        raise ExportError("an ONNX model has no original framework model to run eagerly")

    def versions(self) -> dict[str, str]:
        import onnx

        return {"onnx": onnx.__version__}


EXPORTER = OnnxExporter()


def _check_runs_on(proto: Any, sample: Any) -> None:
    """A sample the model cannot run on is the caller's mistake: say what it expects."""
    signature = Signature.from_onnx(proto)
    check_finite(sample_parts(sample))
    feeds = as_feeds(signature, sample)
    with saved(proto) as path:
        try:
            run(path, feeds)
        except NbdeployError as exc:
            raise InputError(
                f"the ONNX model does not run on the sample: {exc}"
                f" (it expects {[(s.name, s.dtype, list(s.shape)) for s in signature.inputs]})"
            ) from exc


def _graph_name(proto: Any) -> str:
    """The graph's name when it means something (not a generic or random hex one)."""
    name = proto.graph.name
    if name.lower() in GENERIC_GRAPH_NAMES or re.fullmatch(r"[0-9a-fA-F]{16,}", name):
        return "model"
    return safe_name(name)
