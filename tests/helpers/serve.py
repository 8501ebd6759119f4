"""Tiny ONNX models for the inference server, and a real server subprocess on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.helpers.waiting import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MLP_LABELS = ["setosa", "versicolor", "virginica"]
SLOW_LOOP_ITERATIONS = 300_000


def _save(
    graph: Any, directory: Path, extras: dict[str, Any] | None = None, ml_opset: bool = False
) -> Path:
    """Write ``model.onnx`` (opset 17) and an ``nbdeploy.json`` like the repository writes."""
    from onnx import helper

    opsets = [helper.make_opsetid("", 17)]
    if ml_opset:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return save_onnx(model, directory, extras)


def save_onnx(model: Any, directory: Path, extras: dict[str, Any] | None = None) -> Path:
    """Write an ONNX ModelProto as ``model.onnx`` and an ``nbdeploy.json`` like the repository
    writes (``extras`` at the top level: ``labels``, ``metadata`` with outputs/accepts_nan...)."""
    import onnx

    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    metadata = {"name": directory.parent.name, "version": int(directory.name), **(extras or {})}
    (directory / "nbdeploy.json").write_text(json.dumps(metadata))
    return directory


def mlp_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((4, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
    )


def save_mlp(directory: Path, seed: int) -> Path:
    """x FP32 [batch, 4] -> logits = Gemm(x), probs = Softmax(logits)."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = mlp_weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, directory, {"labels": MLP_LABELS, "input_kind": "tabular"})


def save_slow_mlp(directory: Path, width: int = 2048) -> Path:
    """x FP32 [batch, 4] -> probs FP32 [batch, 3] through two ``width``-wide layers: a run takes
    milliseconds, so the server runs it on the model's thread and merges concurrent requests."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = [
        (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        for shape in ((4, width), (width, width), (width, 3))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["a1"]),
            helper.make_node("MatMul", ["a1", "W2"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["a2"]),
            helper.make_node("MatMul", ["a2", "W3"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, f"W{i}") for i, w in enumerate(weights, start=1)],
    )
    return _save(graph, directory)


def save_pair(directory: Path) -> Path:
    """a FP32, b INT64, flag BOOL (all [batch, 3]) -> total FP32, doubled INT64, positive BOOL."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["total"]),
            helper.make_node("Add", ["b", "b"], ["doubled"]),
            helper.make_node("Greater", ["a", "zero"], ["a_positive"]),
            helper.make_node("And", ["flag", "a_positive"], ["positive"]),
        ],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["batch", 3]),
        ],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    return _save(graph, directory)


# Every V2 numeric datatype not covered by the mlp and pair models, through Identity.
IDENTITY_TYPES = {
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def save_types(directory: Path) -> Path:
    """in_<T> [batch, n] -> out_<T> (Identity) for each type in IDENTITY_TYPES; n is dynamic."""
    from onnx import helper

    inputs, outputs, nodes = [], [], []
    for datatype, dtype in IDENTITY_TYPES.items():
        onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        name = datatype.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{name}", onnx_type, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", onnx_type, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return _save(helper.make_graph(nodes, "types", inputs, outputs), directory)


def save_failing(directory: Path) -> Path:
    """x FP32 [batch, 4] -> y = column 7 of x: loads, but onnxruntime fails on every input."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([7], dtype=np.int64), "idx")],
    )
    return _save(graph, directory)


def save_text(directory: Path) -> Path:
    """text BYTES [batch] -> lower (StringNormalizer LOWER), same (Identity)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer",
                ["text"],
                ["lower"],
                case_change_action="LOWER",
                locale="C.UTF-8",
            ),
            helper.make_node("Identity", ["text"], ["same"]),
        ],
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("lower", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"]),
        ],
    )
    return _save(graph, directory, {"input_kind": "text"})


FIXED_WEIGHT = np.arange(8, dtype=np.float32).reshape(4, 2) / 10


