"""Raw text in: the server tokenizes with the version's own ``tokenizer.json``, then runs the graph.

A text model's version directory holds ``model.onnx`` (a graph over token ids),
``tokenizer.json`` (a Hugging Face ``tokenizers`` file) and ``nbdeploy.json`` whose
``metadata.tokenization`` says how to turn strings into the graph's inputs::

    {"where": "server", "library": "tokenizers", "max_length": 64,
     "padding": {"id": 0, "token": "[PAD]", "type_id": 0, "side": "right"},
     "feeds": {"input_ids": "ids", "attention_mask": "attention_mask",
               "token_type_ids": "type_ids"}}

``feeds`` maps each graph input to the ``tokenizers.Encoding`` field it is filled from. The
public V2 input is one ``BYTES`` tensor ``text`` of shape ``[-1]``; a batch (one request, or
several merged by the dynamic batcher) is encoded with padding to its longest row and
truncation at ``max_length``, as int64 arrays. An empty batch is answered with empty outputs
without running the graph (some graphs cannot run on zero rows), and an empty string is a
text like any other (it encodes to the special tokens alone).

:class:`TextSession` stands where the onnxruntime session stands in the version's
``ModelVersion`` (``nbdeploy.serve.model.TextModelVersion``), so requests are checked, batched
and classified like any model's. The same :class:`TextEncoder` is what nbdeploy's exporter
checks parity with and what its benchmark and quantization feed the graph, so what was
measured is what is served. This module imports nothing else from the server;
``tokenizers`` is imported only when a text model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "nbdeploy.json"
TEXT_INPUT = "text"
ENCODING_FIELDS = ("ids", "attention_mask", "type_ids")
"""The ``tokenizers.Encoding`` attributes a graph input can be filled from."""


class TextEncoder:
    """Strings -> the graph's int64 token inputs, padded to the longest row of the batch."""

    def __init__(self, tokenizer: Any, tokenization: Mapping[str, Any]) -> None:
        """``tokenizer`` is a ``tokenizers.Tokenizer`` (its own padding and truncation are
        replaced by those ``tokenization`` records)."""
        feeds = tokenization.get("feeds")
        if not isinstance(feeds, Mapping) or not feeds:
            raise ValueError("tokenization.feeds must map graph inputs to encoding fields")
        unknown = sorted({str(f) for f in feeds.values()} - set(ENCODING_FIELDS))
        if unknown:
            raise ValueError(
                f"tokenization.feeds uses {unknown}; an input is filled from one of"
                f" {list(ENCODING_FIELDS)}"
            )
        self.feeds = {str(name): str(field) for name, field in feeds.items()}
        self.max_length = int(tokenization.get("max_length") or 0) or None
        padding = tokenization.get("padding") or {}
        self.pad_id = int(padding.get("id", 0))
        self.pad_type_id = int(padding.get("type_id", 0))
        self.pad_token = str(padding.get("token", "[PAD]"))
        self.side = "left" if padding.get("side") == "left" else "right"
        if self.max_length is not None:
            tokenizer.enable_truncation(max_length=self.max_length)
        else:
            tokenizer.no_truncation()
        tokenizer.enable_padding(
            direction=self.side,
            pad_id=self.pad_id,
            pad_type_id=self.pad_type_id,
            pad_token=self.pad_token,
        )
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path, tokenization: Mapping[str, Any]) -> TextEncoder:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), tokenization)

    def encode(self, texts: Iterable[Any]) -> dict[str, np.ndarray]:
        """The graph's feeds for ``texts`` (str, or UTF-8 bytes), each ``[rows, longest]``."""
        batch = [_as_str(text) for text in texts]
        if not batch:
            return {name: np.zeros((0, 0), dtype=np.int64) for name in self.feeds}
        if len(batch) == 1:
            encodings = [self.tokenizer.encode(batch[0])]
        else:
            encodings = self.tokenizer.encode_batch(batch)
        return {
            name: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            for name, field in self.feeds.items()
        }


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def read_tokenization(directory: Path) -> dict[str, Any] | None:
    """``metadata.tokenization`` of a version directory when the server is to tokenize."""
    try:
        data = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    tokenization = metadata.get("tokenization") if isinstance(metadata, dict) else None
    if isinstance(tokenization, dict) and tokenization.get("where") == "server":
        return tokenization
    return None


class TextLoadError(Exception):
    """The version's tokenizer cannot be used (the server reports it as a start-up error)."""


class TextSession:
    """Stands where the onnxruntime session stands in a ``ModelVersion``: ``run`` takes the
    ``text`` tensor, tokenizes it and runs the graph's session on the token arrays."""

    input = (TEXT_INPUT, "BYTES", (-1,))
    """The public input as ``(name, V2 datatype, shape)``."""

    def __init__(self, session: Any, encoder: TextEncoder, tokenization: Mapping[str, Any]):
        self.session = session
        self.encoder = encoder
        self.summary = {
            key: tokenization[key]
            for key in ("where", "library", "max_length", "feeds")
            if key in tokenization
        }
        """What V2 model metadata shows under ``parameters.tokenization``."""
        self._empty: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, directory: Path, session: Any, label: str) -> TextSession:
        """The text step for the graph ``session`` loaded from ``directory``."""
        tokenization = read_tokenization(directory)
        if tokenization is None:
            raise TextLoadError(f"{directory}: nbdeploy.json records no server tokenization")
        path = directory / TOKENIZER_FILE
        try:
            encoder = TextEncoder.from_file(path, tokenization)
        except ImportError as exc:
            raise TextLoadError(
                f"{label} takes raw text and needs the 'tokenizers' package, which this"
                f" server's environment lacks ({exc})"
            ) from exc
        except Exception as exc:
            raise TextLoadError(f"cannot load the tokenizer {path}: {exc}") from exc
        graph_inputs = {arg.name for arg in session.get_inputs()}
        if set(encoder.feeds) != graph_inputs:
            raise TextLoadError(
                f"{directory}: the graph takes {sorted(graph_inputs)} but tokenization.feeds"
                f" fills {sorted(encoder.feeds)}"
            )
        return cls(session, encoder, tokenization)

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, output_names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs for the texts in ``feeds["text"]`` (any shape, read flat)."""
        texts = np.asarray(feeds[TEXT_INPUT], dtype=object).reshape(-1)
        if texts.size == 0:
            return [self._empty_output(name) for name in output_names]
        return self.session.run(output_names, self.encoder.encode(texts))

    def _empty_output(self, name: str) -> np.ndarray:
        """A zero-row output shaped like a real answer's (some graphs cannot run on zero
        rows, so one empty text is run once and its answer cut to nothing)."""
        if name not in self._empty:
            (value,) = self.session.run([name], self.encoder.encode([""]))
            self._empty[name] = value[:0]
        return self._empty[name]
