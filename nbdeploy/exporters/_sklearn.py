"""scikit-learn estimators and pipelines (and XGBoost / LightGBM models) -> ONNX through skl2onnx.

Two kinds of sample:

- a NumPy matrix [n, features] gives one float32 input ``input`` [-1, features], as always;
- a pandas DataFrame gives one input per column the model was fitted on, named exactly as the
  column, shape [-1, 1]: floats as ``tensor(float)``, integers as ``tensor(int64)``, strings,
  objects and categories as ``tensor(string)``, booleans as ``tensor(bool)`` (cast to float
  inside the graph where the converter needs numbers). A Pipeline starting with a
  ColumnTransformer gets those inputs natively from skl2onnx; any other model takes the
  columns as one numeric matrix, which a Concat node in front of the converted graph builds.

Classifiers are converted without ZipMap, so they answer with two plain tensors, ``label``
[n] and ``probabilities`` [n, classes], which any V2 client can read. What every output means
(``metadata["outputs"]``) and which inputs accept a missing value (``accepts_nan``, probed on
the original model) are recorded exactly.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy._errors import ExportError, InputError
from nbdeploy._format import first_line
from nbdeploy._tensors import (
    check_finite,
    column_array,
    column_kind,
    is_frame,
    sample_parts,
)
from nbdeploy.exporters import _onnx, _trees
from nbdeploy.exporters.base import Exported, NanProbe
from nbdeploy.vocabulary import safe_name

INPUT_NAME = "input"
FEATURES = "nbdeploy_features"
"""The internal name of the feature matrix a Concat builds from per-column inputs."""
DEFAULT_OPSET = 17
ML_OPSET = 3
RESERVED = ("label", "probabilities", "prediction", "output", "variable", FEATURES)
"""Output (and internal) names a column cannot have: ONNX names must be unique."""
MAX_CATEGORIES = 1000
PROBE_ROWS = 8
"""Sample rows the NaN probe puts a missing value into, per input."""
MAX_PROBE_ROWS = 4096
"""Cap on the probe rows of a matrix input (rows x features)."""


@dataclass
class _Sample:
    """The sample as the original model sees it and as the ONNX model is fed."""

    original: Any
    """What the original model is given: the DataFrame's model columns, or a float32 matrix."""
    feeds: dict[str, np.ndarray]
    """ONNX feeds by input name: one [n, 1] array per column, or ``input`` [n, features]."""
    frame: bool
    float_inputs: list[str] = field(default_factory=list)
    """The inputs that can hold NaN, probed for ``accepts_nan``."""
    dtypes: dict[str, str] = field(default_factory=dict)
    """The pandas dtype of each column, as text (frames only)."""


# ----------------------------------------------------------------------------- samples


def features(sample: Any) -> np.ndarray:
    """The sample as one float32 matrix [n_samples, n_features] (NaN is checked later)."""
    parts = sample_parts(sample)
    if isinstance(parts, Mapping):
        parts = list(parts.values())
    if len(parts) != 1:
        raise InputError(
            f"a scikit-learn model takes one 2-D feature array; the sample has {len(parts)} inputs"
        )
    array = parts[0]
    if array.ndim != 2:
        raise InputError(
            "a scikit-learn model takes a 2-D array [n_samples, n_features]; the sample has"
            f" shape {list(array.shape)} (for one row use x.reshape(1, -1))"
        )
    try:
        return np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"the sample must be numeric features convertible to float32; got {array.dtype}"
            " (for string or categorical columns pass a pandas DataFrame)"
        ) from exc


def model_columns(model: Any, frame: Any) -> list[str]:
    """The columns of ``frame`` the model takes, in the order it was fitted on.

    Raises InputError naming the columns the model was fitted on that the frame lacks.
    """
    present = [str(c) for c in frame.columns]
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is None:
        expected = getattr(model, "n_features_in_", None)
        if expected is not None and expected != len(present):
            raise InputError(
                f"the {type(model).__name__} was fitted on {expected} features; the DataFrame"
                f" has {len(present)} columns {present}"
            )
        return present
    names = [str(n) for n in fitted]
    missing = [n for n in names if n not in present]
    if missing:
        # LightGBM reports its own spelling of the names ("mean radius" -> "mean_radius").
        spelled = {_plain(c): c for c in present}
        if len(spelled) == len(present) and all(_plain(n) in spelled for n in names):
            return [spelled[_plain(n)] for n in names]
        raise InputError(
            f"the sample lacks column(s) {missing} that the {type(model).__name__} was fitted on"
        )
    return names


