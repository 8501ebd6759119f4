"""Text classifiers with their tokenizer: raw strings in, labels out.

A Hugging Face ``transformers`` sequence-classification model (or any torch module whose first
input is token ids) given with ``tokenizer=`` (a fast ``PreTrainedTokenizerFast`` or a
``tokenizers.Tokenizer``) is exported as:

- ``model.onnx``: the model over the token inputs it takes (``input_ids``, ``attention_mask``,
  ``token_type_ids``), batch and sequence dynamic (TorchScript exporter, opset 17; the dynamo
  exporter is the fallback);
- ``tokenizer.json``: the tokenizer's own file, a sidecar the server tokenizes with;
- ``metadata["tokenization"]``: how strings become those inputs (see ``nbdeploy.serve.text``),
  ``metadata["requirements"] = ["tokenizers==<installed>"]``, labels from ``config.id2label``;
- the artifact's signature is the raw-text one: ``text`` (str, ``[-1]``) in, the graph's
  outputs (``logits`` ``[-1, C]``) out. ``Signature.from_onnx(artifact.path)`` is the graph's.

Why the server tokenizes (and not an onnxruntime-extensions op inside the graph): the
``tokenizers`` library reads the very ``tokenizer.json`` the notebook's tokenizer is built from
(every normaliser, pre-tokenizer and post-processor, any model type), batches with padding, and
answers an empty batch; the in-graph tokenizer ops take one string per call, need a hand-built
loop to batch, crashed on an empty batch and cover only some tokenizer types.

The parity check is text to logits end to end: the notebook's tokenizer and model against
``tokenizer.json`` read back by ``tokenizers`` plus onnxruntime, on the sample texts, and each
text alone against the padded batch (the server pads to the longest text of whatever batch it
runs). In-process tooling feeds the graph with :func:`token_feeds` (benchmark, quantization),
which uses the server's own :class:`nbdeploy.serve.text.TextEncoder`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy._errors import ExportError, InputError, NbdeployError
from nbdeploy._format import first_line
from nbdeploy._tensors import as_feeds, is_frame
from nbdeploy._types import Signature, TensorSpec
from nbdeploy.exporters import _onnx, _torch
from nbdeploy.exporters.base import Exported
from nbdeploy.vocabulary import safe_name

TEXT_INPUT = "text"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_OPSET = 17
DEFAULT_MAX_LENGTH = 512
PADDING_ATOL = 1e-3
"""How far a text's logits may move between running alone and padded in a batch."""
HF_KEYS = {"ids": "input_ids", "attention_mask": "attention_mask", "type_ids": "token_type_ids"}
"""Encoding field -> the key a Hugging Face tokenizer returns it under."""
PARAM_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "mask": "attention_mask",
    "token_type_ids": "type_ids",
    "type_ids": "type_ids",
    "segment_ids": "type_ids",
}
"""A torch forward parameter's name -> the encoding field it takes."""


@dataclass(frozen=True)
class TextPipeline:
    """A model and its tokenizer: what a text artifact's ``source_model`` is, run on raw
    strings by the eager baseline (tokenizer + model per call, like a transformers pipeline)."""

    model: Any
    tokenizer: Any

    def __repr__(self) -> str:
        return f"TextPipeline({type(self.model).__name__}, {type(self.tokenizer).__name__})"


