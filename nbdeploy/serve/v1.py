"""TF Serving / KServe V1 REST: ``POST /v1/models/{m}[/versions/{v}]:predict`` and the model
status and metadata routes, answered by the same data plane (batching, limits, metrics) as V2.

A predict body holds ``"instances"`` (row format: one item per row; for a model with several
inputs each item is an object of named inputs) or ``"inputs"`` (columnar: the tensor, or an
object of named tensors). JSON carries no datatypes, so every value is converted to the model
input's datatype with V2's rules (no silent float -> int truncation; ``null``/``NaN`` are missing
values where the model accepts them). A row given without the model's trailing dimension of 1
(a scalar per row for an input of shape ``[-1, 1]``, as tabular columns are) gets it added.
String inputs may be ``{"b64": "..."}`` (base64 of UTF-8 text).

The answer is ``{"predictions": ...}`` for rows (a list with one item per row: the value itself
for a model with one output, else an object of named outputs) and ``{"outputs": ...}`` for
columns (the tensor, or an object of named tensors), as TF Serving answers. Non-finite floats are
written as ``null`` (strict JSON; TF Serving writes ``NaN``).
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

import numpy as np

from .dataplane import Encoded, ServerState
from .errors import ClientError, bad_request, name_problems, quote
from .limits import JSON_VALUE_BYTES, Reservation, json_values, output_cost
from .model import ModelVersion
from .protocol import (
    InferRequest,
    InputHead,
    RequestedOutput,
    RequestHeader,
    _load_json,
    build_request,
    strict_json,
)
from .served import Served

SIGNATURE = "serving_default"
VERBS = ("predict",)
# Bytes per JSON input value once it is an array: a 64-bit staging copy, the typed array and
# its copy in a merged batch.
ARRAY_VALUE_BYTES = 8 + 8 + 8 + 1
TF_DATATYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}


def split_target(text: str) -> tuple[str, str | None]:
    """``"digits:predict"`` -> ``("digits", "predict")``; no verb -> ``(text, None)``."""
    name, colon, verb = text.rpartition(":")
    return (name, verb) if colon else (text, None)


def check_verb(method: str, verb: str | None) -> None:
    """GET the status (no verb), POST ``:predict``: anything else is refused."""
    if method == "GET" and verb is not None:
        raise ClientError(405, f"GET is not allowed on :{verb[:40]}; POST the request")
    if method == "POST" and verb is None:
        raise ClientError(405, "POST to /v1/models/<name>:predict (the model status is a GET)")
    if verb is not None and verb not in VERBS:
        raise ClientError(
            404,
            f"this server answers :predict only, not :{verb[:40]} (classify and regress need"
            " tf.Example inputs, which ONNX models do not take)",
        )


def version_status(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    """TF Serving's GetModelStatusResponse: every loaded version, or the one asked for."""
    model = state.lookup(name, version)
    versions = state.versions(name) if version is None else [model.version]
    return {
        "model_version_status": [
            {
                "version": str(number),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for number in versions
        ]
    }


def metadata(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    """TF Serving's GetModelMetadataResponse: the one signature, ``serving_default``."""
    model = state.lookup(name, version)

    def tensors(infos: list[Any]) -> dict[str, Any]:
        return {
            info.name: {
                "dtype": TF_DATATYPES[info.datatype],
                "tensor_shape": {
                    "dim": [{"size": str(dim), "name": ""} for dim in info.shape],
                    "unknown_rank": False,
                },
                "name": info.name,
            }
            for info in infos
        }

    signature = {
        "inputs": tensors(model.inputs),
        "outputs": tensors(model.outputs),
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }


async def respond(
    state: ServerState,
    served: Served,
    body: bytes,
    header_length: int | None,
    reservation: Reservation,
    *,
    routed: bool,
) -> Encoded:
    """Parse a predict body within the memory budget, run it on ``served`` and encode the
    predictions (the V1 counterpart of ``ServerState.respond``)."""
    if header_length is not None:
        raise bad_request(
            "the V1 predict API takes JSON only: drop the Inference-Header-Content-Length header"
            " (binary tensors: use /v2/models/<name>/infer)"
        )
    values = await reservation.work(len(body), json_values, body)
    limit = state.settings.max_json_elements
    if values > limit:
        raise ClientError(
            413,
            f"the request's JSON holds up to {values} values, more than this server's limit of"
            f" {limit} (--max-json-elements); send fewer rows per request, or binary tensors to"
            " /v2/models/<name>/infer",
        )
    parsing = len(body) + values * JSON_VALUE_BYTES
    reservation.resize(parsing, "parsing this request")
    document = await reservation.work(len(body), _load_json, body)
    model = served.model
    decoded, rows = await reservation.work(len(body), parse_predict, document, model)
    reservation.resize(
        parsing + values * ARRAY_VALUE_BYTES + _output_cost(model, decoded), "this request"
    )
    encode = functools.partial(_encode, rows, limit)
    return await state.infer(served, decoded, reservation, routed=routed, encode=encode)


def parse_predict(document: Any, model: ModelVersion) -> tuple[InferRequest, bool]:
    """The tensors of a predict request, and whether it came in the row format."""
    if not isinstance(document, dict):
        raise bad_request(
            'the request must be a JSON object with "instances" (row format) or "inputs"'
            " (columnar format)"
        )
    signature = document.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise bad_request(
            f"model '{model.name}' has one signature, {SIGNATURE!r}, not {quote(signature)}"
        )
    rows = "instances" in document
    if rows == ("inputs" in document):
        raise bad_request(
            'give either "instances" (row format) or "inputs" (columnar format)'
            + (", not both" if rows else "")
        )
    names = [info.name for info in model.inputs]
    if rows:
        columns = _columns_of_rows(document["instances"], names, model.name)
    else:
        columns = _columns(document["inputs"], names, model.name)
    infos = {info.name: info for info in model.inputs}
    heads = []
    for name, data in columns.items():
        info = infos.get(name)
        if info is None:
            raise bad_request(
                f"model '{model.name}' has no input {quote(name)}; its inputs are {names}"
            )
        if info.datatype == "BYTES":
            data = _unwrap_b64(name, data)
        shape = _nested_shape(data)
        if len(shape) == len(info.shape) - 1 and info.shape[-1] == 1:
            shape = (*shape, 1)  # a scalar per row for a [-1, 1] input
        heads.append(InputHead(name, info.datatype, shape, {"data": data}, None))
    header = RequestHeader(None, heads, None, binary_output=False, binary_start=0)
    return build_request(header, b""), rows


def _columns_of_rows(instances: Any, names: list[str], model: str) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise bad_request('"instances" must be a non-empty list, one item per row')
    named = [isinstance(item, dict) and not _is_b64(item) for item in instances]
    if not any(named):
        if len(names) != 1:
            raise bad_request(
                f"model '{model}' has {len(names)} inputs {names}: give each instance as an"
                f' object of named inputs, such as {{"{names[0]}": ...}}'
            )
        return {names[0]: instances}
    if not all(named):
        raise bad_request(
            '"instances" mixes objects of named inputs with plain values; give every row the'
            " same way"
        )
    expected = set(names)
    for index, item in enumerate(instances):
        if set(item) != expected:
            raise bad_request(
                f"instances[{index}] does not name the inputs of model '{model}', {names}"
                f" ({name_problems(names, list(item))})"
            )
    return {name: [item[name] for item in instances] for name in names}


def _columns(inputs: Any, names: list[str], model: str) -> dict[str, Any]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if not inputs:
            raise bad_request('"inputs" is an empty object; name the model\'s inputs in it')
        return inputs
    if len(names) != 1:
        raise bad_request(
            f"model '{model}' has {len(names)} inputs {names}: give \"inputs\" as an object"
            " of named tensors"
        )
    return {names[0]: inputs}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _unwrap_b64(name: str, data: Any) -> Any:
    """``{"b64": "..."}`` values of a string input as the text they encode."""
    if isinstance(data, list):
        return [_unwrap_b64(name, item) for item in data]
    if not _is_b64(data):
        return data
    encoded = data["b64"]
    if not isinstance(encoded, str):
        raise bad_request(f'a "b64" value of input {quote(name)} must be a string')
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise bad_request(
            f'a "b64" value of input {quote(name)} is not base64 of UTF-8 text'
        ) from None


def _nested_shape(data: Any) -> tuple[int, ...]:
    """The shape nested lists claim along their first items (ragged ones are refused later)."""
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return tuple(shape)


def _output_cost(model: ModelVersion, decoded: InferRequest) -> int:
    arrays = list(decoded.inputs.values())
    first = arrays[0].shape if arrays else ()
    rows = first[0] if first else 1
    outputs = [(info.datatype, info.shape, False, 0) for info in model.outputs]
    return output_cost(outputs, rows, sum(array.size for array in arrays))


def _encode(
    rows: bool,
    limit: int,
    model: ModelVersion,
    request_id: Any,
    wanted: list[RequestedOutput],
    results: dict[str, np.ndarray],
) -> Encoded:
    """``{"predictions": ...}`` (row format) or ``{"outputs": ...}`` (columnar format)."""
    arrays = {out.name: results[out.name] for out in wanted}
    count = sum(array.size for array in arrays.values())
    if count > limit:
        raise ClientError(
            413,
            f"the outputs hold {count} values to encode as JSON, more than this server's limit"
            f" of {limit} (--max-json-elements); send fewer rows, or ask"
            " /v2/models/<name>/infer for binary outputs",
        )
    values = {name: _plain(array) for name, array in arrays.items()}
    if not rows:
        only = len(values) == 1
        return _json({"outputs": next(iter(values.values())) if only else values})
    if len(values) == 1:
        return _json({"predictions": next(iter(values.values()))})
    sizes = {name: array.shape[0] if array.ndim else None for name, array in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise bad_request(
            f"the outputs of model '{model.name}' do not share their first dimension ({sizes}),"
            ' so they cannot be split into rows: send "inputs" (columnar format) instead of'
            ' "instances"'
        )
    (length,) = set(sizes.values())
    predictions = [{name: value[row] for name, value in values.items()} for row in range(length)]
    return _json({"predictions": predictions})


def _plain(array: np.ndarray) -> Any:
    """Nested lists of Python values (strings as text)."""
    if array.dtype.kind == "O":
        flat = [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _json(document: dict[str, Any]) -> Encoded:
    return strict_json(document), {}, "application/json"
