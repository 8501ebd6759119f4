"""Python models: when ONNX is not enough, serve the callable itself (pickled with cloudpickle).

``export_python(fn, sample)`` takes a function, or an object with ``predict_proba`` /
``predict`` / ``__call__``, that accepts the sample's type (a numpy array, a list of numbers,
a list of strings, a pandas DataFrame, a torch tensor, or a tuple / dict of those) and
returns arrays, lists, a DataFrame, a dict or a tuple of them. It records:

- ``model.pkl``: the callable and what it closes over, pickled with cloudpickle. Code from the
  notebook (``__main__``) and from the user's own modules (not installed from a package index:
  a local file, an editable install) is pickled by value, so the endpoint needs none of it;
  installed packages are pickled by reference and become requirements.
- ``metadata["requirements"]``: ``name==version`` pins of the installed distributions the
  pickle refers to (found while pickling: every module, class and function it names, plus the
  imports inside by-value code), and cloudpickle, minus the stdlib and the server's own
  packages (which the server pins to the same versions). ``requirements=[...]`` replaces the
  detection; unpinned names are pinned to the installed version.
- the signature, inferred from the sample (``input`` for one array, ``text`` for a list of
  strings, one ``[-1, 1]`` input per DataFrame column, ``input_0..`` for a tuple, the keys of
  a dict) and from the callable's answer on it (``output`` for one array, ``label`` and
  ``probabilities`` for an object with ``predict`` and ``predict_proba``, DataFrame columns,
  dict keys, ``output_0..`` for a tuple); how to rebuild the call from V2 tensors
  (``metadata["call"]``) and its answers (``metadata["calls"]``).
- parity: the pickle is loaded in a fresh interpreter that sees only installed packages (not
  the notebook's directory nor editable source trees) by the server's own code
  (``nbdeploy.serve.python_model``), run on the sample through the V2 conversions, and
  compared with the original's answers.

``metadata["pkl_sha256"]`` is what the server checks before unpickling. cloudpickle is imported
only when a Python model is exported.
"""

from __future__ import annotations

import contextlib
import dis
import hashlib
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _format
from nbdeploy._errors import ExportError, InputError
from nbdeploy._tensors import column_array, column_kind, is_frame
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.artifact import ModelArtifact, sha256_file, store_model
from nbdeploy.exporters import output_kind, parity
from nbdeploy.serve import python_model as served
from nbdeploy.vocabulary import check_name, safe_name

PICKLE_FILE = served.PICKLE_FILE
FORMAT = "python"
METHODS = ("predict_proba", "predict", "__call__")
"""What an object is called by, in order of preference; an object with both ``predict`` and
``predict_proba`` is served with both (``label`` and ``probabilities``), like a classifier."""
EXAMPLE_LIMIT = 16_384
"""Largest JSON (bytes) of the one-row example kept for the server's warm-up."""
CHECK_TIMEOUT_S = 300.0
SERVER_NAMES_FALLBACK = ("onnxruntime", "numpy", "starlette", "uvicorn", "prometheus-client")


def is_python_model(model: Any) -> bool:
    """True for what the Python path can serve: a function or any callable object, or an
    object with ``predict`` / ``predict_proba`` (not a class, a path or a string)."""
    if isinstance(model, type | str | bytes | Path) or model is None:
        return False
    return callable(model) or any(callable(getattr(model, m, None)) for m in METHODS[:2])