def save_fixed(directory: Path) -> Path:
    """x FP32 [1, 4] (a fixed batch of one) -> y = x @ FIXED_WEIGHT."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(FIXED_WEIGHT, "W")],
    )
    return _save(graph, directory)


LOOKUP_TABLE = np.arange(10, dtype=np.float32).reshape(5, 2)


def save_lookup(directory: Path) -> Path:
    """idx INT64 [batch, 1] -> rows of LOOKUP_TABLE; an index >= 5 makes onnxruntime fail."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["row"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 1, 2])],
        [numpy_helper.from_array(LOOKUP_TABLE, "table")],
    )
    return _save(graph, directory)


def save_slow(directory: Path, iterations: int = SLOW_LOOP_ITERATIONS) -> Path:
    """x FP32 [1, 4] -> y after ``iterations`` Loop steps: every run, warm-up included, is slow."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Sin", ["acc_in"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    return _save(graph, directory)


def save_zipmap(directory: Path) -> Path:
    """x FP32 [batch, 3] -> probs (Identity) and a ZipMap sequence-of-maps output, as skl2onnx
    classifiers have by default; V2 cannot carry the latter."""
    from onnx import TensorProto, helper

    map_type = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
    )
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["probs"]),
            helper.make_node(
                "ZipMap",
                ["x"],
                ["probability_map"],
                domain="ai.onnx.ml",
                classlabels_int64s=[0, 1, 2],
            ),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
            helper.make_value_info("probability_map", map_type),
        ],
    )
    return _save(graph, directory, ml_opset=True)


# --- tabular models: one ONNX input per DataFrame column, as nbdeploy exports them -----------

CITIES = ["Paris", "Köln", "Zürich", "Oslo"]
CHURN_CLASSES = ["leave", "stay"]
TABULAR_OPSET = {"": 17, "ai.onnx.ml": 3}


def churn_frame(rows: int, seed: int) -> Any:
    """A DataFrame with a string, a float, an int and a bool column."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "city": rng.choice(CITIES, rows),
            "age": rng.uniform(18, 80, rows).astype(np.float32),
            "visits": rng.integers(0, 30, rows).astype(np.int64),
            "member": rng.random(rows) > 0.5,
        }
    )


def save_churn(directory: Path) -> Path:
    """A scikit-learn Pipeline (ColumnTransformer: OneHotEncoder on city, StandardScaler on
    age and visits, member passed through; LogisticRegression) converted by skl2onnx per column:
    city BYTES, age FP32, visits INT64, member BOOL (all [-1, 1]) -> label (strings, [-1]) and
    probabilities [-1, 2]. It accepts NaN in no input."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = churn_frame(300, seed=0)
    score = frame.age / 10 + frame.visits / 3 + (frame.city == "Oslo") * 3 - frame.member * 2
    target = np.where(score > 8, "leave", "stay")
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                        ("num", StandardScaler(), ["age", "visits"]),
                        ("flag", "passthrough", ["member"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, target)
    assert list(pipeline.classes_) == CHURN_CLASSES
    types = [
        ("city", StringTensorType([None, 1])),
        ("age", FloatTensorType([None, 1])),
        ("visits", Int64TensorType([None, 1])),
        ("member", BooleanTensorType([None, 1])),
    ]
    model = convert_sklearn(
        pipeline,
        initial_types=types,
        options={id(pipeline): {"zipmap": False}},
        target_opset=TABULAR_OPSET,
    )
    extras = {
        "input_kind": "tabular",
        "metadata": {
            "outputs": {
                "label": {"kind": "label", "classes": CHURN_CLASSES},
                "probabilities": {"kind": "probabilities", "classes": CHURN_CLASSES},
            },
            "accepts_nan": [],
        },
    }
    return save_onnx(model, directory, extras)


HGB_LABELS = ["no", "yes"]


def hgb_frame(rows: int, seed: int) -> Any:
    """Two float columns, ``a`` with a NaN in every 7th row."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.standard_normal(rows).astype(np.float32),
            "b": rng.standard_normal(rows).astype(np.float32),
        }
    )
    frame.loc[::7, "a"] = np.nan
    return frame