def _plain(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name)


def frame_input(model: Any, frame: Any) -> Any:
    """``frame`` reduced to the model's columns in fitting order (extra columns dropped)."""
    names = model_columns(model, frame)
    by_name = {str(c): c for c in frame.columns}
    return frame[[by_name[n] for n in names]]


def _frame_sample(model: Any, frame: Any) -> _Sample:
    if len(frame) == 0:
        raise InputError("the sample DataFrame has no rows: pass a few real rows, e.g. df.head(8)")
    original = frame_input(model, frame)
    names = [str(c) for c in original.columns]
    clash = [n for n in names if n in RESERVED]
    if clash:
        raise InputError(
            f"column(s) {clash} have the name of a model output; rename them, e.g."
            f" df.rename(columns={{{clash[0]!r}: {clash[0] + '_'!r}}}) before fitting"
        )
    feeds = {n: column_array(original[c], n) for n, c in zip(names, original.columns, strict=True)}
    return _Sample(
        original=original,
        feeds=feeds,
        frame=True,
        float_inputs=[n for n, a in feeds.items() if a.dtype.kind == "f"],
        dtypes={n: str(original[c].dtype) for n, c in zip(names, original.columns, strict=True)},
    )


def _matrix_sample(model: Any, sample: Any) -> _Sample:
    x = features(sample)
    expected = getattr(model, "n_features_in_", None)
    if expected is not None and x.shape[1] != expected:
        fitted = getattr(model, "feature_names_in_", None)
        if fitted is not None:
            raise InputError(
                f"the {type(model).__name__} was fitted on a DataFrame with {expected} columns"
                f" {_shorten([str(n) for n in fitted])}; the sample has shape {list(x.shape)}:"
                " pass a DataFrame sample with those columns, e.g. X_test.head(8)"
            )
        raise InputError(
            f"the {type(model).__name__} was fitted on {expected} features; the sample has"
            f" shape {list(x.shape)} ({x.shape[1]} features)"
        )
    return _Sample(original=x, feeds={INPUT_NAME: x}, frame=False, float_inputs=[INPUT_NAME])


def original_input(model: Any, sample: Any) -> Any:
    """What the original model is called with for ``sample``: a DataFrame of its columns for a
    DataFrame (or for feeds keyed by column names, rebuilt into one), else a float32 matrix."""
    if is_frame(sample):
        return frame_input(model, sample)
    if isinstance(sample, Mapping) and set(map(str, sample)) != {INPUT_NAME}:
        fitted = getattr(model, "feature_names_in_", None)
        names = [str(n) for n in fitted] if fitted is not None else [str(k) for k in sample]
        if len(sample) > 1 or fitted is not None:
            import pandas as pd

            parts = sample_parts(sample)
            assert isinstance(parts, dict)
            missing = [n for n in names if n not in parts]
            if missing:
                raise InputError(f"the sample lacks column(s) {missing} that the model takes")
            return pd.DataFrame({n: np.asarray(parts[n]).reshape(-1) for n in names})
    return features(sample)


# ------------------------------------------------------------------------ the original


def _outputs(model: Any, x: Any) -> dict[str, np.ndarray]:
    """The original's answers, keyed by the ONNX output names skl2onnx gives them."""
    from sklearn.base import is_classifier, is_regressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_classifier(model):
            result = {"label": np.asarray(model.predict(x))}
            if hasattr(model, "predict_proba"):
                result["probabilities"] = np.asarray(model.predict_proba(x))
            return result
        if is_regressor(model) or not hasattr(model, "transform"):
            return {"variable": np.asarray(model.predict(x))}
        return {"variable": np.asarray(model.transform(x))}