def export_python(
    model: Any,
    sample: Any,
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
    requirements: Sequence[str] | None = None,
    batch_safe: bool = False,
    method: str | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ModelArtifact:
    """Pickle ``model`` with cloudpickle, check the pickle on ``sample`` in a fresh interpreter
    and store it as a Python-model artifact (``model.pkl``).

    ``method`` picks the method an object is served by (default: ``predict`` and
    ``predict_proba`` when it has both, else the first of ``predict_proba``, ``predict``,
    ``__call__``). ``batch_safe`` declares that each row's answer depends on that row alone, so
    the server may merge concurrent requests into one call; it is checked on the sample.
    """
    if not is_python_model(model):
        raise InputError(
            f"a {type(model).__name__} is not a Python model: pass a function, or an object with"
            " predict / predict_proba / __call__"
        )
    if sample is None:
        raise InputError(
            "a Python model needs a sample input (a few real rows, e.g. x_test[:8]): its"
            " signature is read from the sample and from the model's answer on it"
        )
    if name is not None:
        check_name(name)
    name = name or _default_name(model)
    label_list = [str(label) for label in labels] if labels is not None else None
    calls = _calls(model, method)
    call, feeds, inputs, extra = _describe_sample(sample)
    rows = _rows(feeds)

    reference: dict[str, np.ndarray] = {}
    call_records: list[dict[str, Any]] = []
    used: set[str] = set()
    for method_name, function, default in calls:
        value = _call_original(function, sample, method_name)
        returns = _describe_returns(value, default if len(calls) > 1 else "output", used)
        try:
            arrays = served.returned_arrays(value, returns)
        except (TypeError, ValueError) as exc:
            raise ExportError(
                f"the model's {method_name} returned what cannot be served: {exc}; return"
                " arrays, lists, a DataFrame, or a dict / tuple of them"
            ) from exc
        reference.update(arrays)
        call_records.append({"method": method_name, "returns": returns})
    outputs = tuple(_output_spec(n, a, rows, batch_safe) for n, a in reference.items())
    signature = Signature(inputs=tuple(inputs), outputs=outputs, opset=None)

    classes = _classes(model)
    if (
        label_list is None
        and classes is not None
        and any(output_kind(a) in ("label", "probabilities") for a in reference.values())
    ):
        label_list = classes
    meanings = _meanings(reference, label_list)
    main_method = calls[0][0] if len(calls) == 1 else "predict_proba"
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "method": main_method,
        "calls": call_records,
        "call": call,
        "batch_safe": bool(batch_safe),
        "python": "{}.{}".format(*sys.version_info[:2]),
        "outputs": meanings,
        **extra,
    }
    metadata["accepts_nan"] = _probe_nan(calls, call, call_records, feeds)
    if batch_safe:
        _check_batch_safe(calls, call, feeds, call_records, atol=atol, rtol=rtol)
    example = _example(feeds)
    if example is not None:
        metadata["example"] = example

    payload, detected, by_value = pickle_model(model)
    needs = ["pandas"] if call.get("style") == "frame" else []
    needs += ["torch"] if any(p.get("as") == "torch" for p in call.get("inputs") or ()) else []
    if requirements is None:
        pins = pin_requirements([*detected, *needs])
    else:
        pins = pin_requirements([*requirements, *needs])
        metadata["requirements_detected"] = pin_requirements([*detected, *needs])
    metadata["requirements"] = pins
    if by_value:
        metadata["pickled_by_value"] = by_value

    fields: dict[str, Any] = {
        "framework": FORMAT,
        "framework_version": platform.python_version(),
        "labels": label_list,
        "input_kind": signature.input_kind,
        "metadata": metadata,
    }
    measured = check_pickle(payload, name, signature, fields, feeds, reference, atol, rtol)
    return store_python(payload, name=name, signature=signature, parity=measured, **fields)


# ------------------------------------------------------------------------------- the call


def _default_name(model: Any) -> str:
    label = getattr(model, "__name__", None)
    if not isinstance(label, str) or label == "<lambda>":
        label = type(model).__name__
    return safe_name(label, "python-model")


def _calls(model: Any, method: str | None) -> list[tuple[str, Callable[..., Any], str]]:
    """``(method, bound callable, default output name)`` for each method the model is served by."""
    if method is not None:
        if method in ("__call__", "function"):
            if not callable(model):
                raise InputError(f"the {type(model).__name__} is not callable")
            return [(_call_name(model), model, "output")]
        function = getattr(model, method, None)
        if not callable(function):
            raise InputError(f"the {type(model).__name__} has no method {method!r}")
        return [(method, function, "output")]
    predict = getattr(model, "predict", None)
    proba = getattr(model, "predict_proba", None)
    if callable(predict) and callable(proba):
        return [("predict", predict, "label"), ("predict_proba", proba, "probabilities")]
    if callable(proba):
        return [("predict_proba", proba, "output")]
    if callable(predict):
        return [("predict", predict, "output")]
    return [(_call_name(model), model, "output")]