def save_hgb(directory: Path) -> Path:
    """A HistGradientBoostingClassifier (native NaN support) over float columns a and b (FP32
    [-1, 1] each, joined by a passthrough ColumnTransformer). Its nbdeploy.json lists only ``a``
    in accepts_nan, gives the model ``labels`` and records no ``classes`` for its outputs."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    frame = hgb_frame(300, seed=1)
    target = (frame.b + frame.a.fillna(1.0) > 0.5).astype(np.int64)
    pipeline = Pipeline(
        [
            ("cols", ColumnTransformer([("pass", "passthrough", ["a", "b"])])),
            ("hgb", HistGradientBoostingClassifier(max_iter=20, random_state=0)),
        ]
    ).fit(frame, target)
    model = convert_sklearn(
        pipeline,
        initial_types=[("a", FloatTensorType([None, 1])), ("b", FloatTensorType([None, 1]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset=TABULAR_OPSET,
    )
    extras = {
        "labels": HGB_LABELS,
        "metadata": {
            "outputs": {"label": {"kind": "label"}, "probabilities": {"kind": "probabilities"}},
            "accepts_nan": ["a"],
        },
    }
    return save_onnx(model, directory, extras)


def save_nan_out(directory: Path) -> Path:
    """x FP32 [-1, 1], accepting NaN -> same = x, ratio = x / x (NaN for 0), flat = x as [-1]
    (a 1-D output with no recorded meaning)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["same"]),
            helper.make_node("Div", ["x", "x"], ["ratio"]),
            helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        ],
        "nan_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("ratio", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch"]),
        ],
        [numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape")],
    )
    extras = {
        "metadata": {
            "outputs": {"same": {"kind": "value"}, "ratio": {"kind": "value"}},
            "accepts_nan": ["x"],
        }
    }
    return _save(graph, directory, extras)


