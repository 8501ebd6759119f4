"""Model versions on disk: ``DIR/<name>/<version>/model.onnx`` (+ ``nbdeploy.json``), loaded into
onnxruntime sessions, warmed up, and checked against incoming tensors.

The signature comes from the ONNX session itself, so the server never trusts a stale
``nbdeploy.json``; that file only contributes extras: class labels, what each output means
(``metadata.outputs``: label, probabilities, logits or value, with its classes) and which float
inputs accept missing values (``metadata.accepts_nan``).

Missing values: NaN and ±infinity in a float input are refused with a 400 naming the input,
unless the input is listed in ``accepts_nan`` (the exporter probed that the model answers NaN
there); listed inputs take NaN but still refuse ±infinity, which is no missing value. A model
without that list accepts NaN in none of its inputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    NotImplemented,
    RuntimeException,
)

from .errors import ClientError, bad_request, name_problems, not_found, quote, quote_names
from .protocol import DATATYPES, ONNX_DATATYPES, RequestedOutput, check_scores, classify

MODEL_FILE = "model.onnx"
PICKLE_FILE = "model.pkl"  # a Python model's file, served by nbdeploy.serve.python_model
TOKENIZER_FILE = "tokenizer.json"  # a text model's tokenizer, used by nbdeploy.serve.text
METADATA_FILE = "nbdeploy.json"
PLATFORM = "onnxruntime_onnx"

log = logging.getLogger("nbdeploy.serve")

_RUN_ERRORS = (Fail, InvalidArgument, NotImplemented, RuntimeException)

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
# What an output means (``metadata.outputs[name]["kind"]`` in nbdeploy.json).
OUTPUT_KINDS = ("label", "probabilities", "logits", "value")
SCORE_KINDS = frozenset({"probabilities", "logits"})


class RepositoryError(Exception):
    """The model repository cannot be served as configured (a start-up error, not a request's)."""


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as V2 metadata shows it; ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class ModelVersion:
    """One loaded version of one model: its session, metadata and request checks."""

    def __init__(
        self,
        name: str,
        version: int,
        directory: Path,
        session: Any,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        extras: dict[str, Any],
    ) -> None:
        self.name = name
        self.version = version
        self.directory = directory
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.extras = extras
        self.batchable = False
        self._input_names = [info.name for info in inputs]
        self._output_names = {info.name for info in outputs}
        self.output_meanings: dict[str, dict[str, Any]] = extras.get("outputs") or {}
        self.accepts_nan: list[str] = extras.get("accepts_nan") or []
        floats = [info.name for info in inputs if info.datatype in FLOAT_DATATYPES]
        # Precomputed so that a model without float inputs pays nothing per request.
        self._finite_inputs = tuple(n for n in floats if n not in self.accepts_nan)
        self._nan_inputs = tuple(n for n in floats if n in self.accepts_nan)

    @classmethod
    def load(cls, name: str, version: int, directory: Path, threads: int) -> ModelVersion:
        """Open ``model.onnx`` with ``threads`` intra-op threads and every graph optimisation."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 4  # run errors reach the client as 400s
        path = directory / MODEL_FILE
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RepositoryError(f"onnxruntime cannot load {path}: {exc}") from exc
        inputs = []
        for arg in session.get_inputs():
            if arg.type not in ONNX_DATATYPES:
                raise RepositoryError(
                    f"{path}: input '{arg.name}' has type {arg.type}, which the V2 protocol"
                    " cannot carry; only tensors of numbers, booleans and strings are served"
                )
            inputs.append(_tensor_info(arg))
        outputs = []
        for arg in session.get_outputs():
            if arg.type in ONNX_DATATYPES:
                outputs.append(_tensor_info(arg))
            else:
                log.warning(
                    "%s v%d: output '%s' has type %s, which V2 cannot carry; it is not served",
                    name,
                    version,
                    arg.name,
                    arg.type,
                )
        if not outputs:
            raise RepositoryError(f"{path}: the model has no tensor outputs to serve")
        extras = _read_extras(directory)
        served = {info.name for info in outputs}
        meanings = extras.get("outputs")
        if meanings is not None:
            unknown = sorted(set(meanings) - served)
            if unknown:
                log.warning(
                    "%s v%d: nbdeploy.json describes outputs %s that the model does not serve",
                    name,
                    version,
                    unknown,
                )
            extras["outputs"] = {key: value for key, value in meanings.items() if key in served}
        return cls(name, version, directory, session, inputs, outputs, extras)

    @property
    def labels(self) -> list[str] | None:
        labels = self.extras.get("labels")
        return labels if isinstance(labels, list) else None

    def metadata(self, versions: list[int], batching: dict[str, Any]) -> dict[str, Any]:
        """The V2 model metadata document (plus nbdeploy's extras under ``parameters``)."""
        parameters = {key: value for key, value in self.extras.items() if value is not None}
        parameters.update(batching)
        return {
            "name": self.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [info.to_json() for info in self.inputs],
            "outputs": [info.to_json() for info in self.outputs],
            "parameters": parameters,
        }

    def check_inputs(
        self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]
    ) -> dict[str, np.ndarray]:
        """The request's tensors in model order, or a 400 naming what does not fit."""
        problems = name_problems(self._input_names, list(inputs))
        if problems:
            raise bad_request(
                f"model '{self.name}' expects inputs {self._input_names}; the request has"
                f" {quote_names(list(inputs))} ({problems})"
            )
        feeds: dict[str, np.ndarray] = {}
        for info in self.inputs:
            array = inputs[info.name]
            given = datatypes[info.name]
            if given != info.datatype:
                raise bad_request(
                    f"input '{info.name}' of model '{self.name}' expects datatype"
                    f" {info.datatype}, the request gives {given}"
                )
            if not _shape_fits(info.shape, array.shape):
                raise bad_request(
                    f"input '{info.name}' of model '{self.name}' expects shape"
                    f" {list(info.shape)} (-1 = any size), the request gives {list(array.shape)}"
                )
            feeds[info.name] = array
        for name in self._finite_inputs:
            if not np.isfinite(feeds[name]).all():
                raise self._not_finite(name, feeds[name])
        for name in self._nan_inputs:
            if np.isinf(feeds[name]).any():
                raise self._infinite(name, feeds[name])
        return feeds

    def _not_finite(self, name: str, array: np.ndarray) -> ClientError:
        where = _first_index(~np.isfinite(array))
        elsewhere = f"only in {self.accepts_nan}" if self.accepts_nan else "in none of its inputs"
        return bad_request(
            f"input '{name}' contains NaN or infinity (first at index {where}); model"
            f" '{self.name}' does not accept missing values in it (send finite numbers in"
            f" '{name}'; null and NaN count as missing, which this model accepts {elsewhere})"
        )

    def _infinite(self, name: str, array: np.ndarray) -> ClientError:
        return bad_request(
            f"input '{name}' contains infinity (first at index {_first_index(np.isinf(array))});"
            f" model '{self.name}' accepts NaN or null as a missing value in it, but not"
            " infinity"
        )

    def check_outputs(
        self, requested: list[RequestedOutput] | None, binary_default: bool
    ) -> list[RequestedOutput]:
        """The outputs to return, all of them by default, or a 400 for an unknown name."""
        if requested is None:
            return [RequestedOutput(info.name, binary_default) for info in self.outputs]
        unknown = [out.name for out in requested if out.name not in self._output_names]
        if unknown:
            raise bad_request(
                f"model '{self.name}' has no output {quote(unknown[0])}; its outputs are"
                f" {[info.name for info in self.outputs]}"
            )
        return requested

    def classify(self, name: str, array: np.ndarray, count: int) -> np.ndarray:
        """The classification extension on output ``name``, if it holds per-class scores.

        An output recorded as a ``label`` or a ``value`` holds no scores to rank (ranking label
        values as if they were classes answers nonsense), and a 1-D output is ranked only when
        recorded as probabilities or logits. Labels come from the output's own ``classes``,
        else from the model's ``labels``.
        """
        meaning = self.output_meanings.get(name, {})
        kind = meaning.get("kind")
        if kind in ("label", "value"):
            what = "class labels" if kind == "label" else "predicted values"
            raise bad_request(
                f"output '{name}' of model '{self.name}' holds {what} (kind '{kind}'), not"
                f" per-class scores, so classification cannot rank it; {self._rank_instead(name)}"
            )
        check_scores(array)
        if array.ndim == 1 and kind not in SCORE_KINDS:
            raise bad_request(
                f"output '{name}' of model '{self.name}' is 1-D ({list(array.shape)}) and not"
                " recorded as per-class probabilities or logits, so classification cannot rank"
                f" it; {self._rank_instead(name)}"
            )
        classes = meaning.get("classes") or self.labels
        return classify(array, count, classes)

    def _rank_instead(self, name: str) -> str:
        scores = [
            info.name
            for info in self.outputs
            if self.output_meanings.get(info.name, {}).get("kind") in SCORE_KINDS
        ]
        if scores:
            return f"ask it of {scores[0]!r} instead, or request '{name}' without classification"
        return f"request '{name}' without classification"

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """One onnxruntime run; a failure caused by the input data is the client's (400)."""
        try:
            values = self.session.run(output_names, feeds)
        except _RUN_ERRORS as exc:
            raise ClientError(400, f"model '{self.name}' cannot run on this input: {exc}") from exc
        return dict(zip(output_names, values, strict=True))

    def warm_up(self) -> None:
        """Run once so the first request does not pay for lazy initialisation, and find out
        whether requests can be merged along axis 0: every input and output must have a
        dynamic first dimension, and the outputs must really follow the input's row count.
        """
        names = [info.name for info in self.outputs]
        candidate = all(len(info.shape) >= 1 and info.shape[0] == -1 for info in self.inputs)
        candidate = candidate and all(
            len(info.shape) >= 1 and info.shape[0] == -1 for info in self.outputs
        )
        try:
            single = self.run(self._dummy_feeds(1), names)
            if candidate:
                double = self.run(self._dummy_feeds(2), names)
                self.batchable = all(
                    single[n].shape[:1] == (1,) and double[n].shape[:1] == (2,) for n in names
                )
        except ClientError as exc:
            log.warning(
                "%s v%d: warm-up on zeros failed, so batching is off for it: %s",
                self.name,
                self.version,
                exc.message,
            )
            self.batchable = False

    def _dummy_feeds(self, rows: int) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for info in self.inputs:
            shape = tuple(
                (rows if axis == 0 else 1) if dim == -1 else dim
                for axis, dim in enumerate(info.shape)
            )
            if info.datatype == "BYTES":
                feeds[info.name] = np.full(shape, "", dtype=object)
            else:
                feeds[info.name] = np.zeros(shape, dtype=DATATYPES[info.datatype])
        return feeds


class Repository:
    """Every loaded model version, and which version an unversioned route means."""

    def __init__(self, models: dict[str, dict[int, ModelVersion]], defaults: dict[str, int]):
        self.models = models
        self.defaults = defaults

    def __iter__(self) -> Iterator[ModelVersion]:
        for versions in self.models.values():
            yield from versions.values()

    def versions(self, name: str) -> list[int]:
        return sorted(self.models[name])

    def lookup(self, name: str, version: str | None) -> ModelVersion:
        """The model version a route names, or a 404 saying what exists."""
        versions = self.models.get(name)
        if versions is None:
            raise not_found(f"unknown model {quote(name)}; this server has {sorted(self.models)}")
        if version is None:
            return versions[self.defaults[name]]
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        plain = version.isascii() and version.isdigit() and len(version) <= 9
        number = int(version) if plain else None
        if number is None or number not in versions:
            raise not_found(
                f"model '{name}' has no version {quote(version)}; its versions are"
                f" {[str(v) for v in sorted(versions)]}"
            )
        return versions[number]


def discover(root: Path) -> dict[str, dict[int, Path]]:
    """``{name: {version: directory}}`` for every ``<name>/<integer>/model.onnx`` under root."""
    if not root.is_dir():
        raise RepositoryError(f"the model repository {root} is not a directory")
    found: dict[str, dict[int, Path]] = {}
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        versions: dict[int, Path] = {}
        for version_dir in sorted(model_dir.iterdir()):
            name = version_dir.name
            if not (name.isdigit() and name == str(int(name))):
                continue
            if (version_dir / MODEL_FILE).is_file() or (version_dir / PICKLE_FILE).is_file():
                versions[int(name)] = version_dir
        if versions:
            found[model_dir.name] = versions
        else:
            log.warning("%s holds no <version>/%s; skipped", model_dir, MODEL_FILE)
    if not found:
        raise RepositoryError(
            f"the model repository {root} holds no models: expected"
            f" {root}/<name>/<version>/{MODEL_FILE}"
        )
    return found


def check_default_version(found: dict[str, dict[int, Path]], default_version: int | None) -> None:
    """Refuse a ``--default-version`` that no model has (it is a typo, not a fallback)."""
    if default_version is not None and not any(default_version in v for v in found.values()):
        raise RepositoryError(
            f"--default-version {default_version} does not exist for any model: found"
            f" { ({name: sorted(v) for name, v in found.items()}) }"
        )


class PythonModelVersion(ModelVersion):
    """A Python model (``model.pkl``): ``nbdeploy.serve.python_model.PythonModel`` stands
    where the onnxruntime session stands, so requests are checked, batched and classified
    exactly like an ONNX model's. Loading refuses a file whose sha256 differs from the one
    recorded at registration; batching is on only for a callable exported as batch-safe.
    """

    @classmethod
    def load(cls, name: str, version: int, directory: Path, threads: int) -> PythonModelVersion:
        from .python_model import LoadError, PythonModel  # cloudpickle only for Python models

        try:
            callable_model = PythonModel.load(name, version, directory)
        except LoadError as exc:
            raise RepositoryError(str(exc)) from exc
        extras = {**_read_extras(directory), **callable_model.extras}
        served = {output[0] for output in callable_model.outputs}
        if isinstance(extras.get("outputs"), dict):
            extras["outputs"] = {k: v for k, v in extras["outputs"].items() if k in served}
        return cls(
            name,
            version,
            directory,
            callable_model,
            [TensorInfo(*spec) for spec in callable_model.inputs],
            [TensorInfo(*spec) for spec in callable_model.outputs],
            extras,
        )

    def metadata(self, versions: list[int], batching: dict[str, Any]) -> dict[str, Any]:
        return {**super().metadata(versions, batching), "platform": self.session.platform}

    def warm_up(self) -> None:
        from .python_model import LoadError

        try:
            self.session.warm_up()
        except LoadError as exc:
            raise RepositoryError(str(exc)) from exc
        self.batchable = self.session.batchable


class TextModelVersion(ModelVersion):
    """Raw text in (``tokenizer.json`` beside the graph): ``nbdeploy.serve.text.TextSession``
    stands where the onnxruntime session stands and tokenizes the ``text`` BYTES tensor
    before the graph runs, so requests are checked, batched and classified like any model's.
    Without server tokenization recorded in ``nbdeploy.json`` the graph is served as is.
    """

    @classmethod
    def load(cls, name: str, version: int, directory: Path, threads: int) -> ModelVersion:
        from .text import TextLoadError, TextSession, read_tokenization  # tokenizers lazily

        graph = ModelVersion.load(name, version, directory, threads)
        if read_tokenization(directory) is None:
            log.warning(
                "%s v%d: %s beside the model but no server tokenization recorded; serving"
                " the graph's own inputs",
                name,
                version,
                TOKENIZER_FILE,
            )
            return graph
        try:
            session = TextSession.load(directory, graph.session, f"{name} v{version}")
        except TextLoadError as exc:
            raise RepositoryError(str(exc)) from exc
        extras = {**graph.extras, "tokenization": session.summary}
        inputs = [TensorInfo(*session.input)]
        return cls(name, version, directory, session, inputs, graph.outputs, extras)


def version_directory(root: Path, name: str, version: int) -> Path:
    """``root/<name>/<version>``, or a RepositoryError when it holds no model file."""
    directory = root / name / str(version)
    if not ((directory / MODEL_FILE).is_file() or (directory / PICKLE_FILE).is_file()):
        raise RepositoryError(f"{directory} holds no {MODEL_FILE}")
    return directory


def load_version(name: str, version: int, directory: Path, threads: int) -> ModelVersion:
    """Load one version (ONNX, text or Python model) and warm it up."""
    started = time.perf_counter()
    if (directory / PICKLE_FILE).is_file():
        model: ModelVersion = PythonModelVersion.load(name, version, directory, threads)
    elif (directory / TOKENIZER_FILE).is_file():
        model = TextModelVersion.load(name, version, directory, threads)
    else:
        model = ModelVersion.load(name, version, directory, threads)
    model.warm_up()
    log.info(
        "loaded %s v%d from %s in %.2f s: inputs %s, outputs %s, batchable %s",
        name,
        version,
        directory,
        time.perf_counter() - started,
        _describe(model.inputs),
        _describe(model.outputs),
        "yes" if model.batchable else "no",
    )
    return model


def load_repository(
    found: dict[str, dict[int, Path]], threads: int, default_version: int | None
) -> Repository:
    """Load and warm up every version ``discover`` found."""
    check_default_version(found, default_version)
    models: dict[str, dict[int, ModelVersion]] = {}
    defaults: dict[str, int] = {}
    for name, versions in found.items():
        models[name] = {}
        for version, directory in sorted(versions.items()):
            models[name][version] = load_version(name, version, directory, threads)
        if default_version is not None and default_version in versions:
            defaults[name] = default_version
        else:
            defaults[name] = max(versions)
            if default_version is not None:
                log.warning(
                    "%s has no version %d; unversioned routes use its highest, %d",
                    name,
                    default_version,
                    defaults[name],
                )
    return Repository(models, defaults)


def _tensor_info(arg: Any) -> TensorInfo:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or ())
    return TensorInfo(arg.name, ONNX_DATATYPES[arg.type], shape)