def _call_name(model: Any) -> str:
    return (
        "function"
        if isinstance(model, types.FunctionType | types.BuiltinFunctionType)
        else "__call__"
    )


def _call_original(function: Callable[..., Any], sample: Any, method: str) -> Any:
    try:
        if isinstance(sample, tuple):
            return function(*sample)
        return function(sample)
    except Exception as exc:
        raise ExportError(
            f"the model's {method} raised {_format.first_line(exc, with_type=True)} on the"
            " sample; it must answer the sample to be served"
        ) from exc


def _describe_sample(
    sample: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[TensorSpec], dict[str, Any]]:
    """How to rebuild the call from V2 tensors, the sample as those tensors, their specs, and
    extra metadata (``columns`` for a DataFrame)."""
    if is_frame(sample):
        return _describe_frame(sample)
    if isinstance(sample, Mapping):
        if not sample:
            raise InputError("the sample dict is empty")
        named = [(str(key), key, value) for key, value in sample.items()]
        style = "mapping"
    elif isinstance(sample, tuple):
        if not sample:
            raise InputError("the sample tuple is empty")
        named = [(f"input_{i}", None, value) for i, value in enumerate(sample)]
        style = "positional"
    else:
        named = [("text" if _is_strings(sample) else "input", None, sample)]
        style = "single"
    parts, feeds, specs = [], {}, []
    for input_name, key, value in named:
        part, array = _describe_part(input_name, value)
        if key is not None:
            part["key"] = key if isinstance(key, str | int) else str(key)
        parts.append(part)
        feeds[input_name] = array
        specs.append(_spec(input_name, array))
    call: dict[str, Any] = {"style": style, "inputs": parts}
    if style == "positional":
        call["packed"] = False
    _same_rows(feeds)
    return call, feeds, specs, {}


def _describe_part(name: str, value: Any) -> tuple[dict[str, Any], np.ndarray]:
    if _is_strings(value):
        return {"name": name, "as": "strings"}, served.to_array(list(value))
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        array = value.detach().cpu().numpy()
        return {"name": name, "as": "torch", "dtype": array.dtype.name}, array
    if isinstance(value, list):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InputError(
                f"input '{name}': a list sample must hold numbers (or be a list of strings);"
                f" got {array.dtype} values"
            )
        return {"name": name, "as": "list"}, array
    if isinstance(value, np.ndarray) or hasattr(value, "numpy") or hasattr(value, "__array__"):
        raw = np.asarray(
            value if isinstance(value, np.ndarray) or not hasattr(value, "numpy") else value.numpy()
        )
        if raw.dtype.kind in "USO":
            # text: V2 BYTES, handed back as the sample had it (a str array, or objects)
            dtype = "object" if raw.dtype.kind == "O" else "str"
            return {"name": name, "as": "array", "dtype": dtype}, served.to_array(raw)
        if raw.dtype.kind not in "biuf":
            raise InputError(f"input '{name}': {raw.dtype} values cannot be sent as a V2 tensor")
        return {"name": name, "as": "array", "dtype": raw.dtype.name}, raw
    raise InputError(
        f"cannot serve a {type(value).__name__} sample as input '{name}': pass a numpy array, a"
        " list of numbers, a list of strings, a pandas DataFrame, a torch tensor, or a tuple /"
        " dict of those"
    )


def _is_strings(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(item, str) for item in value)
    )