def is_transformers_model(model: Any) -> bool:
    """A ``transformers.PreTrainedModel``, judged by class names (nothing imported)."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers")
        for cls in type(model).__mro__
    )


def is_text_artifact(artifact: Any) -> bool:
    """True for an artifact whose server tokenizes raw text (``metadata["tokenization"]``)."""
    tokenization = getattr(artifact, "metadata", {}).get("tokenization")
    return isinstance(tokenization, dict) and tokenization.get("where") == "server"


# --------------------------------------------------------------------------- in-process feeds


def texts_of(sample: Any, what: str = "the sample") -> list[str]:
    """A list of strings from a str, list/tuple/array/Series of str, or ``{"text": ...}``."""
    if isinstance(sample, Mapping):
        if set(sample) != {TEXT_INPUT}:
            raise InputError(
                f"{what} of a text model is a list of strings (or {{'{TEXT_INPUT}': [...]}});"
                f" got a mapping with keys {list(sample)}"
            )
        sample = sample[TEXT_INPUT]
    if isinstance(sample, str | bytes):
        sample = [sample]
    if is_frame(sample):
        raise InputError(
            f"{what} of a text model is a list of strings; got a DataFrame (pass one column,"
            " e.g. df['text'])"
        )
    if hasattr(sample, "tolist") and callable(sample.tolist):
        sample = sample.tolist()
    if not isinstance(sample, list | tuple):
        raise InputError(
            f"{what} of a text model is a list of strings; got a {type(sample).__name__}"
        )
    flat: list[Any] = []
    for item in sample:
        # a [n, 1] array of strings (one column) is n texts
        flat.extend(item if isinstance(item, list | tuple) and len(item) == 1 else [item])
    texts: list[str] = []
    for index, item in enumerate(flat):
        if isinstance(item, bytes):
            item = item.decode("utf-8", errors="replace")
        if not isinstance(item, str):
            raise InputError(
                f"{what} of a text model is a list of strings; item {index} is a"
                f" {type(item).__name__} ({item!r:.40})"
            )
        texts.append(item)
    return texts


@lru_cache(maxsize=16)
def _encoder(path: str, tokenization_json: str) -> Any:
    import json

    from nbdeploy.serve.text import TextEncoder

    return TextEncoder.from_file(path, json.loads(tokenization_json))


def text_encoder(artifact: Any) -> Callable[[Any], dict[str, np.ndarray]]:
    """``encode(texts) -> graph feeds`` for a text artifact (the server's own encoder, read
    from the artifact's ``tokenizer.json``; cached per file)."""
    import json

    if not is_text_artifact(artifact):
        raise InputError(f"{artifact.label} is not a text model (it records no tokenization)")
    path = artifact.directory / TOKENIZER_FILE
    if not path.is_file():
        raise InputError(f"{artifact.label} has no {TOKENIZER_FILE} beside its model")
    tokenization = json.dumps(artifact.metadata["tokenization"], sort_keys=True)
    return _encoder(str(path), tokenization).encode


def token_feeds(artifact: Any, texts: Any) -> dict[str, np.ndarray]:
    """The ONNX graph's inputs (int64 token arrays, padded to the longest text) for raw
    ``texts`` (a list of strings, an array of them, or ``{"text": [...]}``), tokenized exactly
    as the server does."""
    return text_encoder(artifact)(texts_of(texts))


def graph_feeds(artifact: Any, sample: Any) -> dict[str, np.ndarray]:
    """What to feed ``artifact.path`` in onnxruntime for ``sample``: token feeds for a text
    artifact, ``as_feeds(artifact.signature, sample)`` for any other."""
    if is_text_artifact(artifact):
        return token_feeds(artifact, sample)
    return as_feeds(artifact.signature, sample)


# --------------------------------------------------------------------------- the export


@dataclass
class _Plan:
    """How strings become this model's inputs."""

    graph_inputs: list[str]
    fields: dict[str, str]
    """graph input -> encoding field"""
    hf_keys: dict[str, str]
    """graph input -> key of the HF tokenizer's output (reference side)"""
    keyword: bool
    """call the model with keywords (transformers) or positionally (torch)"""


def backend_of(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer``, or an InputError saying what to pass."""
    cls = type(tokenizer)
    if cls.__module__.startswith("tokenizers") and cls.__name__ == "Tokenizer":
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend).__module__.startswith("tokenizers"):
        return backend
    raise InputError(
        f"tokenizer= takes a fast Hugging Face tokenizer (PreTrainedTokenizerFast, e.g."
        f" AutoTokenizer.from_pretrained(..., use_fast=True)) or a tokenizers.Tokenizer; got a"
        f" {cls.__module__}.{cls.__qualname__}, which has no tokenizer.json for the server"
    )


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "backend_tokenizer") and callable(tokenizer)


def _forward_params(model: Any) -> list[tuple[str, bool]]:
    """``(name, has_default)`` of forward's positional parameters."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        (p.name, p.default is not p.empty)
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _plan(model: Any, tokenizer: Any) -> _Plan:
    params = _forward_params(model)
    names = [name for name, _ in params]
    if is_transformers_model(model):
        if "input_ids" not in names:
            raise InputError(
                f"{type(model).__name__}.forward takes no input_ids; a text model given"
                " tokenizer= must take token ids"
            )
        offered = ["input_ids", "attention_mask"]
        if _is_hf_tokenizer(tokenizer):
            offered = [k for k in tokenizer.model_input_names if k in HF_KEYS.values()]
            if "input_ids" not in offered:
                offered.insert(0, "input_ids")
        graph = [n for n in names if n in offered]
        fields = {n: next(f for f, k in HF_KEYS.items() if k == n) for n in graph}
        return _Plan(graph, fields, {n: n for n in graph}, keyword=True)
    if not params:
        raise InputError(
            f"cannot tell which inputs {type(model).__name__}.forward takes; give it named"
            " parameters (input_ids[, attention_mask])"
        )
    fields = {names[0]: "ids"}
    for name, has_default in params[1:]:
        field = PARAM_FIELDS.get(name)
        if field is None or field in fields.values():
            if not has_default:
                raise InputError(
                    f"{type(model).__name__}.forward takes {name!r} after the token ids; with"
                    " tokenizer= a model can take input_ids, attention_mask (or mask) and"
                    " token_type_ids only (give the others defaults)"
                )
            break
        fields[name] = field
    graph = list(fields)
    return _Plan(graph, fields, {n: HF_KEYS[f] for n, f in fields.items()}, keyword=False)


def _max_length(model: Any, tokenizer: Any, backend: Any) -> int:
    """Where the server truncates: the tokenizer's limit, capped by the model's positions."""
    limits: list[int] = []
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:
        limits.append(declared)
    truncation = getattr(backend, "truncation", None)
    if isinstance(truncation, dict) and truncation.get("max_length"):
        limits.append(int(truncation["max_length"]))
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else DEFAULT_MAX_LENGTH


def _padding(tokenizer: Any, backend: Any) -> dict[str, Any]:
    """The pad token, its id and type id, and the side, as the tokenizer pads."""
    padding = getattr(backend, "padding", None) or {}
    token = getattr(tokenizer, "pad_token", None) or padding.get("pad_token")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None and token is not None:
        pad_id = backend.token_to_id(token)
    if pad_id is None:
        pad_id = padding.get("pad_id")
    if pad_id is None:
        for candidate in ("[PAD]", "<pad>", "<|pad|>"):
            found = backend.token_to_id(candidate)
            if found is not None:
                token, pad_id = candidate, found
                break
    side = getattr(tokenizer, "padding_side", None) or padding.get("direction") or "right"
    return {
        "id": int(pad_id or 0),
        "token": str(token or "[PAD]"),
        "type_id": int(getattr(tokenizer, "pad_token_type_id", None) or 0),
        "side": "left" if side == "left" else "right",
    }


def _clean_json(backend: Any) -> str:
    """``tokenizer.json`` without padding or truncation (the server sets them per batch)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy.to_str()


def _reference_tokens(
    pipeline: TextPipeline, plan: _Plan, texts: list[str], max_length: int
) -> dict[str, Any]:
    """The notebook's own tokenization, as torch tensors by graph input name."""
    import torch

    tokenizer = pipeline.tokenizer
    if _is_hf_tokenizer(tokenizer):
        encoded = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        missing = [key for key in plan.hf_keys.values() if key not in encoded]
        if missing:
            encoded = tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
                return_attention_mask=True,
                return_token_type_ids=True,
            )
        return {name: encoded[key].to(torch.int64) for name, key in plan.hf_keys.items()}
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.enable_truncation(max_length=max_length)
    padding = _padding(tokenizer, copy)
    copy.enable_padding(
        direction=padding["side"],
        pad_id=padding["id"],
        pad_type_id=padding["type_id"],
        pad_token=padding["token"],
    )
    encodings = copy.encode_batch(texts)
    return {
        name: torch.tensor([getattr(e, field) for e in encodings], dtype=torch.int64)
        for name, field in plan.fields.items()
    }


def _call(model: Any, plan: _Plan, tensors: dict[str, Any]) -> Any:
    if plan.keyword:
        return model(**tensors)
    return model(*[tensors[name] for name in plan.graph_inputs])


def _outputs(result: Any) -> dict[str, np.ndarray]:
    """The model's answer by output name: ``logits`` for a transformers output (or a single
    2-D float tensor), else the flattened outputs as ``output``/``output_i``."""
    logits = getattr(result, "logits", None)
    if logits is not None:
        return {"logits": logits.detach().cpu().numpy()}
    flat = _torch.flatten_outputs(result)
    if isinstance(flat, dict):
        return flat
    if len(flat) == 1 and flat[0].dtype.kind == "f" and flat[0].ndim == 2:
        return {"logits": flat[0]}
    return dict(zip(_onnx.output_names(len(flat)), flat, strict=True))


def _run_reference(
    pipeline: TextPipeline, plan: _Plan, texts: list[str], max_length: int
) -> dict[str, np.ndarray]:
    import torch

    tensors = _reference_tokens(pipeline, plan, texts, max_length)
    try:
        with _torch.eval_mode(pipeline.model), torch.no_grad():
            return _outputs(_call(pipeline.model, plan, tensors))
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        raise InputError(
            f"the model rejected the tokenized sample ({shapes}): {first_line(exc)}"
        ) from exc


def _token_graph(model: Any, plan: _Plan) -> Any:
    """The module torch exports: token tensors in (positionally), the answer's tensors out."""
    import torch

    class TokenGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            result = _call(self.model, plan, dict(zip(plan.graph_inputs, tensors, strict=True)))
            logits = getattr(result, "logits", None)
            return logits if logits is not None else result

    return TokenGraph()


def _torchscript(module: Any, args: tuple, plan: _Plan, outputs: list[str], opset: int) -> Any:
    import onnx
    import torch

    buffer = io.BytesIO()
    axes = {name: {0: "batch", 1: "sequence"} for name in plan.graph_inputs}
    axes.update({name: {0: "batch"} for name in outputs})
    torch.onnx.export(
        module,
        args,
        buffer,
        dynamo=False,
        input_names=plan.graph_inputs,
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def _dynamo(module: Any, args: tuple, plan: _Plan, outputs: list[str], opset: int) -> Any:
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    args = tuple(t.repeat(2, 1) if t.shape[0] == 1 else t for t in args)
    if args and args[0].shape[1] == 1:
        args = tuple(torch.cat([t, t], dim=1) for t in args)
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=plan.graph_inputs,
        output_names=outputs,
        dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in args),),
        opset_version=opset,
        verbose=False,
    )
    return program.model_proto