def _shape_fits(expected: tuple[int, ...], given: tuple[int, ...]) -> bool:
    return len(expected) == len(given) and all(
        want in (-1, got) for want, got in zip(expected, given, strict=True)
    )


def _first_index(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.argwhere(mask)[0]] if mask.ndim else []


def _read_extras(directory: Path) -> dict[str, Any]:
    """Labels, input kind, variant, output meanings, the inputs that accept NaN and the drift
    reference profile from ``nbdeploy.json``; a broken file or entry is only a warning."""
    path = directory / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    extras: dict[str, Any] = {}
    labels = data.get("labels")
    if isinstance(labels, list):
        extras["labels"] = [str(label) for label in labels]
    for key in ("input_kind", "variant", "framework"):
        if isinstance(data.get(key), str):
            extras[key] = data[key]
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return extras
    outputs = metadata.get("outputs")
    if isinstance(outputs, dict):
        extras["outputs"] = _output_meanings(outputs, path)
    profile = metadata.get("profile")
    if isinstance(profile, dict) and isinstance(profile.get("features"), list):
        extras["profile"] = profile
    elif profile is not None:
        log.warning("%s: metadata.profile is not a profile with features; no drift", path)
    accepts_nan = metadata.get("accepts_nan")
    if isinstance(accepts_nan, list):
        extras["accepts_nan"] = [name for name in accepts_nan if isinstance(name, str)]
    elif accepts_nan is not None:
        log.warning("%s: metadata.accepts_nan is not a list of input names; ignored", path)
    return extras


def _output_meanings(outputs: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """``{output: {"kind": ..., "classes": [...]}}`` with the kinds this server knows."""
    meanings: dict[str, dict[str, Any]] = {}
    for name, spec in outputs.items():
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in OUTPUT_KINDS:
            log.warning(
                "%s: metadata.outputs[%r] has no kind among %s; ignored", path, name, OUTPUT_KINDS
            )
            continue
        meaning: dict[str, Any] = {"kind": kind}
        classes = spec.get("classes")
        if isinstance(classes, list):
            meaning["classes"] = [str(label) for label in classes]
        meanings[str(name)] = meaning
    return meanings


def _describe(infos: list[TensorInfo]) -> str:
    return ", ".join(f"{info.name} {info.datatype}{list(info.shape)}" for info in infos)