def _describe_frame(
    frame: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[TensorSpec], dict[str, Any]]:
    if len(frame) == 0:
        raise InputError("the sample DataFrame has no rows: pass a few real rows, e.g. df.head(8)")
    columns, feeds, specs, described = [], {}, [], []
    for label in frame.columns:
        column_name = str(label)
        if column_name in feeds:
            raise InputError(f"the sample DataFrame has two columns named {column_name!r}")
        array = column_array(frame[label], column_name)
        dtype = frame[label].dtype
        entry: dict[str, Any] = {
            "name": column_name,
            "label": label if isinstance(label, str | int) else column_name,
            "dtype": str(dtype),
        }
        if str(dtype) == "category":
            entry["categories"] = [c.item() if hasattr(c, "item") else c for c in dtype.categories]
        columns.append(entry)
        feeds[column_name] = array
        spec = _spec(column_name, array)
        specs.append(spec)
        described.append(
            {
                "name": column_name,
                "dtype": str(dtype),
                "kind": column_kind(dtype),
                "onnx_dtype": spec.dtype,
                **(
                    {"categories": [str(c) for c in entry["categories"]]}
                    if "categories" in entry
                    else {}
                ),
            }
        )
    call = {"style": "frame", "inputs": [{"name": c["name"]} for c in columns], "columns": columns}
    return call, feeds, specs, {"columns": described}


def _spec(name: str, array: np.ndarray) -> TensorSpec:
    if array.ndim == 0:
        raise InputError(
            f"input '{name}' of the sample is a single value; give it a batch dimension (rows)"
        )
    dtype = "str" if array.dtype.kind in "OUS" else array.dtype.name
    return TensorSpec(name, dtype, (-1, *array.shape[1:]))


def _same_rows(feeds: Mapping[str, np.ndarray]) -> None:
    counts = {name: int(a.shape[0]) for name, a in feeds.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"the sample's inputs have different numbers of rows: {counts}")


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _describe_returns(value: Any, default: str, used: set[str]) -> dict[str, Any]:
    """How one call's answer becomes named outputs: ``single``, ``tuple``, ``mapping``, ``frame``."""

    def fresh(candidate: str) -> str:
        name = candidate
        while name in used:
            name = f"{name}_"
        used.add(name)
        return name

    if is_frame(value):
        names = [str(c) for c in value.columns]
        return {"style": "frame", "names": [fresh(n) for n in names]}
    if isinstance(value, Mapping):
        keys = list(value)
        if not all(isinstance(k, str | int) for k in keys):
            raise ExportError("a dict the model returns must have str or int keys")
        return {"style": "mapping", "names": [fresh(str(k)) for k in keys], "keys": keys}
    if isinstance(value, tuple):
        return {"style": "tuple", "names": [fresh(f"{default}_{i}") for i in range(len(value))]}
    return {"style": "single", "names": [fresh(default)]}


def _output_spec(name: str, array: np.ndarray, rows: int, batch_safe: bool) -> TensorSpec:
    dtype = "str" if array.dtype.kind in "OUS" else array.dtype.name
    follows = array.ndim >= 1 and array.shape[0] == rows
    if batch_safe and not follows:
        raise ExportError(
            f"batch_safe=True, but output '{name}' has shape {list(array.shape)} for a sample of"
            f" {rows} rows: a batch-safe model answers one row per input row"
        )
    shape = (-1, *array.shape[1:]) if follows else tuple(array.shape)
    return TensorSpec(name, dtype, shape)


# ---------------------------------------------------------------------- meaning and checks


def _classes(model: Any) -> list[str] | None:
    """``classes_`` of the object, or of the model it wraps (one attribute deep)."""
    candidates = (
        [model, *(v for v in vars(model).values())] if hasattr(model, "__dict__") else [model]
    )
    for candidate in candidates:
        classes = getattr(candidate, "classes_", None)
        if classes is not None and not isinstance(candidate, type):
            try:
                return [str(c) for c in np.asarray(classes).ravel()]
            except Exception:
                return None
    return None