def _check_tokens(reference: dict[str, Any], feeds: dict[str, np.ndarray], texts: list[str]):
    """The server's tokenization (tokenizer.json read back) must give the notebook's tokens."""
    for name, tensor in reference.items():
        want, got = tensor.numpy(), feeds[name]
        if want.shape == got.shape and np.array_equal(want, got):
            continue
        row = 0
        if want.ndim == 2 and got.ndim == 2 and want.shape[0] == got.shape[0]:
            width = min(want.shape[1], got.shape[1])
            bad = np.flatnonzero((want[:, :width] != got[:, :width]).any(axis=1))
            row = int(bad[0]) if bad.size else 0
        raise ExportError(
            f"the tokenizer's {TOKENIZER_FILE}, read back with the tokenizers library, does not"
            f" reproduce the tokenizer's {name} (first for text {row}, {texts[row]!r:.60});"
            " the server could not tokenize like the notebook"
        )


class PaddingError(ExportError):
    """The model's answer for a text depends on how far the batch pads it (a property of the
    model, not of the exporter: no other exporter is tried)."""


def _check_padding(sess: Any, encode: Callable, texts: list[str], batched: dict) -> None:
    """Each text alone must get the answer it gets padded inside the batch: the server pads
    to the longest text of whatever requests it runs together."""
    for index, text in enumerate(texts):
        alone = _onnx.run(sess, encode([text]))
        for name, value in alone.items():
            diff = float(np.max(np.abs(value - batched[name][index : index + 1]), initial=0.0))
            if not diff <= PADDING_ATOL:
                raise PaddingError(
                    f"the model answers text {index} ({text!r:.40}) differently alone and"
                    f" padded in a batch (max |diff| {diff:.3g} on {name}): it must ignore"
                    " padding, e.g. take an attention_mask and mask the padded positions"
                )


