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
from nbdeploy._tensors import as_feeds, check_finite, column_kind, is_frame, sample_parts
from nbdeploy._types import Signature, onnx_type_text
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
        """The validated proto; ``opset`` is ignored, an ONNX model keeps its own.

        ZipMap outputs (skl2onnx's default classifier output, a sequence of maps) are replaced
        by the probability tensor they zip, with the class names kept as labels and what each
        output means recorded (``metadata["outputs"]``; for other files ``_finish`` infers it).
        ``feeds`` are the sample as the ONNX model takes it ({} without one): there is no
        reference, so they serve only the NaN probe and the output inference.
        """
        import onnx

        proto = tidy(load(model))
        is_path = not isinstance(model, onnx.ModelProto)
        try:
            onnx.checker.check_model(str(model) if is_path else proto)
        except Exception as exc:
            raise ExportError(f"the ONNX model is invalid: {exc}") from exc
        if zipmaps(proto.graph):
            if not is_path:
                proto = _copy(proto)  # never rewrite the caller's ModelProto
            rewritten = unzip_maps(proto)
            try:
                onnx.checker.check_model(proto)
            except Exception as exc:  # a bug here, not the user's model
                raise ExportError(f"replacing the ZipMap outputs broke the model: {exc}") from exc
        else:
            rewritten = []
        signature = Signature.from_onnx(proto)
        outputs, classes = describe_outputs(proto.graph, signature, rewritten)
        producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
        metadata: dict[str, Any] = {"exporter": "onnx", "producer": producer or None}
        if rewritten:
            metadata["rewritten"] = rewritten
        if outputs:
            metadata["outputs"] = outputs
        columns = describe_columns(proto.graph, signature, sample)
        if columns:
            metadata["columns"] = columns
        feeds = _check_runs_on(proto, signature, sample) if sample is not None else {}
        return Exported(
            proto=proto,
            feeds=feeds,
            reference=None,
            framework=self.framework,
            framework_version=self.versions()["onnx"],
            default_name=safe_name(Path(model).stem) if is_path else _graph_name(proto),
            metadata=metadata,
            labels=classes,
        )

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        raise ExportError("an ONNX model has no original framework model to run eagerly")

    def versions(self) -> dict[str, str]:
        import onnx

        return {"onnx": onnx.__version__}


EXPORTER = OnnxExporter()


def _check_runs_on(proto: Any, signature: Signature, sample: Any) -> dict[str, np.ndarray]:
    """A sample the model cannot run on is the caller's mistake: say what it expects.

    Returns the sample as feeds (one per input, whatever their number and types).
    """
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
    return feeds


# --------------------------------------------------------------------- ZipMap outputs

ML_DOMAIN = "ai.onnx.ml"
CLASS_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")
"""Where ai.onnx.ml nodes (ZipMap, LinearClassifier, TreeEnsembleClassifier, SVMClassifier)
keep their class labels, in column order."""


def zipmaps(graph: Any) -> list[Any]:
    """The ZipMap nodes whose output is an output of the graph."""
    outputs = {o.name for o in graph.output}
    return [
        node
        for node in graph.node
        if node.op_type == "ZipMap" and node.domain == ML_DOMAIN and node.output[0] in outputs
    ]