def _meanings(reference: Mapping[str, np.ndarray], labels: list[str] | None) -> dict[str, Any]:
    meanings: dict[str, dict[str, Any]] = {}
    for output_name, array in reference.items():
        entry: dict[str, Any] = {"kind": output_kind(array)}
        width = array.shape[1] if array.ndim == 2 else None
        if labels and entry["kind"] in ("probabilities", "logits") and width == len(labels):
            entry["classes"] = list(labels)
        meanings[output_name] = entry
    if labels and any("classes" in m for m in meanings.values()):
        for entry in meanings.values():
            if entry["kind"] == "label":
                entry["classes"] = list(labels)
    return meanings


def _run_calls(
    calls: list[tuple[str, Callable[..., Any], str]],
    call: Mapping[str, Any],
    records: list[dict[str, Any]],
    feeds: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The original callable run on V2-like feeds, the way the server calls the pickle."""
    args, kwargs = served.call_arguments(call, feeds)
    out: dict[str, np.ndarray] = {}
    for (_, function, _), record in zip(calls, records, strict=True):
        out.update(served.returned_arrays(function(*args, **kwargs), record["returns"]))
    return out


def _probe_nan(
    calls: list[tuple[str, Callable[..., Any], str]],
    call: Mapping[str, Any],
    records: list[dict[str, Any]],
    feeds: Mapping[str, np.ndarray],
) -> list[str]:
    """The float inputs the model answers with finite outputs when one row holds NaN there;
    the server refuses NaN in the others, as it does for ONNX models."""
    accepted: list[str] = []
    for input_name, array in feeds.items():
        if array.dtype.kind != "f":
            continue
        probe = {k: np.array(v[:1], copy=True) for k, v in feeds.items()}
        probe[input_name] = np.full_like(probe[input_name], np.nan)
        try:
            answers = _run_calls(calls, call, records, probe)
        except Exception:
            continue
        if all(a.dtype.kind != "f" or np.all(np.isfinite(a)) for a in answers.values()):
            accepted.append(input_name)
    return accepted


def _check_batch_safe(
    calls: list[tuple[str, Callable[..., Any], str]],
    call: Mapping[str, Any],
    feeds: Mapping[str, np.ndarray],
    records: list[dict[str, Any]],
    *,
    atol: float,
    rtol: float,
) -> None:
    """``batch_safe=True`` must hold on the sample: each row answered alone as in the batch."""
    whole = _run_calls(calls, call, records, feeds)
    for row in range(min(_rows(feeds), 4)):
        alone = _run_calls(calls, call, records, {k: v[row : row + 1] for k, v in feeds.items()})
        expected = {k: v[row : row + 1] for k, v in whole.items()}
        measured, diffs = parity.compare(expected, alone, atol=atol, rtol=rtol)
        if not measured.passed:
            bad = next(d.name for d in diffs if not d.passed)
            raise ExportError(
                f"batch_safe=True, but row {row} of the sample answered alone differs from its"
                f" answer in the whole sample (output '{bad}'): the model's answer for a row"
                " depends on the other rows, so the server must not merge requests; export"
                " with batch_safe=False"
            )


def _example(feeds: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The sample's first row as JSON lists, for the server's warm-up (None when too big)."""
    example = {k: v[:1].tolist() for k, v in feeds.items()}
    try:
        text = json.dumps(example, allow_nan=True)
    except (TypeError, ValueError):
        return None
    return example if len(text) <= EXAMPLE_LIMIT else None


# ------------------------------------------------------------------------ pickling


def pickle_model(model: Any) -> tuple[bytes, list[str], list[str]]:
    """``(cloudpickle bytes, distributions it needs, local modules pickled by value)``.

    Pickled once to see what it refers to; modules that are not installed from a package
    index (a file next to the notebook, an editable install) are then pickled by value and
    it is pickled again, until no such module is referred to by reference.
    """
    try:
        import cloudpickle
    except ImportError as exc:
        raise ExportError(
            "a Python model is pickled with cloudpickle: pip install cloudpickle"
        ) from exc
    registered: list[str] = []
    try:
        for _ in range(8):
            payload, modules = _dump(cloudpickle, model)
            found = _classify(modules)
            local = [m for m in found["local"] if m not in registered]
            if not local:
                return payload, found["dists"], sorted(registered)
            for module_name in local:
                cloudpickle.register_pickle_by_value(sys.modules[module_name])
                registered.append(module_name)
        raise ExportError("could not settle which modules to pickle by value")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"cloudpickle cannot pickle the model: {_format.first_line(exc, with_type=True)}"
        ) from exc
    finally:
        for module_name in registered:
            with contextlib.suppress(KeyError, ValueError):
                cloudpickle.unregister_pickle_by_value(sys.modules[module_name])