def _finite_rows(outputs: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
    """Per row: every float output is finite."""
    ok = np.ones(rows, dtype=bool)
    for value in outputs.values():
        if value.dtype.kind == "f" and value.shape[:1] == (rows,):
            ok &= np.isfinite(value.reshape(rows, -1)).all(axis=1)
    return ok


def _probe_nan(model: Any, data: _Sample) -> tuple[list[str], NanProbe | None]:
    """The float inputs whose NaN the ORIGINAL model answers without error and with finite
    outputs, and the probe rows with its answers on them.

    The probe rows are the sample's first rows (NaN filled with the column's median) with NaN
    put into one input at a time: for a DataFrame, into each float column; for a matrix
    input, into each feature, and the input passes only when every feature does. An input
    passes when the original answers every one of its rows.
    """
    if not data.float_inputs:
        return [], None
    try:
        rows, inputs = _frame_probe_rows(data) if data.frame else _matrix_probe_rows(data)
    except Exception:  # a column pandas will not put NaN or a median into: no probe, no NaN
        return [], None
    ok = np.zeros(len(inputs), dtype=bool)
    try:
        ok[:] = _finite_rows(_outputs(model, rows), len(inputs))
        unfaithful = _trees.nan_unfaithful_rows(model, rows)
        if unfaithful is not None:
            ok &= ~unfaithful
    except Exception:
        if not data.frame:  # one input: it fails as a whole
            return [], None
        for name in data.float_inputs:  # which columns make it fail?
            group = np.flatnonzero(np.array(inputs) == name)
            with contextlib.suppress(Exception):
                part = _take(rows, group)
                ok[group] = _finite_rows(_outputs(model, part), len(group))
                unfaithful = _trees.nan_unfaithful_rows(model, part)
                if unfaithful is not None:
                    ok[group] &= ~unfaithful
    accepted = [name for name in dict.fromkeys(inputs) if ok[np.array(inputs) == name].all()]
    if not accepted:
        return [], None
    keep = np.flatnonzero(np.isin(np.array(inputs), accepted))
    rows = _take(rows, keep)
    try:
        reference = _outputs(model, rows)
    except Exception:
        return [], None
    if data.frame:
        feeds = {n: column_array(rows[c], n) for n, c in zip(data.feeds, rows.columns, strict=True)}
    else:
        feeds = {INPUT_NAME: rows}
    return accepted, NanProbe(inputs=[inputs[i] for i in keep], feeds=feeds, reference=reference)


def _take(rows: Any, index: np.ndarray) -> Any:
    if isinstance(rows, np.ndarray):
        return rows[index]
    return rows.iloc[index].reset_index(drop=True)


def _probe_base(values: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` rows of a float array with NaN replaced by the column median."""
    base = np.array(values[:count], dtype=np.float64)
    finite = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns
        medians = np.nan_to_num(np.nanmedian(finite, axis=0), nan=0.0)
    bad = ~np.isfinite(base)
    base[bad] = np.broadcast_to(medians, base.shape)[bad]
    return base


def _frame_probe_rows(data: _Sample) -> tuple[Any, list[str]]:
    import pandas as pd

    frame = data.original
    count = min(PROBE_ROWS, len(frame))
    base = frame.iloc[:count].copy()
    names = list(data.feeds)
    for name, column in zip(names, frame.columns, strict=True):
        if name in data.float_inputs and base[column].isna().any():
            base[column] = _probe_base(data.feeds[name], count)[:, 0]
    inputs = list(data.float_inputs)
    rows = pd.concat([base] * len(inputs), ignore_index=True)
    for i, name in enumerate(inputs):
        rows.iloc[i * count : (i + 1) * count, names.index(name)] = np.nan
    return rows, [name for name in inputs for _ in range(count)]


def _matrix_probe_rows(data: _Sample) -> tuple[np.ndarray, list[str]]:
    x = data.original
    features = x.shape[1]
    count = max(1, min(PROBE_ROWS, len(x), MAX_PROBE_ROWS // max(features, 1)))
    base = _probe_base(x, count).astype(x.dtype)
    rows = np.repeat(base, features, axis=0)  # row i * features + j: base row i, NaN in j
    rows[np.arange(len(rows)), np.tile(np.arange(features), count)] = np.nan
    return rows, [INPUT_NAME] * len(rows)


# -------------------------------------------------------------------------- conversion


def _convert(model: Any, data: _Sample, *, opset: int | None) -> tuple[Any, dict[str, str]]:
    """The converted proto with the sample's inputs, and the ONNX dtype chosen per input."""
    try:
        return _convert_at(model, data, opset or DEFAULT_OPSET)
    except ExportError as exc:
        # Some converters (KNNImputer, ...) need a newer opset than the default: use theirs.
        needed = re.search(r"opset \d+ < (\d+)", str(exc))
        if opset is not None or needed is None:
            raise
        return _convert_at(model, data, int(needed.group(1)))


def _convert_at(model: Any, data: _Sample, opset: int) -> tuple[Any, dict[str, str]]:
    from sklearn.base import is_classifier

    target = {"": opset, "ai.onnx.ml": ML_OPSET}
    subject = _conversion_copy(model)
    classifier = is_classifier(model)
    if not data.frame:
        n = data.feeds[INPUT_NAME].shape[1]
        proto = _skl2onnx(subject, [(INPUT_NAME, "float32", [None, n])], target, classifier)
        return proto, {INPUT_NAME: "float32"}
    dtypes = {name: _onnx_dtype(array) for name, array in data.feeds.items()}
    if _takes_columns(model) or "str" in dtypes.values():
        try:
            proto = _skl2onnx(subject, _column_types(dtypes), target, classifier)
        except ExportError:
            if "bool" not in dtypes.values():
                raise
            # Some converters (OneHotEncoder, ...) take no booleans: give them 0.0 / 1.0.
            dtypes = {n: "float32" if d == "bool" else d for n, d in dtypes.items()}
            proto = _skl2onnx(subject, _column_types(dtypes), target, classifier)
        _name_inputs_as_columns(proto, list(dtypes))
        return proto, dtypes
    n = len(dtypes)
    proto = _skl2onnx(subject, [(FEATURES, "float32", [None, n])], target, classifier)
    _columns_into_matrix(proto, dtypes)
    return proto, dtypes


def _onnx_dtype(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind == "f":
        return "float32"
    if kind in "iu":
        return "int64"
    if kind == "b":
        return "bool"
    return "str"


def _column_types(dtypes: Mapping[str, str]) -> list[tuple[str, str, list[Any]]]:
    return [(name, dtype, [None, 1]) for name, dtype in dtypes.items()]


def _takes_columns(model: Any) -> bool:
    """True when the model starts with a ColumnTransformer, which selects DataFrame columns
    (by name) and so must get them as separate inputs."""
    first = model
    while hasattr(first, "steps") and first.steps:
        first = first.steps[0][1]
    return type(first).__name__ == "ColumnTransformer"


def _skl2onnx(
    model: Any, inputs: list[tuple[str, str, list[Any]]], target: dict[str, int], classifier: bool
) -> Any:
    """Convert with ZipMap off; classifiers that never emit a ZipMap reject that option."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    types = {
        "float32": FloatTensorType,
        "int64": Int64TensorType,
        "bool": BooleanTensorType,
        "str": StringTensorType,
    }
    initial = [(name, types[dtype](shape)) for name, dtype, shape in inputs]
    # Classifiers that never emit a ZipMap (LinearSVC, ...) reject the option, and inside a
    # Pipeline they only convert with (empty) options of their own.
    attempts = (
        [{id(model): {"zipmap": False}}, {id(_final_step(model)): {}}] if classifier else [None]
    )
    for options in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_sklearn(
                    model, initial_types=initial, options=options, target_opset=target
                )
        except ExportError:
            raise
        except Exception as exc:
            if options is attempts[-1] or "zipmap" not in str(exc):
                raise _conversion_error(model, exc) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def _final_step(model: Any) -> Any:
    while hasattr(model, "steps") and model.steps:
        model = model.steps[-1][1]
    return model


def _conversion_error(model: Any, exc: BaseException) -> ExportError:
    if type(exc).__name__ in ("MissingShapeCalculator", "MissingConverter"):
        found = re.search(r"<class '([^']+)'>", str(exc))
        what = found.group(1) if found else "a step of the model"
        return ExportError(
            f"skl2onnx has no converter for {what} (a custom or unsupported transformer or"
            f" estimator inside the {type(model).__name__}): what exports is scikit-learn's own"
            " estimators and transformers, XGBoost and LightGBM models"
        )
    return ExportError(f"skl2onnx cannot convert {type(model).__name__}: {first_line(exc)}")


def _name_inputs_as_columns(proto: Any, names: list[str]) -> None:
    """skl2onnx sanitises input names ("mean radius" -> "mean_radius"): give the graph's
    inputs the DataFrame's column names back (the inputs keep the order they were given)."""
    graph_inputs = [i.name for i in proto.graph.input]
    if len(graph_inputs) != len(names):
        raise ExportError(
            f"skl2onnx returned inputs {graph_inputs} for the columns {names}: cannot map them"
        )
    _onnx.rename_io(proto, dict(zip(graph_inputs, names, strict=True)))


def _columns_into_matrix(proto: Any, dtypes: Mapping[str, str]) -> None:
    """Replace the graph's matrix input with one input per column: a Cast to float for each
    integer / boolean column and a Concat into the matrix the converted model reads."""
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
    graph = proto.graph
    (matrix,) = [i for i in graph.input if i.name == FEATURES]
    graph.input.remove(matrix)
    nodes, parts = [], []
    for i, (name, dtype) in enumerate(dtypes.items()):
        graph.input.append(helper.make_tensor_value_info(name, elem[dtype], [None, 1]))
        if dtype == "float32":
            parts.append(name)
            continue
        cast = f"{FEATURES}_cast_{i}"
        nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT, name=cast))
        parts.append(cast)
    nodes.append(helper.make_node("Concat", parts, [FEATURES], axis=1, name=f"{FEATURES}_concat"))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)


def _conversion_copy(model: Any) -> Any:
    """The model skl2onnx converts: ``model`` itself, or a copy where encoders and imputers
    that learned NaN as a missing string treat ``""`` (how a missing string reaches the ONNX
    model) the same way. An OrdinalEncoder that learned missing values is refused: ONNX has
    no ``encoded_missing_value``."""
    needs_copy = False
    for part in _trees.components(model):
        name = type(part).__name__
        if name in ("OneHotEncoder", "OrdinalEncoder") and any(
            _has_missing(c) for c in getattr(part, "categories_", ())
        ):
            if name == "OrdinalEncoder":
                raise ExportError(
                    "an OrdinalEncoder that saw missing strings (NaN) when fitted does not"
                    " convert to ONNX faithfully: fill them first, e.g. put"
                    " SimpleImputer(strategy='constant', fill_value='missing') before it"
                )
            needs_copy = True
        if name == "SimpleImputer" and _imputes_missing_strings(part):
            needs_copy = True
    if not needs_copy:
        return model
    twin = copy.deepcopy(model)
    for part in _trees.components(twin):
        name = type(part).__name__
        if name == "OneHotEncoder":
            part.categories_ = [_missing_as_empty(c) for c in part.categories_]
        elif name == "SimpleImputer" and _imputes_missing_strings(part):
            part.missing_values = ""
    return twin


def _has_missing(categories: np.ndarray) -> bool:
    return categories.dtype == object and any(
        v is None or (isinstance(v, float) and np.isnan(v)) for v in categories
    )


def _missing_as_empty(categories: np.ndarray) -> np.ndarray:
    if not _has_missing(categories):
        return categories
    values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in categories]
    return np.array(values, dtype=object)


def _imputes_missing_strings(imputer: Any) -> bool:
    statistics = getattr(imputer, "statistics_", None)
    missing = imputer.missing_values
    is_nan = missing is None or (isinstance(missing, float) and np.isnan(missing))
    return statistics is not None and statistics.dtype == object and is_nan


# ----------------------------------------------------------------------- what is recorded


def _output_meanings(model: Any, proto: Any) -> dict[str, dict[str, Any]]:
    from sklearn.base import is_classifier

    meanings: dict[str, dict[str, Any]] = {}
    classes = getattr(model, "classes_", None)
    names = [str(c) for c in np.asarray(classes).tolist()] if classes is not None else None
    for output in proto.graph.output:
        entry: dict[str, Any] = {"kind": "value"}
        if is_classifier(model) and output.name == "label":
            entry = {"kind": "label"}
        elif is_classifier(model) and output.name == "probabilities":
            entry = {"kind": "probabilities" if hasattr(model, "predict_proba") else "logits"}
        if names is not None and entry["kind"] != "value":
            entry["classes"] = names
        meanings[output.name] = entry
    return meanings


def _columns(model: Any, data: _Sample, dtypes: Mapping[str, str]) -> list[dict[str, Any]]:
    """``metadata["columns"]``: name, pandas dtype, kind and ONNX dtype per input, plus the
    categories a fitted encoder knows (or the category dtype's) for categorical columns."""
    known = _encoder_categories(model)
    frame = data.original
    entries = []
    for (name, onnx_dtype), column in zip(dtypes.items(), frame.columns, strict=True):
        dtype = frame[column].dtype
        entry: dict[str, Any] = {
            "name": name,
            "dtype": str(dtype),
            "kind": column_kind(dtype),
            "onnx_dtype": onnx_dtype,
        }
        categories = known.get(name)
        if categories is None and str(dtype) == "category":
            categories = [str(c) for c in dtype.categories]
        if categories is not None and entry["kind"] == "categorical":
            entry["categories"] = categories[:MAX_CATEGORIES]
        entries.append(entry)
    return entries


def _encoder_categories(model: Any) -> dict[str, list[str]]:
    """Column name -> the categories a OneHotEncoder / OrdinalEncoder learned for it."""
    found: dict[str, list[str]] = {}
    for part in _trees.components(model):
        for entry in getattr(part, "transformers_", None) or ():
            _, transformer, columns = entry
            encoder = transformer
            while hasattr(encoder, "steps") and encoder.steps:
                encoder = encoder.steps[-1][1]
            categories = getattr(encoder, "categories_", None)
            if categories is None or isinstance(columns, str | slice):
                continue
            columns = list(np.atleast_1d(columns))
            if len(columns) != len(categories) or not all(isinstance(c, str) for c in columns):
                continue
            for column, values in zip(columns, categories, strict=True):
                found[column] = [
                    str(v)
                    for v in values
                    if not (v is None or (isinstance(v, float) and np.isnan(v)))
                ]
    return found


# ---------------------------------------------------------------------------- exporter


class SklearnExporter:
    """scikit-learn estimators and pipelines through skl2onnx with ZipMap off; with
    ``library`` set, the bare XGBoost / LightGBM models of that library (same path, with
    onnxmltools' converters registered by :mod:`_trees`)."""

    def __init__(self, library: str | None = None) -> None:
        self.library = library
        self.framework = library or "sklearn"

    def detect(self, model: Any) -> bool:
        library = _trees.library_of(model)
        if self.library is not None:
            return library == self.library
        return hasattr(model, "fit") and any(
            cls.__module__.startswith("sklearn.") for cls in type(model).__mro__
        )

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """Per-column inputs for a DataFrame, one float32 matrix otherwise; ``label`` and
        ``probabilities`` out for classifiers, ``prediction`` for regressors."""
        from sklearn.base import is_classifier, is_regressor

        _trees.check_supported(model)
        _require_fitted(model)
        libraries = _trees.prepare(model)
        data = _frame_sample(model, sample) if is_frame(sample) else _matrix_sample(model, sample)
        accepts_nan, probe = _probe_nan(model, data)
        _require_nan_accepted(model, data, accepts_nan)
        check_finite(data.feeds, allow_nan=accepts_nan)
        reference = self._reference(model, data)
        proto, dtypes = _convert(model, data, opset=opset)
        renames = {}
        if "variable" in reference:
            renames["variable"] = "prediction" if is_regressor(model) else "output"
            reference = {renames["variable"]: reference["variable"]}
            if probe is not None:
                probe.reference = {renames["variable"]: probe.reference["variable"]}
        _onnx.rename_io(_onnx.tidy(proto), renames)
        feeds = {name: _as_dtype(data.feeds[name], dtype) for name, dtype in dtypes.items()}
        if probe is not None:
            probe.feeds = {n: _as_dtype(probe.feeds[n], dtypes[n]) for n in probe.feeds}
        metadata: dict[str, Any] = {
            "exporter": "skl2onnx",
            "versions": {**self.versions(), **_trees.versions(libraries)},
            "outputs": _output_meanings(model, proto),
            "accepts_nan": accepts_nan,
        }
        if data.frame:
            metadata["columns"] = _columns(model, data, dtypes)
        else:
            fitted = getattr(model, "feature_names_in_", None)
            if fitted is not None:
                metadata["feature_names"] = [str(n) for n in fitted]
        labels = None
        classes = getattr(model, "classes_", None)
        if is_classifier(model) and classes is not None:
            metadata["classes"] = np.asarray(classes).tolist()
            labels = [str(c) for c in np.asarray(classes).tolist()]
        return Exported(
            proto=proto,
            feeds=feeds,
            reference=reference,
            framework=self.framework,
            framework_version=self._framework_version(),
            default_name=safe_name(type(model).__name__),
            metadata=metadata,
            labels=labels,
            nan_probe=probe,
        )

    @staticmethod
    def _reference(model: Any, data: _Sample) -> dict[str, np.ndarray]:
        try:
            return _outputs(model, data.original)
        except Exception as exc:
            fitted = getattr(model, "feature_names_in_", None)
            if not data.frame and fitted is not None:
                raise InputError(
                    f"the {type(model).__name__} was fitted on a DataFrame with columns"
                    f" {_shorten([str(n) for n in fitted])}: pass a DataFrame sample, e.g."
                    f" X_test.head(8) ({first_line(exc)})"
                ) from exc
            shape = getattr(data.original, "shape", None)
            raise InputError(
                f"the {type(model).__name__} rejected the sample of shape {list(shape or ())}:"
                f" {first_line(exc)}"
            ) from exc

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """A zero-argument callable: ``predict_proba`` for classifiers that have it, else ``predict``."""
        x = original_input(model, sample)
        method = getattr(model, "predict_proba", None) or getattr(model, "predict", None)
        if method is None:
            method = model.transform
        return lambda: method(x)

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import sklearn

        versions = {"sklearn": sklearn.__version__, "onnx": onnx.__version__}
        versions["onnxruntime"] = onnxruntime.__version__
        with contextlib.suppress(ImportError):
            import skl2onnx

            versions["skl2onnx"] = skl2onnx.__version__
        if self.library is not None:
            versions.update(_trees.versions({self.library}))
        return versions

    def _framework_version(self) -> str | None:
        import importlib

        try:
            return importlib.import_module(self.library or "sklearn").__version__
        except Exception:
            return None


def _shorten(names: list[str], keep: int = 6) -> str:
    return str(names) if len(names) <= keep else str(names[:keep])[:-1] + ", ...]"


def _require_nan_accepted(model: Any, data: _Sample, accepted: list[str]) -> None:
    """NaN in the sample only where the original model takes missing values."""
    for name, array in data.feeds.items():
        if array.dtype.kind != "f" or name in accepted or not np.isnan(array).any():
            continue
        where = f"column {name!r}" if data.frame else "the sample"
        raise InputError(
            f"{where} contains NaN but the {type(model).__name__} does not take missing values"
            " there (it fails, answers NaN, or routes them through scikit-learn trees whose"
            " missing-value branches ONNX does not reproduce): pass rows without NaN, or put a"
            " SimpleImputer in the Pipeline"
        )


def _require_fitted(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise ExportError(
            f"the {type(model).__name__} is not fitted yet: call fit() first"
        ) from exc
    except TypeError:
        pass  # not an estimator check_is_fitted understands; the conversion will tell


def _as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "str":
        return array
    return np.ascontiguousarray(array.astype(dtype))


EXPORTER = SklearnExporter()
XGBOOST = SklearnExporter("xgboost")
LIGHTGBM = SklearnExporter("lightgbm")
