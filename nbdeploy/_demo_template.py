"""The live demo page of one nbdeploy deployment: input widgets, the V2 call, the top-k chart.

This file is copied verbatim into every generated demo notebook, so that the notebook is a
standalone, shareable file: it needs only the standard library, numpy, pillow and ipywidgets
(ipycanvas for the drawing pad, when installed) and never nbdeploy itself. ``nbdeploy.preprocess``
re-exports the preprocessing functions from here, so the page and Python callers agree exactly.
"""

import html
import http.client
import io
import json
import math
import time
import urllib.parse
from typing import Any

import numpy as np

PAD_SIZE = 192
PREVIEW_SIZE = 96

V2_DATATYPES = {
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
NUMPY_DTYPES = {v2: name for name, v2 in V2_DATATYPES.items()}

STYLE = """<style>
.nbd-result{font-family:system-ui,sans-serif;max-width:560px}
.nbd-prediction{font-size:1.3em;margin:4px 0 8px}
.nbd-row{display:flex;align-items:center;gap:8px;margin:3px 0}
.nbd-label{width:140px;text-align:right;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.nbd-track{flex:1;background:#eef1f5;border-radius:3px;height:18px}
.nbd-bar{background:#3b7dd8;height:18px;border-radius:3px}
.nbd-row.nbd-first .nbd-bar{background:#1f5fbf}
.nbd-pct{width:56px;font-variant-numeric:tabular-nums}
.nbd-latency{color:#555;margin-top:8px}
.nbd-error{color:#a40000;background:#fdecea;border:1px solid #f5c2c0;border-radius:4px;
padding:8px 10px;font-family:system-ui,sans-serif;max-width:560px}
.nbd-hint{color:#555;font-family:system-ui,sans-serif}
.nbd-range{color:#777;font-size:85%}
.nbd-scores{color:#555;font-size:90%;margin:0 0 6px}
</style>"""


class DemoError(Exception):
    """A problem with the input or the endpoint, worded for the person using the page."""


class EndpointUnreachable(DemoError):
    """Nothing answered at the endpoint URL (stopped, or moved by a redeploy)."""


def open_image(data: bytes, filename: str = "upload") -> Any:
    """Decode uploaded bytes with pillow, or say plainly that the file is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DemoError(
            f"could not read {filename!r} as an image ({len(data)} bytes):"
            " please upload a PNG, JPEG, GIF, BMP or WebP picture"
        ) from exc
    return image


def _flatten_alpha(image: Any, background: str | None) -> Any:
    """Put transparent pixels on the model's background colour before dropping alpha."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return image
    fill = (0, 0, 0, 255) if background == "dark" else (255, 255, 255, 255)
    base = Image.new("RGBA", image.size, fill)
    base.alpha_composite(image.convert("RGBA"))
    return base


def _border_brightness(gray: np.ndarray) -> float:
    """Median of the outermost pixels in [0, 1]: what the picture's background looks like."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border))


def apply_image_preprocessing(image: Any, spec: dict[str, Any]) -> np.ndarray:
    """Turn a PIL image into the model's input batch of one, as ``spec`` describes.

    Colour mode, resize (box filter when shrinking, so an upscaled image shrinks back exactly),
    inversion when the picture's background is the opposite of the training data's, scaling to
    the recorded value range (or mean/std), then the tensor layout and dtype.
    """
    from PIL import Image

    height, width = int(spec["height"]), int(spec["width"])
    channels = int(spec.get("channels", 1))
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if channels not in modes:
        raise DemoError(f"images with {channels} channels are not supported (1, 3 or 4)")
    image = _flatten_alpha(image, spec.get("background"))
    image = image.convert(modes[channels])
    shrinking = image.width >= width and image.height >= height
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    bands = [band.convert("F").resize((width, height), resample) for band in image.split()]
    pixels = np.stack([np.asarray(band, dtype=np.float32) for band in bands], axis=-1) / 255.0
    if channels == 1 and spec.get("background") in ("dark", "light"):
        full = np.asarray(image, dtype=np.float32) / 255.0
        looks_light = _border_brightness(full) > 0.5
        if looks_light != (spec["background"] == "light"):
            pixels = 1.0 - pixels
    mean, std = spec.get("mean"), spec.get("std")
    if mean is not None and std is not None:
        pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    else:
        low, high = spec.get("range") or (0.0, 1.0)
        pixels = float(low) + pixels * (float(high) - float(low))
    layout = spec.get("layout", "NCHW")
    if layout == "NCHW":
        array = pixels.transpose(2, 0, 1)[None]
    elif layout == "NHWC":
        array = pixels[None]
    elif layout == "NHW":
        array = pixels[:, :, 0][None]
    elif layout == "flat":
        array = pixels.reshape(1, -1)
    else:
        raise DemoError(f"unknown image layout {layout!r} (NCHW, NHWC, NHW or flat)")
    dtype = np.dtype(spec.get("dtype", "float32"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    return np.ascontiguousarray(array.astype(dtype))


def preview_png(array: np.ndarray, spec: dict[str, Any], size: int = PREVIEW_SIZE) -> bytes:
    """What the model sees, stretched to [0, 255] and upscaled with square pixels."""
    from PIL import Image

    height, width = int(spec["height"]), int(spec["width"])
    layout = spec.get("layout", "NCHW")
    pixels = np.asarray(array[0], dtype=np.float32)
    if layout == "NCHW":
        pixels = pixels.transpose(1, 2, 0)
    elif layout == "flat":
        pixels = pixels.reshape(height, width, -1)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[:, :, 0]
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if scaled.ndim == 3:
        scaled = scaled[:, :, :3]
    image = Image.fromarray(np.uint8(np.rint(scaled * 255)))
    scale = max(1, size // max(height, width))
    image = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _blank_png(dark: bool, size: int = PREVIEW_SIZE) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 0 if dark else 235).save(buffer, format="PNG")
    return buffer.getvalue()


def tabular_array(values: list[Any], spec: dict[str, Any]) -> np.ndarray:
    """One row of features as the model's ``[1, n]`` input, refusing blanks and non-numbers."""
    names = spec.get("feature_names") or [f"x{i}" for i in range(len(values))]
    expected = int(spec["features"])
    if len(values) != expected:
        raise DemoError(f"the model expects {expected} features; the form has {len(values)}")
    row = []
    for name, value in zip(names, values, strict=False):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DemoError(f"feature {name!r} must be a number; got {value!r}") from None
        if not math.isfinite(number):
            raise DemoError(f"feature {name!r} must be a finite number; got {value!r}")
        row.append(number)
    return np.asarray([row], dtype=np.dtype(spec.get("dtype", "float32")))


def tabular_columns(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The form's fields: the recorded columns, else one numeric field per matrix feature."""
    if spec.get("columns"):
        return list(spec["columns"])
    count = int(spec["features"])
    names = spec.get("feature_names") or [f"x{i}" for i in range(count)]
    dtype = spec.get("dtype", "float32")
    return [{"name": str(name), "dtype": dtype, "kind": "numeric"} for name in names]


def column_value(value: Any, column: dict[str, Any], accepts_nan: bool = False) -> Any:
    """One form value as the column's type; blank numbers are missing (NaN) where the model
    accepts that, and a readable error where it does not."""
    name, kind = column["name"], column.get("kind", "numeric")
    if kind == "categorical":
        return "" if value is None else str(value)
    if kind == "boolean":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    text = "" if value is None else str(value).strip()
    integer = np.dtype(column.get("dtype", "float32")).kind in "iu"
    if not text or text.lower() == "nan":
        if accepts_nan and not integer:
            return float("nan")
        raise DemoError(
            f"column {name!r} needs a number (this model does not accept missing values)"
        )
    try:
        number = float(text)
    except ValueError:
        raise DemoError(f"column {name!r} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise DemoError(f"column {name!r} must be a finite number; got {value!r}")
    if integer:
        if number != int(number):
            raise DemoError(f"column {name!r} takes whole numbers; got {value!r}")
        return int(number)
    return number


def tabular_inputs(
    values: list[Any], spec: dict[str, Any], accepts_nan: Any = ()
) -> dict[str, np.ndarray]:
    """One row of the form as the request's inputs: ``{input: [1, n]}`` for a one-matrix model,
    ``{column: [1, 1]}`` per column for a DataFrame model (strings as BYTES)."""
    if spec.get("layout") != "columns":
        return {spec["input"]: tabular_array(values, spec)}
    columns = tabular_columns(spec)
    if len(values) != len(columns):
        raise DemoError(f"the model expects {len(columns)} columns; the form has {len(values)}")
    missing_ok = set(accepts_nan or ())
    inputs = {}
    for column, value in zip(columns, values, strict=True):
        name = column.get("input", column["name"])
        cell = column_value(value, column, name in missing_ok)
        dtype = object if column["dtype"] == "str" else np.dtype(column["dtype"])
        rank = len(column.get("shape") or [-1, 1])
        inputs[name] = np.array([cell], dtype=dtype).reshape((1,) * rank)
    return inputs


def text_array(text: str, spec: dict[str, Any]) -> np.ndarray:
    """Text as the model's input: a string tensor, or token ids padded to the fixed length."""
    text = (text or "").strip()
    if not text:
        raise DemoError("type some text first")
    rank = max(1, len(spec.get("shape") or [-1]))
    if spec.get("encoding", "string") == "string":
        return np.array([text], dtype=object).reshape((1,) * rank)
    try:
        ids = [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise DemoError(
            "this model takes token ids: enter whole numbers separated by spaces, e.g. 12 7 431"
        ) from None
    length = spec.get("max_length")
    if length:
        ids = (ids + [0] * int(length))[: int(length)]
    return np.asarray([ids], dtype=np.dtype(spec.get("dtype", "int64")))


def json_inputs(text: str, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Parse the JSON editor: ``{input name: nested list}`` (or ``{"shape": [...], "fill": v}``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DemoError(
            f"the request is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    expected = [spec["name"] for spec in inputs]
    if not isinstance(data, dict):
        raise DemoError(f"expected a JSON object with the inputs {expected}")
    missing = [name for name in expected if name not in data]
    if missing:
        raise DemoError(f"the JSON has no value for input(s) {missing}; expected {expected}")
    arrays = {}
    for spec in inputs:
        value = data[spec["name"]]
        dtype = object if spec["dtype"] == "str" else np.dtype(spec["dtype"])
        try:
            if isinstance(value, dict) and "shape" in value:
                array = np.full(value["shape"], value.get("fill", 0), dtype=dtype)
            else:
                array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise DemoError(
                f"input {spec['name']!r} is not a {spec['dtype']} array: {exc}"
            ) from None
        shape = list(spec["shape"])
        fits = array.ndim == len(shape) and all(
            want < 0 or want == got for want, got in zip(shape, array.shape, strict=True)
        )
        if shape and not fits:
            raise DemoError(
                f"input {spec['name']!r} must have shape {shape} (-1: any size);"
                f" got {list(array.shape)}"
            )
        arrays[spec["name"]] = array
    return arrays


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("error") or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")[:500]


class _EndpointConnection(http.client.HTTPConnection):
    """Straight to the endpoint (no proxy from the environment sees the token), and, where
    nbdeploy is installed, only once the process on the port proved it holds the token."""

    def __init__(self, host: str, port: int | None, timeout: float, token: str | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self._token = token

    def connect(self) -> None:
        super().connect()
        if not self._token or self.sock is None:
            return
        try:
            from nbdeploy.client import prove_identity_on_socket
        except ImportError:
            return
        try:
            prove_identity_on_socket(self.sock, self.host, self.port, self._token, None)
        except Exception as exc:
            raise _NotProven(str(exc)) from None


class _NotProven(ConnectionError):
    """The process on the port could not prove it holds TOKEN: nothing was sent to it."""


def infer(
    url: str,
    token: str | None,
    model: str,
    inputs: dict[str, np.ndarray],
    timeout: float = 30.0,
) -> tuple[dict[str, np.ndarray], float]:
    """One Open Inference Protocol (V2) JSON request; returns the outputs and the latency in ms."""
    entries = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype.kind in "OUS" else V2_DATATYPES.get(array.dtype.name)
        if datatype is None:
            raise DemoError(f"input {name!r} has dtype {array.dtype}, which V2 cannot carry")
        data = (
            [str(item) for item in array.reshape(-1)]
            if datatype == "BYTES"
            else array.reshape(-1).tolist()
        )
        entries.append(
            {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}
        )
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    parsed = urllib.parse.urlsplit(url)
    connection = _EndpointConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout, token)
    started = time.perf_counter()
    try:
        connection.request(
            "POST",
            f"{parsed.path.rstrip('/')}/v2/models/{model}/infer",
            body=json.dumps({"inputs": entries}).encode(),
            headers=headers,
        )
        response = connection.getresponse()
        payload = response.read()
    except _NotProven as exc:
        raise DemoError(
            f"{exc}: set TOKEN at the top of the demo notebook to the deployment's token"
            " (`nbdeploy token NAME`), or check that the deployment still runs (`nbdeploy ls`)"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointUnreachable(
            f"cannot reach the endpoint at {url} ({exc}); is the deployment still running?"
            " (`nbdeploy ls`)"
        ) from None
    finally:
        connection.close()
    if response.status >= 400:
        message = _error_text(payload)
        if response.status == 401:
            message += " (set TOKEN at the top of the demo notebook to the deployment's token)"
        raise DemoError(f"the endpoint answered HTTP {response.status}: {message}")
    latency_ms = (time.perf_counter() - started) * 1000.0
    outputs = {}
    for out in json.loads(payload).get("outputs", []):
        dtype = object if out["datatype"] == "BYTES" else NUMPY_DTYPES.get(out["datatype"])
        outputs[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    return outputs, latency_ms


def class_probabilities(scores: np.ndarray) -> np.ndarray | None:
    """Probabilities of the first row when nothing records what the output is (older
    deployments): kept when they look like probabilities, else softmax/sigmoid."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim == 0 or values.size == 0:
        return None
    row = values.reshape(values.shape[0], -1)[0] if values.ndim > 1 else values
    if not np.all(np.isfinite(row)):
        return None
    if row.size == 1:
        p = float(row[0]) if 0.0 <= row[0] <= 1.0 else 1.0 / (1.0 + math.exp(-float(row[0])))
        return np.array([1.0 - p, p])
    if np.all(row >= 0) and np.all(row <= 1) and abs(row.sum() - 1.0) < 0.02:
        return row  # int8 outputs step by 1/255: their sum can be off by a few thousandths
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def _first_row(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    return array.reshape(array.shape[0], -1)[0] if array.ndim > 1 else array.reshape(-1)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value)


def class_names(labels: Any, recorded: Any, count: int) -> list[str]:
    """Names of ``count`` classes in column order: the labels given at deploy, else the classes
    the export recorded, else 0, 1, ..."""
    for names in (labels, recorded):
        if names and len(names) == count:
            return [str(n) for n in names]
    return [str(i) for i in range(count)]


def named_label(label: str, recorded: Any, names: list[str]) -> str:
    """A label output's value under the deploy's class names: with classes ``["0", "1"]``
    recorded and labels ``["malignant", "benign"]`` given, ``"1"`` reads ``"benign"``."""
    recorded = [str(c) for c in recorded or []]
    if label in names or label not in recorded or len(recorded) != len(names):
        return label
    return names[recorded.index(label)]


def _recorded(demo: dict[str, Any], outputs: dict[str, np.ndarray], kind: str) -> str | None:
    """The first output the export recorded as ``kind`` that the endpoint returned."""
    record = demo.get("outputs") or {}
    return next(
        (n for n, info in record.items() if info.get("kind") == kind and n in outputs), None
    )


def read_prediction(outputs: dict[str, np.ndarray], demo: dict[str, Any]) -> dict[str, Any]:
    """What the first row's answer means, from what the export recorded about each output.

    Returns ``label`` (the predicted class or value, as text), ``ranked`` (every class with its
    probability, highest first), ``scores`` (``"probabilities"`` when shown as the endpoint
    returned them, ``"softmax of the logits"`` / ``"sigmoid of the logit"`` when the model
    returns scores) and ``probability`` (that of the label). Probabilities are never
    renormalised; without a record (older deployments) it falls back to looking at the values.
    """
    if not demo.get("outputs"):
        ranked = ranked_labels(outputs, demo, top_k=None)
        return {
            "label": ranked[0][0] if ranked else None,
            "ranked": ranked,
            "scores": "probabilities" if ranked else None,
            "probability": ranked[0][1] if ranked else None,
        }
    record = demo["outputs"]
    result: dict[str, Any] = {"label": None, "ranked": [], "scores": None, "probability": None}
    name = _recorded(demo, outputs, "probabilities") or _recorded(demo, outputs, "logits")
    if name is not None:
        row = _first_row(outputs[name]).astype(np.float64)
        if record[name]["kind"] == "probabilities":
            probabilities = np.array([1.0 - row[0], row[0]]) if row.size == 1 else row
            result["scores"] = "probabilities"
        elif row.size == 1:
            p = 1.0 / (1.0 + math.exp(-float(row[0])))
            probabilities, result["scores"] = np.array([1.0 - p, p]), "sigmoid of the logit"
        else:
            shifted = np.exp(row - row.max())
            probabilities, result["scores"] = shifted / shifted.sum(), "softmax of the logits"
        classes = class_names(demo.get("labels"), record[name].get("classes"), probabilities.size)
        order = np.argsort(-probabilities, kind="stable")
        result["ranked"] = [(classes[i], float(probabilities[i])) for i in order]
    label_name = _recorded(demo, outputs, "label")
    if label_name is not None:
        label = _text(_first_row(outputs[label_name])[0])
        if name is not None:
            label = named_label(label, record[label_name].get("classes"), classes)
        result["label"] = label
    elif result["ranked"]:
        result["label"] = result["ranked"][0][0]
    else:
        value_name = _recorded(demo, outputs, "value")
        if value_name is not None:
            values = _first_row(outputs[value_name])
            result["label"] = ", ".join(_text(v) for v in values[:8]) + (
                ", …" if values.size > 8 else ""
            )
    if result["label"] is not None:
        result["probability"] = dict(result["ranked"]).get(result["label"])
    return result


def ranked_labels(
    outputs: dict[str, np.ndarray], demo: dict[str, Any], top_k: Any = "demo"
) -> list[tuple[str, float]]:
    """The top-k (label, probability) pairs of the demo's class output; empty if it has none."""
    top = int(demo.get("top_k", 5)) if top_k == "demo" else top_k
    if demo.get("outputs"):
        return read_prediction(outputs, demo)["ranked"][:top]
    name = demo.get("output") or next(iter(outputs), None)
    if name not in outputs or outputs[name].dtype.kind not in "fiub":
        return []
    probabilities = class_probabilities(outputs[name])
    if probabilities is None:
        return []
    labels = demo.get("labels") or []
    if len(labels) != probabilities.size:
        labels = [str(i) for i in range(probabilities.size)]
    order = np.argsort(-probabilities, kind="stable")[:top]
    return [(str(labels[i]), float(probabilities[i])) for i in order]


def percent(p: float) -> str:
    """How the page prints a probability (tests compare the endpoint's answer with this)."""
    return f"{100 * p:.1f}%"


def result_html(
    ranked: list[tuple[str, float]],
    latency_ms: float,
    outputs: dict[str, np.ndarray],
    *,
    label: str | None = None,
    probability: float | None = None,
    scores: str | None = None,
) -> str:
    """The prediction, a bar chart of the top-k labels, and the request latency.

    ``label`` is the predicted class when the endpoint returns one (else the top bar's);
    ``scores`` says what the bars are (the endpoint's probabilities, or a softmax of logits).
    """
    latency = (
        f'<div class="nbd-latency">latency <span class="nbd-latency-ms">{latency_ms:.1f}</span>'
        " ms (HTTP round trip)</div>"
    )
    if label is None and ranked:
        label, probability = ranked[0]
    if label is None:
        shown = {name: np.asarray(v).tolist() for name, v in outputs.items()}
        text = html.escape(json.dumps(shown, default=_text)[:2000])
        return f'{STYLE}<div class="nbd-result"><pre class="nbd-raw">{text}</pre>{latency}</div>'
    share = (
        f' (<span class="nbd-top1-p" title="{probability!r}">{percent(probability)}</span>)'
        if probability is not None
        else ""
    )
    rows = "".join(
        f'<div class="nbd-row{" nbd-first" if i == 0 else ""}">'
        f'<span class="nbd-label" title="{html.escape(name)}">{html.escape(name)}</span>'
        f'<div class="nbd-track"><div class="nbd-bar" style="width:{100 * p:.1f}%"></div></div>'
        f'<span class="nbd-pct" title="{p!r}">{percent(p)}</span></div>'
        for i, (name, p) in enumerate(ranked)
    )
    note = (
        f'<div class="nbd-scores">{html.escape(scores)}'
        f"{' as the endpoint returned them' if scores == 'probabilities' else ''}</div>"
        if scores and ranked
        else ""
    )
    return (
        f'{STYLE}<div class="nbd-result"><div class="nbd-prediction">Prediction: '
        f'<b class="nbd-top1">{html.escape(label)}</b>{share}</div>'
        f'{note}<div class="nbd-bars">{rows}</div>{latency}</div>'
    )


def error_html(message: str) -> str:
    return f'{STYLE}<div class="nbd-error">{html.escape(message)}</div>'


def _describe_image(spec: dict[str, Any]) -> str:
    colour = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(int(spec.get("channels", 1)), "")
    scaling = (
        "normalised with the training mean/std"
        if spec.get("mean") is not None
        else f"scaled to {list(spec.get('range') or [0, 1])}"
    )
    return f"resized to {spec['width']}×{spec['height']} {colour}, {scaling}"


def _rediscover(model: str) -> tuple[str, str | None] | None:
    """Where the deployment lives now, when nbdeploy is installed here (after a redeploy)."""
    try:
        import nbdeploy

        endpoint = nbdeploy.get(model)
    except Exception:
        return None
    return endpoint.url, endpoint.token


def _field_value(column: dict[str, Any], box: Any, value: Any) -> Any:
    """What a form field shows for one value of an example row."""
    kind = column.get("kind", "numeric")
    if kind == "boolean":
        return bool(value)
    if kind == "categorical":
        text = "" if value is None else str(value)
        options = [option[1] for option in getattr(box, "options", ())]
        if options and text not in options:
            return box.value
        return text
    if value is None:
        return ""
    if np.dtype(column.get("dtype", "float32")).kind in "iu":
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


class DemoApp:
    """The page: an input area chosen by the model's input kind, a Predict button, the result."""

    def __init__(self, url: str, token: str | None, model: str, demo: dict[str, Any]) -> None:
        import ipywidgets as w

        self.url, self.token, self.model, self.demo = url, token, model, demo
        self.w = w
        self.upload: Any = None
        self.pad: Any = None
        self.fields: list[Any] = []
        self.examples_picker: Any = None
        self.output = w.HTML().add_class("nbd-output")
        self.predict_button = w.Button(
            description="Predict", button_style="primary", icon="play"
        ).add_class("nbd-predict")
        self.predict_button.on_click(self.predict)
        kind = demo.get("kind", "tensor")
        builders = {
            "image": self._image_input,
            "tabular": self._tabular_input,
            "text": self._text_input,
        }
        self.input_area, self.read_input = builders.get(kind, self._json_input)()
        self.widget = w.VBox(
            [self.input_area, self.predict_button, self.output],
            layout=w.Layout(gap="10px", padding="4px"),
        ).add_class("nbd-demo")

    def predict(self, _button: Any = None) -> None:
        self.predict_button.disabled = True
        self.output.value = '<div class="nbd-hint nbd-busy">asking the model…</div>'
        try:
            inputs = self.read_input()
            outputs, latency_ms = self._call(inputs)
            answer = read_prediction(outputs, self.demo)
            self.output.value = result_html(
                answer["ranked"][: int(self.demo.get("top_k", 5))],
                latency_ms,
                outputs,
                label=answer["label"],
                probability=answer["probability"],
                scores=answer["scores"],
            )
        except DemoError as exc:
            self.output.value = error_html(str(exc))
        except Exception as exc:
            self.output.value = error_html(f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.predict_button.disabled = False

    def _call(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        try:
            return infer(self.url, self.token, self.model, inputs)
        except EndpointUnreachable:
            moved = _rediscover(self.model)
            if moved is None or moved[0] == self.url:
                raise
            self.url, self.token = moved
            return infer(self.url, self.token, self.model, inputs)

    def _hint(self, text: str) -> Any:
        return self.w.HTML(f'<div class="nbd-hint">{html.escape(text)}</div>')

    def _image_input(self) -> tuple[Any, Any]:
        w, spec = self.w, self.demo["preprocessing"]
        state: dict[str, Any] = {"image": None, "error": None}
        preview = w.Image(
            value=_blank_png(spec.get("background") == "dark"),
            format="png",
            layout=w.Layout(width=f"{PREVIEW_SIZE}px"),
        )
        preview.add_class("nbd-preview")
        upload = w.FileUpload(accept="image/*", multiple=False, description="Upload image")
        upload.add_class("nbd-upload")

        def show(image: Any) -> None:
            state.update(image=image, error=None)
            preview.value = preview_png(apply_image_preprocessing(image, spec), spec)
            self.output.value = ""

        def on_upload(change: dict[str, Any]) -> None:
            if not change["new"]:
                return
            item = change["new"][0]
            name = item.get("name", "upload")
            try:
                show(open_image(bytes(item["content"]), name))
            except Exception as exc:
                message = (
                    str(exc) if isinstance(exc, DemoError) else f"could not use {name!r}: {exc}"
                )
                state.update(image=None, error=message)
                self.output.value = error_html(message)

        upload.observe(on_upload, "value")
        self.upload = upload
        sources = [upload]
        pad = self._drawing_pad(spec, show) if int(spec.get("channels", 1)) == 1 else None
        if pad is not None:
            sources.append(pad)
        area = w.VBox(
            [
                self._hint(f"Upload a picture or draw one; it is {_describe_image(spec)}."),
                w.HBox(
                    [*sources, w.VBox([self._hint("model input"), preview])],
                    layout=w.Layout(gap="16px", align_items="flex-start"),
                ),
            ]
        )

        def read() -> dict[str, np.ndarray]:
            if state["error"]:
                raise DemoError(state["error"])
            if state["image"] is None:
                raise DemoError("upload an image or draw on the pad first")
            return {spec["input"]: apply_image_preprocessing(state["image"], spec)}

        return area, read

    def _drawing_pad(self, spec: dict[str, Any], show: Any) -> Any:
        """A canvas for small grayscale inputs; strokes are replayed onto a PIL image here."""
        if max(int(spec["height"]), int(spec["width"])) > 64:
            return None
        try:
            from ipycanvas import Canvas
        except ImportError:
            return None
        from PIL import Image, ImageDraw

        w = self.w
        light = spec.get("background") == "light"
        ink, paper = (0, 255) if light else (255, 0)
        pen = int(
            min(32, max(8, round(1.2 * PAD_SIZE / min(int(spec["height"]), int(spec["width"])))))
        )
        canvas = Canvas(
            width=PAD_SIZE,
            height=PAD_SIZE,
            layout=w.Layout(width=f"{PAD_SIZE}px", height=f"{PAD_SIZE}px", border="1px solid #999"),
        )
        canvas.add_class("nbd-pad")
        state: dict[str, Any] = {}

        def paint_paper() -> None:
            # ipycanvas routes draws through a shared manager that remembers which canvas it
            # last "switched" to; that switch was sent before any browser listened (Voila runs
            # the notebook first), so forget it and the next command re-sends it.
            manager = getattr(canvas, "_canvas_manager", None)
            if manager is not None and hasattr(manager, "_current_canvas"):
                manager._current_canvas = None
            canvas.line_width, canvas.line_cap = pen, "round"
            canvas.fill_style = f"rgb({paper},{paper},{paper})"
            canvas.fill_rect(0, 0, PAD_SIZE, PAD_SIZE)
            canvas.stroke_style = canvas.fill_style = f"rgb({ink},{ink},{ink})"

        def clear(_button: Any = None) -> None:
            state.update(image=Image.new("L", (PAD_SIZE, PAD_SIZE), paper), last=None)
            state["draw"] = ImageDraw.Draw(state["image"])
            paint_paper()

        def dot(x: float, y: float) -> None:
            r = pen / 2
            state["draw"].ellipse([x - r, y - r, x + r, y + r], fill=ink)

        def down(x: float, y: float) -> None:
            state["last"] = (x, y)
            canvas.fill_circle(x, y, pen / 2)
            dot(x, y)

        def move(x: float, y: float) -> None:
            if state["last"] is None:
                return
            x0, y0 = state["last"]
            canvas.stroke_line(x0, y0, x, y)
            state["draw"].line([(x0, y0), (x, y)], fill=ink, width=pen)
            dot(x, y)
            state["last"] = (x, y)

        def up(x: float, y: float) -> None:
            if state["last"] is not None:
                state["last"] = None
                show(state["image"].copy())

        canvas.on_mouse_down(down)
        canvas.on_mouse_move(move)
        canvas.on_mouse_up(up)
        canvas.on_mouse_out(up)
        canvas.on_touch_start(lambda touches: down(*touches[0]))
        canvas.on_touch_move(lambda touches: move(*touches[0]))
        canvas.on_touch_end(lambda touches: up(0, 0))
        canvas.on_client_ready(paint_paper)
        clear()
        clear_button = w.Button(description="Clear pad", icon="eraser").add_class("nbd-clear")
        clear_button.on_click(clear)
        self.pad = canvas
        return w.VBox([canvas, clear_button])

    def _tabular_input(self) -> tuple[Any, Any]:
        """A field per column: a dropdown of the categories seen for strings, a checkbox for
        booleans, a number (with the range seen in the sample) otherwise; filled from a row."""
        w, spec = self.w, self.demo["preprocessing"]
        columns = tabular_columns(spec)
        accepts_nan = set(self.demo.get("accepts_nan") or ())
        examples = spec.get("examples") or []
        fields = [self._column_field(column, accepts_nan) for column in columns]

        def fill(row: list[Any]) -> None:
            for column, box, value in zip(columns, fields, row, strict=False):
                box.value = _field_value(column, box, value)

        fill(examples[0] if examples else [None] * len(columns))
        grid = w.GridBox(
            fields,
            layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(280px, 1fr))"),
        )
        what = "columns" if spec.get("layout") == "columns" else "features"
        hint = f"{len(columns)} {what}"
        hint += (
            ", filled from an example row of the sample ('Fill with' picks another)"
            if len(examples) > 1
            else ""
        )
        hint += (
            "; the grey numbers are the range seen in the sample"
            if any("min" in c for c in columns)
            else ""
        )
        hint += ". Change any value and press Predict."
        if any(c.get("input", c["name"]) in accepts_nan for c in columns):
            hint += " Leave a number blank for a missing value."
        parts = [self._hint(hint), grid]
        if len(examples) > 1:
            picker = w.Dropdown(
                options=[(f"example {i + 1}", i) for i in range(len(examples))],
                description="Fill with",
            ).add_class("nbd-examples")
            picker.observe(lambda change: fill(examples[change["new"]]), "value")
            parts.insert(1, picker)
            self.examples_picker = picker
        self.fields = fields

        def read() -> dict[str, np.ndarray]:
            return tabular_inputs([box.value for box in fields], spec, accepts_nan)

        return w.VBox(parts), read

    def _column_field(self, column: dict[str, Any], accepts_nan: set[str]) -> Any:
        w, name = self.w, str(column["name"])
        common = {"style": {"description_width": "initial"}, "layout": w.Layout(width="auto")}
        kind = column.get("kind", "numeric")
        if kind == "categorical" and column.get("categories") and not column.get("open"):
            options = [(c if c != "" else "(missing)", c) for c in column["categories"]]
            box = w.Dropdown(options=options, description=name, **common)
        elif kind == "boolean":
            box = w.Checkbox(value=False, description=name, indent=False)
        elif kind == "categorical":
            box = w.Text(description=name, placeholder="text", **common)
        else:
            label = html.escape(name)
            if "min" in column and "max" in column:
                seen = f"{_text(column['min'])} – {_text(column['max'])}"
                label += f' <span class="nbd-range">({seen})</span>'
            missing = column.get("input", name) in accepts_nan
            box = w.Text(
                description=label,
                description_allow_html=True,
                placeholder="blank = missing" if missing else "a number",
                **common,
            )
        return box.add_class("nbd-feature")

    def _text_input(self) -> tuple[Any, Any]:
        """A text box (filled with the sample's first text, "Fill with" picks another); the
        endpoint takes the raw string and answers per class, shown with probabilities."""
        w, spec = self.w, self.demo["preprocessing"]
        examples = [str(t) for t in spec.get("examples") or []]
        if spec.get("encoding", "string") == "string":
            hint = "Type the text to classify"
            hint += ", or edit the example from the sample" if examples else ""
            hint += ", and press Predict."
        else:
            hint = "This model takes token ids: enter whole numbers separated by spaces."
        box = w.Textarea(
            value=examples[0] if examples else "",
            placeholder="text…",
            layout=w.Layout(width="100%", height="120px"),
        )
        box.add_class("nbd-text")
        parts = [self._hint(hint), box]
        if len(examples) > 1:
            picker = w.Dropdown(
                options=[(f"example {i + 1}", i) for i in range(len(examples))],
                description="Fill with",
            ).add_class("nbd-examples")

            def fill(change: dict[str, Any]) -> None:
                box.value = examples[change["new"]]

            picker.observe(fill, "value")
            parts.insert(1, picker)
            self.examples_picker = picker
        self.fields = [box]
        return w.VBox(parts), lambda: {spec["input"]: text_array(box.value, spec)}

    def _json_input(self) -> tuple[Any, Any]:
        w = self.w
        inputs = self.demo["inputs"]
        examples = (self.demo.get("preprocessing") or {}).get("examples") or {}
        initial = {
            spec["name"]: examples.get(spec["name"])
            or {"shape": [1 if d < 0 else d for d in spec["shape"]], "fill": 0}
            for spec in inputs
        }
        editor = w.Textarea(
            value=json.dumps(initial, indent=1),
            layout=w.Layout(width="100%", height="220px", font_family="monospace"),
        ).add_class("nbd-json")
        shapes = ", ".join(f"{s['name']}: {s['dtype']} {s['shape']}" for s in inputs)
        hint = self._hint(f"The request's inputs as JSON ({shapes}; -1 means any size).")
        return w.VBox([hint, editor]), lambda: json_inputs(editor.value, inputs)


def show_demo(url: str, token: str | None, model: str, demo: dict[str, Any]) -> Any:
    """Build the page's widget tree (the notebook's last cell displays it)."""
    return DemoApp(url, token, model, demo).widget