def _dump(cloudpickle: Any, model: Any) -> tuple[bytes, set[str]]:
    """Pickle ``model``, noting every module a pickled object, class or function comes from,
    and the modules imported inside functions pickled by value."""
    modules: set[str] = set()

    def note(obj: Any) -> None:
        if isinstance(obj, types.ModuleType):
            modules.add(obj.__name__)
            return
        if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
            owner = getattr(obj, "__module__", None)
            if isinstance(owner, str):
                modules.add(owner)
            if isinstance(obj, types.FunctionType) and _by_value(cloudpickle, obj):
                modules.update(_imports(obj.__code__))
            return
        modules.add(type(obj).__module__)

    class Recorder(cloudpickle.Pickler):  # type: ignore[misc,name-defined]
        def reducer_override(self, obj: Any) -> Any:
            note(obj)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Recorder(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(model)
    return buffer.getvalue(), modules


def _by_value(cloudpickle: Any, function: types.FunctionType) -> bool:
    owner = getattr(function, "__module__", None) or "__main__"
    if owner in ("__main__", "__mp_main__"):
        return True
    module = sys.modules.get(owner)
    check = getattr(cloudpickle.cloudpickle, "_is_registered_pickle_by_value", None)
    return bool(module is not None and check is not None and check(module))


def _imports(code: types.CodeType) -> set[str]:
    """Absolute module names a code object (and the code nested in it) imports."""
    found: set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
            found.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _imports(const)
    return {name for name in found if name and not name.startswith(".")}


def _classify(modules: set[str]) -> dict[str, list[str]]:
    """``dists``: distributions (``name==version``) the modules come from; ``local``: top-level
    modules to pickle by value (not installed from a package index). The stdlib, builtins
    and ``__main__`` are neither."""
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    dists: dict[str, str] = {}
    local: set[str] = set()
    for module_name in modules:
        top = module_name.partition(".")[0]
        if (
            not top
            or top in ("__main__", "__mp_main__", "builtins")
            or top in sys.stdlib_module_names
        ):
            continue
        module = sys.modules.get(top)
        path = getattr(module, "__file__", None) if module is not None else None
        dist = _distribution(top, path, owners.get(top) or [])
        if dist is not None:
            dists[dist[0]] = dist[1]
        elif module is not None and isinstance(path, str) and path.endswith(".py"):
            local.add(top)
    return {"dists": [f"{n}=={v}" for n, v in sorted(dists.items())], "local": sorted(local)}


def _distribution(top: str, path: str | None, candidates: list[str]) -> tuple[str, str] | None:
    """``(canonical name, version)`` of the index-installed distribution that holds module
    ``top`` (at ``path``), or None when it comes from a local tree or an editable install."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    for candidate in dict.fromkeys(candidates):
        try:
            dist = importlib.metadata.distribution(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not _from_index(dist):
            continue
        if path is not None:
            root = Path(str(dist.locate_file(""))).resolve()
            try:
                Path(path).resolve().relative_to(root)
            except ValueError:
                continue
        return str(canonicalize_name(dist.metadata["Name"])), dist.version
    return None


def _from_index(dist: Any) -> bool:
    """False for a distribution installed from a local directory (editable or not) or a VCS
    checkout: the serving environment could not download it."""
    text = dist.read_text("direct_url.json")
    if not text:
        return True
    try:
        info = json.loads(text)
    except ValueError:
        return True
    return "dir_info" not in info and "vcs_info" not in info


def pin_requirements(requirements: Sequence[str]) -> list[str]:
    """``name==version`` for each requirement, pinned to the installed version when given
    unpinned, plus cloudpickle; the server's own packages are left out (the server pins them
    to the versions installed here, and a different pin for one of them is refused)."""
    import importlib.metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    server = _server_pins()
    pins: dict[str, str] = {}
    for text in [*requirements, "cloudpickle"]:
        try:
            requirement = Requirement(str(text))
        except InvalidRequirement as exc:
            raise InputError(f"invalid requirement {text!r}: {exc}") from exc
        key = str(canonicalize_name(requirement.name))
        exact = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
        if exact and "*" not in exact[0]:
            version = exact[0]
        else:
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                raise InputError(
                    f"requirement {requirement.name!r} is not installed here, so it cannot be"
                    f" pinned to the installed version: give one, e.g. '{requirement.name}==1.0'"
                ) from None
            if requirement.specifier and not requirement.specifier.contains(
                version, prereleases=True
            ):
                raise InputError(
                    f"requirement {text!r}: the installed {requirement.name} {version} does not"
                    " satisfy it; pin the version to serve, e.g."
                    f" '{requirement.name}=={version}'"
                )
        if key in server:
            if server[key] != version:
                raise InputError(
                    f"requirement {key}=={version}: the server ships {key}=={server[key]} (the"
                    " version installed here) and cannot serve another"
                )
            continue
        if key in pins and pins[key] != version:
            raise InputError(f"requirements pin {key} twice: {pins[key]} and {version}")
        pins[key] = version
    return [f"{key}=={version}" for key, version in sorted(pins.items())]


def _server_pins() -> dict[str, str]:
    """The server's packages and their dependencies, by canonical name, as installed here."""
    from nbdeploy.runtimes.image import pinned_requirements

    return dict(line.split("==", 1) for line in pinned_requirements())