def _quiet_session(path: Path) -> Any:
    """A CPU session that leaves failures to the ExportError (no onnxruntime log lines)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_text(
    pipeline: TextPipeline, sample: Any, *, framework: str, opset: int | None
) -> Exported:
    """The ONNX graph over token ids, its tokenizer file and the raw-text signature."""
    import tokenizers
    import torch

    from nbdeploy.serve.text import TextEncoder

    model, tokenizer = pipeline.model, pipeline.tokenizer
    if not _torch.EXPORTER.detect(model):
        raise InputError(
            f"tokenizer= applies to transformers and torch text models; got a"
            f" {type(model).__module__}.{type(model).__qualname__}"
        )
    texts = texts_of(sample)
    if not texts:
        raise InputError("the sample of a text model must hold at least one string")
    backend = backend_of(tokenizer)
    plan = _plan(model, tokenizer)
    max_length = _max_length(model, tokenizer, backend)
    tokenization = {
        "where": "server",
        "library": "tokenizers",
        "library_version": tokenizers.__version__,
        "file": TOKENIZER_FILE,
        "max_length": max_length,
        "padding": _padding(tokenizer, backend),
        "feeds": dict(plan.fields),
    }
    from tokenizers import Tokenizer

    tokenizer_json = _clean_json(backend)
    encoder = TextEncoder(Tokenizer.from_str(tokenizer_json), tokenization)
    feeds = encoder.encode(texts)
    reference_tokens = _reference_tokens(pipeline, plan, texts, max_length)
    _check_tokens(reference_tokens, feeds, texts)
    reference = _run_reference(pipeline, plan, texts, max_length)
    out_names = list(reference)
    opset = opset or DEFAULT_OPSET
    module = _token_graph(model, plan)
    args = tuple(torch.from_numpy(feeds[name]) for name in plan.graph_inputs)
    failures: list[str] = []
    for label, exporter in (("torchscript", _torchscript), ("dynamo", _dynamo)):
        try:
            with _torch.eval_mode(model), _torch.quiet():
                proto = _onnx.tidy(exporter(module, args, plan, out_names, opset))
            graph_signature = Signature.from_onnx(proto)
            _onnx.require_dynamic_batch(graph_signature, label)
            with _onnx.saved(proto) as path:
                sess = _quiet_session(path)
                batched = _onnx.run(sess, feeds)
                _check_padding(sess, encoder.encode, texts, batched)
        except PaddingError:
            raise
        except NbdeployError as exc:
            failures.append(f"{label}: {first_line(exc)}")
            continue
        except Exception as exc:
            failures.append(f"{label}: {_torch._root_cause(exc)}")
            continue
        break
    else:
        raise ExportError(
            f"torch could not export {type(model).__name__} over token ids to ONNX; "
            + "; ".join(failures)
        )
    labels = class_labels(model)
    metadata: dict[str, Any] = {
        "exporter": label,
        "versions": {**_torch.EXPORTER.versions(), **_versions(tokenizers.__version__)},
        "tokenization": tokenization,
        "requirements": [f"tokenizers=={tokenizers.__version__}"],
    }
    if failures:
        metadata["fallback_reason"] = "; ".join(failures)
    if list(reference) == ["logits"] and reference["logits"].ndim == 2:
        entry: dict[str, Any] = {"kind": "logits"}
        if labels and reference["logits"].shape[1] == len(labels):
            entry["classes"] = list(labels)
        metadata["outputs"] = {"logits": entry}
    text = TensorSpec(TEXT_INPUT, "str", (-1,))
    return Exported(
        proto=proto,
        feeds=feeds,
        reference=reference,
        framework=framework,
        framework_version=_framework_version(framework),
        default_name=safe_name(type(model).__name__),
        metadata=metadata,
        labels=labels,
        files={TOKENIZER_FILE: tokenizer_json.encode()},
        signature=Signature((text,), graph_signature.outputs, graph_signature.opset),
    )


def class_labels(model: Any) -> list[str] | None:
    """``config.id2label`` in index order, when it names every class."""
    config = getattr(model, "config", None)
    mapping = getattr(config, "id2label", None)
    if not isinstance(mapping, Mapping) or not mapping:
        return None
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))]


def _framework_version(framework: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(framework)
    except PackageNotFoundError:
        return None


def _versions(tokenizers_version: str) -> dict[str, str]:
    versions = {"tokenizers": tokenizers_version}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["transformers"] = version("transformers")
    return versions


# --------------------------------------------------------------------------- the registry entry


class TextExporter:
    """Text models for the registry: a ``TextPipeline`` (a model given with ``tokenizer=``),
    and, for ``framework == "transformers"``, a transformers model alone (token-id inputs,
    like any torch module, with its labels from ``config.id2label``)."""

    def __init__(self, framework: str) -> None:
        self.framework = framework

    def detect(self, model: Any) -> bool:
        transformers = self.framework == "transformers"
        if isinstance(model, TextPipeline):
            return is_transformers_model(model.model) == transformers
        return transformers and is_transformers_model(model)

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        if isinstance(model, TextPipeline):
            return export_text(model, sample, framework=self.framework, opset=opset)
        if _holds_strings(sample):
            raise InputError(
                f"{type(model).__name__} takes token ids, and the sample holds strings:"
                " pass its tokenizer too (tokenizer=tok) to serve raw text"
            )
        exported = _torch.EXPORTER.export(model, sample, opset=opset)
        exported.framework = self.framework
        exported.framework_version = _framework_version(self.framework)
        exported.labels = class_labels(model)
        return exported

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """For a pipeline: tokenizer + model on the raw texts in every call (what a
        transformers pipeline does, and what the raw-text endpoint is compared with)."""
        if not isinstance(model, TextPipeline):
            return _torch.EXPORTER.eager_runner(model, sample)
        import torch

        texts = texts_of(sample)
        plan = _plan(model.model, model.tokenizer)
        max_length = _max_length(model.model, model.tokenizer, backend_of(model.tokenizer))

        def run_once() -> Any:
            tensors = _reference_tokens(model, plan, texts, max_length)
            with torch.inference_mode():
                if not model.model.training:
                    return _call(model.model, plan, tensors)
                with _torch.eval_mode(model.model):
                    return _call(model.model, plan, tensors)

        return run_once

    def versions(self) -> dict[str, str]:
        versions = _torch.EXPORTER.versions()
        with contextlib.suppress(Exception):
            import tokenizers

            versions.update(_versions(tokenizers.__version__))
        return versions


TRANSFORMERS = TextExporter("transformers")
TORCH_TEXT = TextExporter("torch")


def _holds_strings(sample: Any) -> bool:
    try:
        return bool(texts_of(sample))
    except InputError:
        return False
