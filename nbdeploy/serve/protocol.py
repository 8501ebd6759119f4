"""Open Inference Protocol (V2) tensors: JSON ``data`` and the binary tensor data extension.

Decoding checks only what the request says about itself (well-formed JSON, known datatypes,
sizes that add up); whether the tensors fit a model is the model's business (``model.py``).
Binary inputs become ``np.frombuffer`` views of the request body, and a response body is built
with a single ``bytes.join``, so tensor bytes are copied as little as the protocol allows.

Missing values: in the JSON ``data`` of a float input, ``null`` and the non-standard ``NaN``
token (which Python's ``json`` reads and writes by default) both become NaN, and ``Infinity`` /
``-Infinity`` become ±inf; whether the model takes them is decided per input by
``ModelVersion.check_inputs``. String (BYTES) inputs are handed on as numpy object arrays of
``str``, never ``bytes``: onnxruntime would turn ``b"x"`` into the text ``"b'x'"``. JSON responses
are strict JSON: a non-finite float in JSON output ``data`` is written as ``null``; binary outputs
carry the raw IEEE values.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import ClientError, bad_request, quote

HEADER_LENGTH = "inference-header-content-length"
# Values per numpy/json call on big tensors: each such C call holds the GIL, so slicing the work
# lets the event loop thread in between slices (health answers while a big request decodes).
SLICE_VALUES = 1 << 13
# A JSON text this long is parsed with Python-level number hooks, for the same reason.
HOOKED_JSON_BYTES = 1 << 20
# Scores compared at a time when looking for ties of the classification threshold.
SCAN_CHUNK = 1 << 16
# Every digit as "0", to find a run of 19 digits with one ``in`` (a regex is 20x slower).
DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
LONG_DIGITS = b"0" * 19
# Bigger shapes are refused outright: numpy cannot even describe an empty array of them.
MAX_DIMS = 32
MAX_SHAPE_PRODUCT = 1 << 56

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

ONNX_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# By dtype (a dict look-up; ``dtype.name`` is computed in Python on every access), then by
# name for an equal dtype that is not the same object (another byte order, a subclass).
_NUMPY_DATATYPES: dict[Any, str] = {
    key: name for name, dtype in DATATYPES.items() if name != "BYTES" for key in (dtype, dtype.name)
}
# numpy kinds a JSON list may hold for each target kind: no silent float -> int truncation.
_JSON_KINDS: dict[str, str] = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_NAMES: dict[str, str] = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "S": "strings",
    "O": "values that are not all numbers",
}


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client wants, and how: binary or JSON, optionally top-k classification."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """A decoded infer request; ``outputs`` is None when the client wants every output."""

    id: Any
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None
    binary_output: bool


@dataclass
class InputHead:
    """One input as the request's JSON describes it, before its tensor is built."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    spec: dict[str, Any]
    binary_size: int | None

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class RequestHeader:
    """A request's JSON part, checked; ``binary_start`` is where its binary section begins."""

    id: Any
    inputs: list[InputHead]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    binary_start: int


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (object and unicode arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    dtype = array.dtype
    found = _NUMPY_DATATYPES.get(dtype)
    return found if found is not None else _NUMPY_DATATYPES[dtype.name]


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """Validate ``Inference-Header-Content-Length`` against the body it describes."""
    if value is None:
        return None
    length = plain_integer(value)
    if length is None:
        raise bad_request(
            "the Inference-Header-Content-Length header must be an integer (ASCII digits only),"
            f" got {quote(value)}"
        )
    if not 0 < length <= body_size:
        raise bad_request(
            f"the Inference-Header-Content-Length header says {length} bytes of JSON but the"
            f" body has {body_size} bytes"
        )
    return length


def plain_integer(text: str) -> int | None:
    """The value of a length header: 1 to 18 ASCII digits, nothing else (``int()`` would also
    take ``1_2``, `` 12``, ``+12`` and non-ASCII digits)."""
    if 0 < len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return None


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an infer request body: JSON header, then the binary section when there is one."""
    return build_request(read_header(body, header_length), body)


def read_header(body: bytes, header_length: int | None) -> RequestHeader:
    """The JSON part of a request, checked, with every input's name, datatype and shape: what
    the request will cost can be estimated from it before any tensor is built."""
    header = _load_json(body if header_length is None else body[:header_length])
    if not isinstance(header, dict):
        raise bad_request('the request must be a JSON object with an "inputs" list')
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request('the request needs an "inputs" list with at least one tensor')
    params = _parameters(header.get("parameters"), "the request")
    binary_output = _flag(params, "binary_data_output", "the request")
    heads = [_input_head(spec, index) for index, spec in enumerate(raw_inputs)]
    seen: set[str] = set()
    for head in heads:
        if head.name in seen:
            raise bad_request(f"input {quote(head.name)} appears more than once in the request")
        seen.add(head.name)
    return RequestHeader(
        id=header.get("id"),
        inputs=heads,
        outputs=_requested_outputs(header.get("outputs"), binary_output),
        binary_output=binary_output,
        binary_start=_check_binary_section(heads, header_length, len(body)),
    )


def build_request(header: RequestHeader, body: bytes) -> InferRequest:
    """The request's tensors: JSON data converted, binary data viewed in place."""
    inputs: dict[str, np.ndarray] = {}
    offset = header.binary_start
    for head in header.inputs:
        if head.binary_size is None:
            inputs[head.name] = _from_json(head)
        else:
            inputs[head.name] = _from_binary(head, body, offset)
            offset += head.binary_size
    return InferRequest(
        id=header.id,
        inputs=inputs,
        datatypes={head.name: head.datatype for head in header.inputs},
        outputs=header.outputs,
        binary_output=header.binary_output,
    )


def encode_response(
    model_name: str,
    model_version: str,
    request_id: Any,
    tensors: list[tuple[RequestedOutput, np.ndarray]],
    max_json_elements: int | None = None,
) -> tuple[bytes, dict[str, str], str]:
    """Body, extra headers and media type of an infer response (binary parts after the JSON).

    JSON ``data`` is written slice by slice and spliced into the header, so no single call
    holds the GIL for a whole tensor; more than ``max_json_elements`` JSON values is a 413.
    """
    in_json = sum(array.size for requested, array in tensors if not requested.binary)
    if max_json_elements is not None and in_json > max_json_elements:
        raise ClientError(
            413,
            f"the outputs hold {in_json} values to encode as JSON, more than this server's limit"
            f" of {max_json_elements} (--max-json-elements); ask for them as binary data"
            ' (output parameter "binary_data": true, or "binary_data_output": true) or send'
            " fewer rows",
        )
    outputs: list[bytes] = []
    parts: list[Any] = []
    for requested, array in tensors:
        datatype = datatype_of(array)
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if requested.binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            parts.append(raw)
            outputs.append(strict_json(entry))
        else:
            data = b",".join(_json_slices(array, datatype))
            outputs.append(b"".join([strict_json(entry)[:-1], b',"data":[', data, b"]}"]))
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    header_bytes = b"".join([strict_json(header)[:-1], b',"outputs":[', b",".join(outputs), b"]}"])
    if not parts:
        return header_bytes, {}, "application/json"
    headers = {"Inference-Header-Content-Length": str(len(header_bytes))}
    return b"".join([header_bytes, *parts]), headers, "application/octet-stream"


def strict_json(value: Any) -> bytes:
    """Compact JSON that never holds a bare ``NaN``/``Infinity``: such floats become ``null``.

    orjson writes them so; what it refuses (an integer beyond 64 bits, a lone surrogate) goes
    through ``json``, where ``allow_nan=False`` makes the common case cost nothing extra and
    only a document that really holds a non-finite float is rebuilt with ``null`` in its place.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def check_scores(array: np.ndarray) -> None:
    """Refuse what the classification extension cannot rank: it needs numbers in 1-D or 2-D."""
    if array.ndim not in (1, 2) or array.dtype.kind not in "iuf":
        raise bad_request(
            "classification needs a numeric output of shape [classes] or [batch, classes];"
            f" this one is {datatype_of(array)} {list(array.shape)}"
        )


def classify(array: np.ndarray, count: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: the top ``count`` classes as ``"score:index[:label]"``."""
    check_scores(array)
    rows = array.reshape(1, -1) if array.ndim == 1 else array
    count = min(count, rows.shape[1])
    top = top_indices(rows, count)
    result = np.empty(top.shape, dtype=object)
    for r, indices in enumerate(top):
        for c, index in enumerate(indices):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels and int(index) < len(labels):
                text += f":{labels[int(index)]}"
            result[r, c] = text
    return result[0] if array.ndim == 1 else result


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """The indices of the ``count`` highest ``scores`` (1-D, or each row of 2-D), highest
    first; ties in index order, NaN last. Few classes are sorted whole, all rows at once;
    among many, a partition finds the threshold in linear time and only the few above it are
    sorted (a full sort of a 10-million-class output took 1.5 s of a worker thread). The
    memory it takes stays within what ``limits.output_cost`` reserves for a full sort."""
    size = scores.shape[-1]
    if (
        count * 8 >= size
        or not scores.size
        or (scores.dtype.kind == "f" and np.isnan(scores.max()))
    ):
        return _descending(scores)[..., :count]
    if scores.ndim == 2:
        return np.stack([top_indices(row, count) for row in scores])
    threshold = np.partition(scores, size - count)[size - count]
    above = np.flatnonzero(scores > threshold)  # fewer than ``count``
    ties = _first_equal(scores, threshold, count - len(above))
    chosen = np.sort(np.concatenate([above, ties]))
    return chosen[_descending(scores[chosen])]


def _descending(scores: np.ndarray) -> np.ndarray:
    """A stable argsort along the last axis, highest first: of keys that reverse the order exactly (``-x`` would
    wrap unsigned integers and the lowest signed one; ``~x`` and ``max - x`` do not)."""
    if scores.dtype.kind == "u":
        keys = np.iinfo(scores.dtype).max - scores
    elif scores.dtype.kind == "i":
        keys = ~scores
    else:
        keys = -scores  # NaN stays NaN, which sorts last
    return np.argsort(keys, kind="stable")


def _first_equal(scores: np.ndarray, value: Any, wanted: int) -> np.ndarray:
    """The first ``wanted`` indices holding ``value``, scanning in chunks (a million equal
    scores would otherwise make a million indices)."""
    found: list[np.ndarray] = []
    for start in range(0, len(scores), SCAN_CHUNK):
        hits = np.flatnonzero(scores[start : start + SCAN_CHUNK] == value)[:wanted] + start
        found.append(hits)
        wanted -= len(hits)
        if wanted <= 0:
            break
    return np.concatenate(found)


def _load_json(data: bytes) -> Any:
    """The parsed document: orjson for the common case; ``json`` for what orjson refuses (the
    ``NaN``/``Infinity`` tokens, text that is not JSON: its errors say where), for long texts
    (see HOOKED_JSON_BYTES) and for texts with 19 digits in a row: orjson would read an integer
    beyond 64 bits as a float, ``json`` keeps it an integer (refused later by its range)."""
    if len(data) <= HOOKED_JSON_BYTES and LONG_DIGITS not in data.translate(DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    hooks: dict[str, Any] = {}
    if len(data) > HOOKED_JSON_BYTES:
        # Python-level hooks: json.loads then passes through the interpreter loop once per
        # number, where it hands the GIL over to the event loop thread when that one waits.
        hooks = {"parse_float": _parse_float, "parse_int": _parse_int}
    try:
        return json.loads(data, **hooks)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("the request JSON is nested too deeply") from None


def _parse_float(text: str) -> float:
    return float(text)


def _parse_int(text: str) -> int:
    return int(text)


def _as_array(data: Any, dtype: Any = None) -> np.ndarray:
    """``np.array(data, dtype)``, built from slices of a long outer list (see SLICE_VALUES)."""
    if not isinstance(data, list) or not data:
        return np.array(data, dtype=dtype)
    if len(data) == 1:
        return _as_array(data[0], dtype)[np.newaxis]
    width = len(data[0]) if isinstance(data[0], list) else 1
    step = max(1, SLICE_VALUES // max(width, 1))
    if step >= len(data):
        return np.array(data, dtype=dtype)
    return np.concatenate(
        [np.array(data[i : i + step], dtype=dtype) for i in range(0, len(data), step)]
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f'"parameters" of {where} must be a JSON object')
    return value


def _flag(params: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f'parameter "{key}" of {where} must be true or false, got {quote(value)}')
    return value


def _input_head(spec: Any, index: int) -> InputHead:
    if not isinstance(spec, dict):
        raise bad_request(f"inputs[{index}] must be a JSON object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f'inputs[{index}] needs a "name" string')
    where = f"input {quote(name)}"
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise bad_request(
            f"{where} has datatype {quote(datatype)}; supported datatypes are"
            f" {', '.join(DATATYPES)}"
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad_request(
            f'{where} needs a "shape" list of non-negative integers, got {quote(shape)}'
        )
    if len(shape) > MAX_DIMS or math.prod(d for d in shape if d) > MAX_SHAPE_PRODUCT:
        raise bad_request(
            f"{where} has shape {quote(shape)}: at most {MAX_DIMS} dimensions whose non-zero"
            f" sizes multiply to at most 2**56"
        )
    params = _parameters(spec.get("parameters"), where)
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad_request(
                f"binary_data_size of {where} must be a non-negative integer, got {quote(size)}"
            )
        if "data" in spec:
            raise bad_request(f'{where} has both "data" and a binary_data_size parameter; give one')
    elif "data" not in spec:
        raise bad_request(f'{where} has neither "data" nor a binary_data_size parameter')
    return InputHead(name, datatype, tuple(shape), spec, size)


def _check_binary_section(heads: list[InputHead], header_length: int | None, body_size: int) -> int:
    """Check the declared binary sizes add up to the binary section; return where it starts."""
    declared = sum(head.binary_size or 0 for head in heads)
    if header_length is None:
        binary_inputs = [head.name for head in heads if head.binary_size is not None]
        if binary_inputs:
            raise bad_request(
                f"inputs {binary_inputs} declare binary_data_size but the request has no"
                " Inference-Header-Content-Length header saying where the binary data starts"
            )
        return body_size
    available = body_size - header_length
    if declared != available:
        problem = "shorter" if available < declared else "longer"
        raise bad_request(
            f"the binary section is {problem} than declared: it holds {available} bytes but the"
            f" inputs' binary_data_size add up to {declared}"
        )
    return header_length


def _element_count(head: InputHead) -> int:
    return math.prod(head.shape)


def _from_binary(head: InputHead, body: bytes, offset: int) -> np.ndarray:
    count = _element_count(head)
    size = head.binary_size or 0
    if head.datatype == "BYTES":
        elements = _split_bytes(head.name, body, offset, size)
        if len(elements) != count:
            raise bad_request(
                f"input {quote(head.name)} has shape {list(head.shape)} ({count} elements) but its"
                f" binary data holds {len(elements)} BYTES elements"
            )
        return _object_array(elements, head.shape)
    dtype = DATATYPES[head.datatype]
    expected = count * dtype.itemsize
    if size != expected:
        raise bad_request(
            f"input {quote(head.name)} has shape {list(head.shape)} of {head.datatype}, which is"
            f" {expected} bytes, but its binary_data_size is {size}"
        )
    if count == 0:
        return np.empty(head.shape, dtype=dtype)
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(head.shape)
    return array if array.flags.aligned else array.copy()


def _split_bytes(name: str, body: bytes, offset: int, size: int) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then that many UTF-8 bytes."""
    elements: list[str] = []
    position, end = offset, offset + size
    while position < end:
        if position + 4 > end:
            raise bad_request(f"the binary data of input {quote(name)} ends inside a length prefix")
        (length,) = struct.unpack_from("<I", body, position)
        position += 4
        if position + length > end:
            raise bad_request(
                f"a BYTES element of input {quote(name)} declares {length} bytes but only"
                f" {end - position} remain"
            )
        try:
            elements.append(body[position : position + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise bad_request(
                f"a BYTES element of input {quote(name)} is not valid UTF-8"
            ) from None
        position += length
    return elements


def _from_json(head: InputHead) -> np.ndarray:
    data = head.spec["data"]
    count = _element_count(head)
    if head.datatype == "BYTES":
        elements = _flatten_strings(head.name, data)
        if len(elements) != count:
            raise bad_request(
                f"input {quote(head.name)} has shape {list(head.shape)} ({count} elements) but its"
                f' "data" holds {len(elements)}'
            )
        _check_unicode(head.name, elements)
        return _object_array(elements, head.shape)
    try:
        array = _as_array(data)
    except (ValueError, TypeError) as exc:
        raise bad_request(
            f'the "data" of input {quote(head.name)} must be a flat or evenly nested list of numbers'
            f" ({exc})"
        ) from None
    target = DATATYPES[head.datatype]
    if array.dtype.kind == "O" and target.kind == "f" and _numbers_or_null(data):
        # null is a missing value: NaN, refused later unless the model accepts it in this input.
        try:
            array = _as_array(data, np.float64)
        except OverflowError:
            raise bad_request(
                f"input {quote(head.name)} holds values outside the {head.datatype} range"
            ) from None
    if target.kind in "iu" and array.dtype.kind in "fO" and _all_integers(data):
        # numpy turns a mix of int64 and uint64-only values into float64 (or object for
        # values beyond 64 bits): convert exactly, letting numpy refuse what cannot fit.
        try:
            array = _as_array(data, target)
        except OverflowError:
            raise bad_request(
                f"input {quote(head.name)} holds values outside the {head.datatype} range"
            ) from None
    if array.size and array.dtype.kind not in _JSON_KINDS[target.kind]:
        if target.kind != "f" and array.dtype.kind == "O" and _holds_null(data):
            raise bad_request(
                f'input {quote(head.name)} is {head.datatype} but its "data" holds null; only float'
                " inputs (FP16, FP32, FP64) take null, as a missing value"
            )
        found = _KIND_NAMES.get(array.dtype.kind, "other values")
        raise bad_request(
            f'input {quote(head.name)} is {head.datatype} but its "data" holds {found}'
        )
    if array.size != count:
        raise bad_request(
            f"input {quote(head.name)} has shape {list(head.shape)} ({count} elements) but its"
            f' "data" holds {array.size}'
        )
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise bad_request(
                f"input {quote(head.name)} holds values outside the {head.datatype} range"
                f" [{info.min}, {info.max}]"
            )
    return array.astype(target, copy=False).reshape(head.shape)


def _numbers_or_null(data: Any) -> bool:
    if isinstance(data, list):
        return all(_numbers_or_null(item) for item in data)
    return data is None or (isinstance(data, (int, float)) and not isinstance(data, bool))


def _holds_null(data: Any) -> bool:
    if isinstance(data, list):
        return any(_holds_null(item) for item in data)
    return data is None


def _all_integers(data: Any) -> bool:
    if isinstance(data, list):
        return all(_all_integers(item) for item in data)
    return isinstance(data, int) and not isinstance(data, bool)


def _flatten_strings(name: str, data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if data is None:
        raise bad_request(
            f'input \'{name}\' is BYTES: its "data" holds null; send "" for a missing string'
        )
    if not isinstance(data, list):
        raise bad_request(f'input {quote(name)} is BYTES: its "data" must hold strings')
    flat: list[str] = []
    for item in data:
        flat.extend(_flatten_strings(name, item))
    return flat


def _check_unicode(name: str, elements: list[str]) -> None:
    """JSON escapes can make a lone surrogate (``"\\ud800"``), which has no UTF-8 form: onnxruntime
    would fail on it with a UnicodeEncodeError, so refuse it here, naming the input."""
    joined = "".join(elements)
    if joined.isascii():
        return
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            f"a BYTES element of input {quote(name)} is not valid Unicode: it holds a lone surrogate"
            " escape such as \\ud800"
        ) from None


def _object_array(elements: list[str], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise bad_request('"outputs" must be a list of {"name": ...} objects')
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, spec in enumerate(value):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request(f'outputs[{index}] must be an object with a "name" string')
        name = spec["name"]
        if name in seen:
            raise bad_request(f"output {quote(name)} is requested more than once")
        seen.add(name)
        params = _parameters(spec.get("parameters"), f"output {quote(name)}")
        binary = _flag(params, "binary_data", f"output {quote(name)}", binary_default)
        classes = params.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise bad_request(
                f"classification of output {quote(name)} must be a non-negative integer, got {quote(classes)}"
            )
        outputs.append(RequestedOutput(name, binary, classes))
    return outputs


def _to_binary(array: np.ndarray, datatype: str) -> memoryview:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return memoryview(b"".join(parts))
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return memoryview(contiguous.reshape(-1).view(np.uint8))


def _json_slices(array: np.ndarray, datatype: str) -> list[bytes]:
    """The comma-separated JSON values of ``array`` (flattened), SLICE_VALUES at a time."""
    flat = array.reshape(-1)
    slices = []
    for start in range(0, flat.size, SLICE_VALUES):
        chunk = flat[start : start + SLICE_VALUES]
        if datatype == "BYTES":
            values: list[Any] = [
                item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                for item in chunk
            ]
        else:
            values = chunk.tolist()
        slices.append(strict_json(values)[1:-1])
    return slices