def unzip_maps(proto: Any) -> list[dict[str, Any]]:
    """Replace each ZipMap that makes a graph output by the ``[batch, classes]`` float tensor
    it zips, in place, under the output's own name; the label output is left as it is.

    Returns one record per rewritten output (name, classes, type before and after), for
    ``metadata["rewritten"]``.
    """
    import onnx

    graph = proto.graph
    records = []
    for node in zipmaps(graph):
        name, source = node.output[0], node.input[0]
        info = next(o for o in graph.output if o.name == name)
        before = onnx_type_text(info.type)
        classes = class_labels(node) or []
        position = list(graph.node).index(node)
        graph.node.remove(node)
        io_names = {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
        made_here = any(source in other.output for other in graph.node)
        if made_here and source not in io_names:
            rename_io(proto, {source: name})  # the producer now writes the output itself
            kept = [v for v in graph.value_info if v.name != name]
            del graph.value_info[:]
            graph.value_info.extend(kept)
        else:  # the zipped tensor is an input or output itself: copy it out
            graph.node.insert(
                position, onnx.helper.make_node("Identity", [source], [name], name=f"{name}_id")
            )
            if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
                proto.opset_import.add(domain="", version=7)  # Identity's, for any IR version
        batch = _batch_dim(graph)
        info.type.CopyFrom(
            onnx.helper.make_tensor_type_proto(
                onnx.TensorProto.FLOAT, [batch, len(classes) or None]
            )
        )
        shape = [batch if isinstance(batch, int) else -1, len(classes) or -1]
        records.append(
            {
                "output": name,
                "removed": "ZipMap",
                "before": before,
                "after": f"tensor(float) {shape}",
                "classes": classes,
            }
        )
    return records


def class_labels(node: Any) -> list[str] | None:
    """A node's class labels as strings, in column order, or None when it has none."""
    for attr in node.attribute:
        if attr.name == "classlabels_strings" and attr.strings:
            return [s.decode("utf-8", errors="replace") for s in attr.strings]
        if attr.name in CLASS_ATTRIBUTES and attr.ints:
            return [str(i) for i in attr.ints]
    return None


def _batch_dim(graph: Any) -> str | int:
    """The first dimension of the first input when it is fixed, else a symbolic batch."""
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        break
    return "N"


def describe_outputs(
    graph: Any, signature: Signature, rewritten: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]] | None, list[str] | None]:
    """``metadata["outputs"]`` and the class names, as far as the graph itself says them.

    Rewritten ZipMaps are probabilities with their classes, and the one int/string label
    output beside a single ZipMap is its label. Without a ZipMap, the outputs are left to
    ``_finish`` (which judges them on a row) and only the classes are given, when the graph
    has exactly one ai.onnx.ml classifier node (LinearClassifier, TreeEnsembleClassifier,
    SVMClassifier) and a float ``[batch, C]`` output named like ``*probabilit*`` has one
    column per class (skl2onnx with ``zipmap: False``).
    """
    if rewritten:
        outputs: dict[str, dict[str, Any]] = {}
        for record in rewritten:
            outputs[record["output"]] = {"kind": "probabilities", "classes": record["classes"]}
        label_like = [s for s in signature.outputs if s.name not in outputs and _is_label(s)]
        if len(rewritten) == 1 and len(label_like) == 1:
            outputs[label_like[0].name] = {"kind": "label", "classes": rewritten[0]["classes"]}
        distinct = {tuple(r["classes"]) for r in rewritten}
        classes = list(distinct.pop()) if len(distinct) == 1 else None
        return outputs, classes or None

    classifiers = [
        node
        for node in graph.node
        if node.domain == ML_DOMAIN and node.op_type.endswith("Classifier")
    ]
    known = class_labels(classifiers[0]) if len(classifiers) == 1 else None
    fits = known is not None and any(
        "probabilit" in spec.name.lower()
        and spec.dtype.startswith("float")
        and len(spec.shape) == 2
        and spec.shape[1] in (-1, len(known))
        for spec in signature.outputs
    )
    return None, known if fits and known and len(known) > 1 else None


def _is_label(spec: Any) -> bool:
    """Integer or string values, one per row: ``[batch]`` or ``[batch, 1]``."""
    kind_ok = spec.dtype == "str" or spec.dtype.startswith(("int", "uint"))
    return kind_ok and (len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1))


def describe_columns(graph: Any, signature: Signature, sample: Any) -> list[dict[str, Any]] | None:
    """``metadata["columns"]`` for a file with one ``[batch, 1]`` input per column, entries as
    the scikit-learn exporter writes them: name, dtype (the DataFrame sample's, else the
    input's), kind, onnx_dtype, and for string inputs the categories of the ai.onnx.ml
    OneHotEncoder / LabelEncoder the input feeds, when the graph has one."""
    inputs = signature.inputs
    per_column = len(inputs) > 1 and all(
        len(spec.shape) == 2 and spec.shape[1] == 1 for spec in inputs
    )
    if not per_column:
        return None
    frame_dtypes = sample.dtypes if is_frame(sample) else None
    columns = []
    for spec in inputs:
        if frame_dtypes is not None and spec.name in frame_dtypes.index:
            dtype = frame_dtypes[spec.name]
            entry: dict[str, Any] = {"name": spec.name, "dtype": str(dtype)}
            entry["kind"] = column_kind(dtype)
        else:
            kinds = {"str": "categorical", "bool": "boolean"}
            entry = {"name": spec.name, "dtype": "object" if spec.dtype == "str" else spec.dtype}
            entry["kind"] = kinds.get(spec.dtype, "numeric")
        entry["onnx_dtype"] = spec.dtype
        categories = _encoder_categories(graph, spec.name) if spec.dtype == "str" else None
        if categories:
            entry["categories"] = categories[:MAX_CATEGORIES]
        columns.append(entry)
    return columns


MAX_CATEGORIES = 1000
PASS_THROUGH = {"Identity", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
"""Ops between a string input and its encoder that keep the values as they are."""


def _encoder_categories(graph: Any, name: str) -> list[str] | None:
    """The string categories of the encoder node ``name`` reaches through reshapes alone."""
    for _ in range(8):
        users = [node for node in graph.node if node.input and node.input[0] == name]
        if len(users) != 1:
            return None
        (node,) = users
        if node.domain == ML_DOMAIN and node.op_type in ("OneHotEncoder", "LabelEncoder"):
            key = "cats_strings" if node.op_type == "OneHotEncoder" else "keys_strings"
            found = next((a.strings for a in node.attribute if a.name == key), None)
            return [v.decode("utf-8", errors="replace") for v in found] if found else None
        if node.op_type not in PASS_THROUGH or node.domain not in ("", "ai.onnx"):
            return None
        name = node.output[0]
    return None


def _copy(proto: Any) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _graph_name(proto: Any) -> str:
    """The graph's name when it means something (not a generic or random hex one)."""
    name = proto.graph.name
    if name.lower() in GENERIC_GRAPH_NAMES or re.fullmatch(r"[0-9a-fA-F]{16,}", name):
        return "model"
    return safe_name(name)