# ------------------------------------------------------------------- check in a fresh Python

_CHECK_SCRIPT = r"""
import pickle, site, sys, os
app, directory, feeds_path, out_path = sys.argv[1:5]
# What a serving environment has: the stdlib and installed distributions; not the notebook's
# directory, PYTHONPATH, or source trees that editable installs put on the path.
keep = {os.path.realpath(p) for p in site.getsitepackages()}
base = os.path.realpath(sys.base_prefix) + os.sep
sys.path[:] = [app] + [
    p for p in sys.path
    if p and (os.path.realpath(p) in keep or os.path.realpath(p).startswith(base))
]
if os.path.isdir(site.getusersitepackages()):  # pip install --user: installed too
    site.addsitedir(site.getusersitepackages())
result = {}
try:
    from pathlib import Path
    from nbdeploy.serve.python_model import PythonModel
    model = PythonModel.load("check", 1, Path(directory))
    with open(feeds_path, "rb") as handle:
        feeds = pickle.load(handle)
    names = [info[0] for info in model.outputs]
    result["outputs"] = dict(zip(names, model.run(names, feeds)))
except BaseException as exc:
    message = getattr(exc, "message", None) or str(exc)
    result["error"] = type(exc).__name__ + ": " + (message.strip().splitlines() or [""])[0]
with open(out_path, "wb") as handle:
    pickle.dump(result, handle)
"""