def save_wide(directory: Path) -> Path:
    """x FP32 [batch, n] (n dynamic) -> scores = x (per-class probabilities, n classes) and
    label = argmax(x) INT64 [batch] (recorded as class labels): big tensors in, and both kinds
    of output for the classification extension."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["scores"]),
            helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
        ],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
    )
    extras = {
        "metadata": {
            "outputs": {"scores": {"kind": "probabilities"}, "label": {"kind": "label"}},
            "accepts_nan": [],
        }
    }
    return _save(graph, directory, extras)


def build_repository(root: Path) -> Path:
    """The main test repository: mlp v1+v2, pair, types, text, fixed, zipmap, and things to skip."""
    save_mlp(root / "mlp" / "1", seed=1)
    save_mlp(root / "mlp" / "2", seed=2)
    save_pair(root / "pair" / "1")
    save_types(root / "types" / "1")
    save_text(root / "text" / "1")
    save_fixed(root / "fixed" / "1")
    save_zipmap(root / "zipmap" / "1")
    (root / "mlp" / "notes").mkdir()
    (root / "no-versions" / "draft").mkdir(parents=True)
    return root


def peak_rss(pid: int) -> int:
    """Peak resident memory (VmHWM) of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def raw_exchange(port: int, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send ``data`` on a fresh socket and return everything the server sends until it
    closes (or ``wait`` seconds pass); a reset or a write into a closed socket only ends the
    sending, so a refusal sent before the whole ``data`` was taken is still read."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_until_closed(sock, wait)


def read_until_closed(sock: socket.socket, wait: float) -> bytes:
    """Everything ``sock`` receives until the peer closes it or ``wait`` seconds pass."""
    sock.settimeout(wait)
    chunks = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A ``python -m nbdeploy.serve`` subprocess and how to talk to it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    token: str | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        client = httpx.Client(base_url=self.url, headers=self.headers, **kwargs)
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def peak_rss(self) -> int:
        """The server's peak resident memory so far (VmHWM), in bytes."""
        return peak_rss(self.process.pid)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for a graceful exit (kill after ``timeout``) and return the exit code."""
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(
    repository: Path,
    *args: str,
    log_path: Path,
    token: str | None = None,
    admin_token: str | None = None,
    pythonpath: Path = PROJECT_ROOT,
    cwd: Path = PROJECT_ROOT,
    port: int | None = None,
) -> ServerProcess:
    """Start the server (on a free port unless given) without waiting for it."""
    env = dict(os.environ)
    env.pop("NBDEPLOY_TOKEN", None)
    env.pop("NBDEPLOY_ADMIN_TOKEN", None)
    if token:
        env["NBDEPLOY_TOKEN"] = token
    if admin_token:
        env["NBDEPLOY_ADMIN_TOKEN"] = admin_token
    env["PYTHONPATH"] = str(pythonpath)
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "nbdeploy.serve",
        "--model-repository",
        str(repository),
        "--port",
        str(port),
        "--log-file",
        str(log_path),
        *args,
    ]
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    return ServerProcess(process, port, log_path, token)


def start_server(repository: Path, *args: str, **kwargs: Any) -> ServerProcess:
    """Start the server and wait until it answers ready (retrying if the port got taken)."""
    for attempt in range(3):
        server = launch(repository, *args, **kwargs)
        try:
            server.wait_ready()
            return server
        except RuntimeError:
            if attempt == 2 or "address already in use" not in server.log().lower():
                server.stop()
                raise
    raise AssertionError("unreachable")


def write_routing(
    path: Path,
    name: str,
    generation: int,
    weights: dict[int, int],
    *,
    stable: int | None = None,
    shadow: tuple[int, ...] = (),
    guards: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write a routing.json (schema 1) atomically, as the host does; ``stable`` defaults to
    the version with the highest weight."""
    data = {
        "schema": 1,
        "name": name,
        "generation": generation,
        "stable": stable if stable is not None else max(weights, key=lambda v: weights[v]),
        "weights": {str(version): weight for version, weight in weights.items()},
        "shadow": list(shadow),
        "guards": guards,
        **extra,
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)
    return path


def metric_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples called ``name`` whose labels include ``labels``, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append((dict(sample.labels), sample.value))
    return found


def reference(repository: Path, model: str, version: int, feeds: dict[str, np.ndarray]):
    """What onnxruntime itself answers for ``model`` v``version`` of ``repository``."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / model / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def metrics_text(server: ServerProcess) -> str:
    """The server's /metrics page."""
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when there are none)."""
    return sum(value for _, value in metric_samples(text, name, **labels))


def held_by_requests(server: ServerProcess) -> tuple[float, float]:
    """Infer requests in flight and the bytes of the memory budget they hold."""
    text = metrics_text(server)
    return (
        metric_value(text, "nbdeploy_requests_in_flight"),
        metric_value(text, "nbdeploy_memory_budget_used_bytes"),
    )


def assert_all_given_back(server: ServerProcess, timeout: float = 30.0) -> None:
    """Every request slot and byte of the memory budget comes back once the requests (and
    the worker threads still running for them) are done: none leaks, whatever befell them."""
    wait_for(lambda: held_by_requests(server) == (0, 0), timeout=timeout)
    assert held_by_requests(server) == (0, 0)


def binary_body(
    inputs: list[tuple[str, str, np.ndarray]],
    outputs: list[dict[str, Any]] | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An infer request with every input in the binary section, as tritonclient builds one."""
    header: dict[str, Any] = {"inputs": []}
    raw_parts = []
    for name, datatype, array in inputs:
        raw = encode_binary(array, datatype)
        header["inputs"].append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raw_parts.append(raw)
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    return head + b"".join(raw_parts), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def encode_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def decode_response(response: httpx.Response) -> dict[str, np.ndarray]:
    """Output arrays of an infer response, JSON or binary, independently of the server code."""
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    length = response.headers.get("Inference-Header-Content-Length")
    content = response.content
    header = json.loads(content if length is None else content[: int(length)])
    offset = 0 if length is None else int(length)
    arrays = {}
    for output in header["outputs"]:
        datatype, shape = output["datatype"], output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            dtype = object if datatype == "BYTES" else triton_to_np_dtype(datatype)
            arrays[output["name"]] = np.array(output["data"], dtype=dtype).reshape(shape)
            continue
        raw = content[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            values = deserialize_bytes_tensor(raw)
            arrays[output["name"]] = np.array([v.decode() for v in values], dtype=object).reshape(
                shape
            )
        else:
            dtype = triton_to_np_dtype(datatype)
            arrays[output["name"]] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    assert offset == len(content) or length is None
    return arrays