def check_pickle(
    payload: bytes,
    name: str,
    signature: Signature,
    fields: dict[str, Any],
    feeds: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
) -> Any:
    """Load the pickle in a fresh interpreter with the server's code, run it on the sample's
    V2 tensors and compare with the original's answers; return the Parity record."""
    with tempfile.TemporaryDirectory(prefix="nbdeploy-pycheck-") as tmp:
        root = Path(tmp)
        directory = root / "model"
        directory.mkdir()
        (directory / PICKLE_FILE).write_bytes(payload)
        artifact = _artifact(directory / PICKLE_FILE, name, signature, fields)
        artifact.save_metadata()
        app = root / "app"
        serve_dir = app / "nbdeploy" / "serve"
        serve_dir.mkdir(parents=True)
        (app / "nbdeploy" / "__init__.py").write_text("")
        for source in Path(served.__file__).parent.glob("*.py"):
            shutil.copyfile(source, serve_dir / source.name)
        with open(root / "feeds.pkl", "wb") as handle:
            pickle.dump(dict(feeds), handle)
        command = [
            sys.executable,
            "-I",
            "-c",
            _CHECK_SCRIPT,
            str(app),
            str(directory),
            str(root / "feeds.pkl"),
            str(root / "out.pkl"),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, env=env, cwd=tmp
            )
        except subprocess.TimeoutExpired as exc:
            raise ExportError(
                f"checking the pickled model in a fresh Python took over {CHECK_TIMEOUT_S:.0f} s"
            ) from exc
        out = root / "out.pkl"
        if not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ExportError(
                "the pickled model could not be checked in a fresh Python (exit"
                f" {done.returncode}): {' | '.join(tail) or 'no output'}"
            )
        with open(out, "rb") as handle:
            result = pickle.load(handle)
    if "error" in result:
        raise ExportError(
            f"the pickled model fails in a fresh Python that has only installed packages:"
            f" {result['error']}. Code it needs must be importable from an installed package or"
            " defined in the notebook / a local module (those are pickled with it)"
        )
    measured, diffs = parity.compare(
        dict(reference),
        result["outputs"],
        atol=atol,
        rtol=rtol,
        names=signature.output_names,
    )
    parity.ensure(measured, diffs, what="the pickled model, run by the server's code,")
    return measured


# ------------------------------------------------------------------------ running in-process


def sample_feeds(sample: Any) -> dict[str, np.ndarray]:
    """``sample`` as the V2 tensors a Python model's signature names (as at export)."""
    return _describe_sample(sample)[1]


class PythonSession:
    """A registered Python model loaded in this process, shaped like an onnxruntime session
    (``get_outputs()``, ``run(names, feeds)``), for benchmarks: the server's own loading code,
    so the sha256 is checked before unpickling and the V2 conversions are timed too."""

    def __init__(self, directory: Path) -> None:
        try:
            self.model = served.PythonModel.load("local", 1, Path(directory))
        except served.LoadError as exc:
            raise ExportError(str(exc)) from exc
        self.model.warm_up()

    def get_outputs(self) -> list[types.SimpleNamespace]:
        return [types.SimpleNamespace(name=info[0]) for info in self.model.outputs]

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        wanted = list(names) if names else [info[0] for info in self.model.outputs]
        return self.model.run(wanted, dict(feeds))


# --------------------------------------------------------------------------------- storing


def _artifact(path: Path, name: str, signature: Signature, fields: dict[str, Any]) -> ModelArtifact:
    digest = sha256_file(path)
    metadata = dict(fields.get("metadata") or {})
    metadata["pkl_sha256"] = digest
    metadata["onnx_sha256"] = digest  # what ModelArtifact.sha256 reads: the model file's
    rest = {k: v for k, v in fields.items() if k != "metadata"}
    return ModelArtifact(path=path, name=name, signature=signature, metadata=metadata, **rest)


def store_python(
    payload: bytes,
    *,
    name: str,
    signature: Signature,
    files: Mapping[str, Path | bytes] | None = None,
    **fields: Any,
) -> ModelArtifact:
    """Store a pickled Python model as ``<name>-<variant>-<sha256[:16]>/model.pkl`` plus
    ``nbdeploy.json``, atomically, like every artifact (:func:`nbdeploy.artifact.store_model`)."""
    metadata = {**(fields.pop("metadata", None) or {})}
    metadata["pkl_sha256"] = hashlib.sha256(payload).hexdigest()
    return store_model(
        PICKLE_FILE,
        lambda path: path.write_bytes(payload),
        name=name,
        signature=signature,
        files=files,
        metadata=metadata,
        **fields,
    )
