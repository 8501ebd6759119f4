"""Serving benchmark: nbdeploy's endpoint against the floor of Python serving and two peers.

In one interleaved run (every round visits every system, in a rotated order, so machine noise
hits them all alike), with the same ONNX file everywhere (an MLP 64->64->10, batch 1):

- nbdeploy, process and Docker runtimes, dynamic batching on and off, V2 JSON and V2 binary,
  auth and metrics on (as deployed by ``nbdeploy.api.deploy``);
- the bare floor: a Starlette + uvicorn (uvloop, httptools) + orjson route running the same
  onnxruntime session inline, no validation, auth, metrics or access log;
- the common Flask pattern: a Flask route + onnxruntime + ``jsonify``, served by gunicorn with
  one worker process and 8 threads (``gthread``: keep-alive, one thread per connection);
- KServe's Python ModelServer (REST V2, gRPC off) with a minimal ``kserve.Model`` subclass
  running onnxruntime inline;

measuring requests/s and p50/p99 with 8 connections, p50 with 1 connection, V2 gRPC against
V2 REST binary at concurrency 1 (when the server offers gRPC: ``ep.grpc_url``), and the batching
gain on a wide MLP (64->4096->4096->10) at concurrency 16. Each baseline runs in its own
virtual environment, created under ``NBDEPLOY_CACHE/bench-serving/venvs`` from the package
index and reused when present, with the host's onnxruntime and numpy versions.

The HTTP load comes from ``wrk`` (one thread; installed with apt-get when missing and
allowed): a C client that costs the 2-core machine far less CPU than any Python client would,
and the tool the issue's figures were taken with. gRPC is timed with a Python client
(``tritonclient``'s generated stubs) against the same Python client on REST binary.

    .venv/bin/python benchmarks/bench_serving.py [--quick] [--rounds 5] [--seconds 5]
        [--runtimes process,docker] [--out DIR]

Writes ``DIR/serving.json`` and ``DIR/serving.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INPUT, OUTPUT = "input", "output"

# --------------------------------------------------------------------------- models


def mlp_onnx(path: Path, sizes: tuple[int, ...], seed: int) -> Path:
    """An MLP (Gemm + Relu layers) written with onnx.helper: the same file for every server."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous = INPUT
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = OUTPUT if last else f"h{i}"
        nodes.append(
            helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [out if last else f"g{i}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- baselines

SESSION = '''
import os
import onnxruntime as ort


def session(path):
    """The options nbdeploy's server uses: every graph optimisation, one intra-op thread per
    usable CPU, sequential execution."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
'''

FLOOR_APP = """
import sys

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from ortsession import session

path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sess = session(path)
INPUT, OUTPUT = sess.get_inputs()[0].name, sess.get_outputs()[0].name


async def infer(request):
    tensor = orjson.loads(await request.body())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    y = sess.run(None, {INPUT: x})[0]
    out = {"name": OUTPUT, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
    body = orjson.dumps({"model_name": name, "outputs": [out]})
    return Response(body, media_type="application/json")


async def ready(request):
    return Response(b"")


app = Starlette(
    routes=[
        Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
)
uvicorn.run(
    app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
    access_log=False, log_level="warning",
)
"""

FLASK_APP = """
import os

import numpy as np
from flask import Flask, jsonify, request

from ortsession import session

sess = session(os.environ["BENCH_MODEL"])
INPUT, OUTPUT = sess.get_inputs()[0].name, sess.get_outputs()[0].name
app = Flask(__name__)


@app.post("/v2/models/<name>/infer")
def infer(name):
    tensor = request.get_json()["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    y = sess.run(None, {INPUT: x})[0]
    out = {"name": OUTPUT, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
    return jsonify({"model_name": name, "outputs": [out]})


@app.get("/v2/health/ready")
def ready():
    return ""
"""

KSERVE_APP = """
import sys

import kserve
from kserve import InferOutput, InferResponse, Model, ModelServer

from ortsession import session

path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.sess = session(self.path)
        self.input = self.sess.get_inputs()[0].name
        self.output = self.sess.get_outputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.sess.run(None, {self.input: x})[0]
        out = InferOutput(name=self.output, shape=list(y.shape), datatype="FP32", data=y)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])


ModelServer(http_port=port, enable_grpc=False, workers=1).start([OnnxModel(name, path)])
"""


def host_version(package: str) -> str:
    return importlib.metadata.version(package)


def baseline_specs() -> dict[str, list[str]]:
    """What each baseline's virtual environment holds; onnxruntime and numpy as on the host."""
    same = [f"onnxruntime=={host_version('onnxruntime')}", f"numpy=={host_version('numpy')}"]
    return {
        "floor": [*same, "starlette", "uvicorn", "uvloop", "httptools", "orjson"],
        "flask": [*same, "flask", "gunicorn"],
        "kserve": [*same, "kserve"],
    }


def cache_root() -> Path:
    root = os.environ.get("NBDEPLOY_CACHE")
    return (
        Path(root).expanduser() if root else Path.home() / ".cache" / "nbdeploy"
    ) / "bench-serving"


def ensure_venv(name: str, requirements: list[str]) -> tuple[Path, dict[str, str]]:
    """A virtual environment for one baseline, created from the package index or reused.

    Returns its Python and the versions installed in it."""
    key = hashlib.sha256(json.dumps(requirements).encode()).hexdigest()[:12]
    root = cache_root() / "venvs" / f"{name}-{key}"
    python = root / "bin" / "python"
    marker = root / "installed.json"
    if not marker.exists():
        if root.exists():
            shutil.rmtree(root)
        print(f"[bench] creating the {name} environment: {' '.join(requirements)}", flush=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(root)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *requirements,
            ],
            check=True,
        )
        listing = subprocess.run(
            [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        versions = {row["name"].lower(): row["version"] for row in json.loads(listing)}
        marker.write_text(json.dumps(versions, indent=1))
    versions = json.loads(marker.read_text())
    return python, versions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


@dataclass
class Baseline:
    name: str
    proc: subprocess.Popen
    url: str
    versions: dict[str, str]
    served_by: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_baseline(
    kind: str, python: Path, versions: dict[str, str], model: Path, workdir: Path
) -> Baseline:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ortsession.py").write_text(SESSION)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(workdir), "BENCH_MODEL": str(model)}
    env.pop("PYTHONHOME", None)
    if kind == "floor":
        (workdir / "floor_app.py").write_text(FLOOR_APP)
        cmd = [str(python), str(workdir / "floor_app.py"), str(model), str(port), "mlp"]
        served_by = (
            f"uvicorn {versions.get('uvicorn')} (uvloop, httptools, access log off),"
            f" starlette {versions.get('starlette')}, orjson {versions.get('orjson')}"
        )
    elif kind in ("flask", "flask-gthread"):
        (workdir / "flask_app.py").write_text(FLASK_APP)
        threaded = kind == "flask-gthread"
        cmd = [
            str(python.parent / "gunicorn"), "--workers", "1",
            *(["--worker-class", "gthread", "--threads", "8"] if threaded else []),
            "--bind", f"127.0.0.1:{port}", "--chdir", str(workdir), "--log-level", "warning",
            "flask_app:app",
        ]  # fmt: skip
        served_by = f"flask {versions.get('flask')} on gunicorn {versions.get('gunicorn')}" + (
            " with 1 worker process, `gthread` worker class and 8 threads (keep-alive; a"
            " friendlier setting than the default, shown for reference)"
            if threaded
            else " as `gunicorn --workers 1 app:app` (its default sync worker: one request at a"
            " time, a new connection per request; no access log)"
        )
    else:
        (workdir / "kserve_app.py").write_text(KSERVE_APP)
        cmd = [str(python), str(workdir / "kserve_app.py"), str(model), str(port), "mlp"]
        served_by = (
            f"kserve {versions.get('kserve')} ModelServer (1 worker, REST V2, gRPC off,"
            " its default access and latency logging)"
        )
    log = open(workdir / f"{kind}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/v2/health/ready", proc=proc)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(
            f"{kind} did not start; log:\n{(workdir / f'{kind}.log').read_text()[-3000:]}"
        ) from None
    return Baseline(kind, proc, url, versions, served_by)


# --------------------------------------------------------------------------- load


@dataclass
class Target:
    """One system under one payload: where to POST, what, with which headers."""

    label: str
    system: str  # floor, flask, kserve, nbdeploy
    url: str  # the infer URL
    body: bytes
    headers: dict[str, str]
    runtime: str | None = None
    batching: bool | None = None
    payload: str = "json"
    endpoint: Any = None
    lua: Path | None = None
    rows: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def json_body(x: np.ndarray) -> bytes:
    tensor = {"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    from nbdeploy.client import encode_request

    return encode_request({INPUT: x}, binary=True)


def write_lua(target: Target, workdir: Path) -> None:
    slug = "".join(c if c.isalnum() else "-" for c in target.label)
    body = workdir / f"{slug}.body"
    body.write_bytes(target.body)
    headers = {"Content-Type": "application/json", **target.headers}
    lines = [
        f'local f = assert(io.open("{body}", "rb"))',
        'wrk.body = f:read("*a")',
        "f:close()",
        'wrk.method = "POST"',
    ]
    lines += [f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items()]
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d,'
        ' \\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d,'
        ' \\"p50_us\\": %.1f, \\"p99_us\\": %.1f, \\"mean_us\\": %.1f}\\n",'
        " summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,"
        " latency:percentile(50), latency:percentile(99), latency.mean))",
        "end",
    ]
    target.lua = workdir / f"{slug}.lua"
    target.lua.write_text("\n".join(lines) + "\n")


def wrk(target: Target, connections: int, seconds: float) -> dict[str, float]:
    """Closed-loop load from wrk (1 thread, ``connections`` keep-alive connections)."""
    assert target.lua is not None
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(target.lua), target.url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON ") :])
    errors = sum(int(raw[k]) for k in ("connect", "read", "write", "status", "timeout"))
    requests = int(raw["requests"])
    return {
        "rps": (requests - int(raw["status"])) / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": requests,
        "errors": errors,
    }


def python_rest_c1(target: Target, calls: int) -> dict[str, float]:
    """p50/p99 of sequential calls from one keep-alive http.client connection."""
    host, port = target.url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + target.url.split("//", 1)[1].split("/", 1)[1]
    headers = {"Content-Type": "application/json", **target.headers}
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times = []
    try:
        for i in range(calls + calls // 10):
            began = time.perf_counter_ns()
            conn.request("POST", path, body=target.body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{target.label}: HTTP {response.status}")
            if i >= calls // 10:  # the first tenth warms up
                times.append((time.perf_counter_ns() - began) / 1e6)
    finally:
        conn.close()
    return percentiles(times)


def python_grpc_c1(
    grpc_url: str, token: str | None, model: str, x: np.ndarray, calls: int
) -> dict[str, float]:
    """p50/p99 of sequential V2 gRPC ModelInfer calls (raw_input_contents) on one channel."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    address = grpc_url.split("://", 1)[-1].rstrip("/")
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = INPUT, "FP32"
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    times = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(calls + calls // 10):
            began = time.perf_counter_ns()
            reply = stub.ModelInfer(request, metadata=metadata, timeout=30)
            if i >= calls // 10:
                times.append((time.perf_counter_ns() - began) / 1e6)
        got = (
            np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
            if reply.raw_output_contents
            else None
        )
    if got is None or got.size != 10:
        raise RuntimeError(f"unexpected gRPC reply from {grpc_url}: {reply}")
    return percentiles(times)


def python_grpc_live_c1(grpc_url: str, calls: int) -> dict[str, float]:
    """p50/p99 of sequential ServerLive calls: what a call costs the gRPC stack itself (no
    token, no tensor, no model), with the same client as ``python_grpc_c1``."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    address = grpc_url.split("://", 1)[-1].rstrip("/")
    request = service_pb2.ServerLiveRequest()
    times = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(calls + calls // 10):
            began = time.perf_counter_ns()
            reply = stub.ServerLive(request, timeout=30)
            if i >= calls // 10:
                times.append((time.perf_counter_ns() - began) / 1e6)
    if not reply.live:
        raise RuntimeError(f"{grpc_url} is not live")
    return percentiles(times)


def percentiles(times: list[float]) -> dict[str, float]:
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[int(0.99 * (len(times) - 1))],
        "calls": len(times),
    }


def check_answer(target: Target, expected: np.ndarray) -> None:
    """One request through the target; its output must match in-process onnxruntime."""
    from nbdeploy.client import decode_response

    request = urllib.request.Request(
        target.url, data=target.body, headers={"Content-Type": "application/json", **target.headers}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        headers = dict(response.headers.items())
    if target.payload == "binary":
        outputs = decode_response(raw, headers)
        got = np.asarray(next(iter(outputs.values())))
    else:
        got = np.asarray(json.loads(raw)["outputs"][0]["data"], dtype=np.float32)
    if not np.allclose(got.ravel(), expected.ravel(), atol=1e-4):
        raise RuntimeError(
            f"{target.label} answered {got.ravel()[:4]}, expected {expected.ravel()[:4]}"
        )


# --------------------------------------------------------------------------- run


def deploy_nbdeploy(model: Path, name: str, runtime: str, batching: bool) -> Any:
    from nbdeploy.api import deploy

    return deploy(str(model), name=name, runtime=runtime, batching=batching)


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


def summarize(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": target.label,
        "system": target.system,
        "runtime": target.runtime,
        "batching": target.batching,
        "payload": target.payload,
    }
    for measure, rows in target.rows.items():
        if not rows:
            continue
        keys = [k for k in ("rps", "p50_ms", "p99_ms") if k in rows[0]]
        out[measure] = {k: median_of(rows, k) for k in keys}
        out[measure]["errors"] = sum(int(r.get("errors", 0)) for r in rows)
        out[measure]["rounds"] = rows
    return out


def main() -> int:  # noqa: C901, PLR0912, PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s (smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk measurement")
    parser.add_argument("--runtimes", default="process,docker")
    parser.add_argument("--calls", type=int, default=2000, help="per Python c1 measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    rounds, seconds, calls = (
        (2, 1.0, 300) if args.quick else (args.rounds, args.seconds, args.calls)
    )
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="nbdeploy-bench-"))
    os.environ.setdefault("NBDEPLOY_CACHE", str(Path.home() / ".cache" / "nbdeploy"))
    began_run = time.perf_counter()
    load_start = os.getloadavg()

    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("[bench] installing wrk with apt-get", flush=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True
            )
            if shutil.which("wrk") is None:
                subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
                subprocess.run(
                    ["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True
                )
        else:
            sys.exit("wrk is needed (apt-get install wrk)")
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split(
        "["
    )[0]

    from nbdeploy.runtimes import docker_available

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    notes: list[str] = []
    if "docker" in runtimes and not docker_available():
        runtimes.remove("docker")
        notes.append("Docker runtime skipped: no Docker engine answers here.")

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    small = mlp_onnx(workdir / "mlp.onnx", (64, 64, 10), seed=0)
    wide = mlp_onnx(workdir / "wide.onnx", (64, 4096, 4096, 10), seed=1)
    x = np.random.default_rng(2).random((1, 64), dtype=np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"]).run(
        None, {INPUT: x}
    )[0]
    expected_wide = ort.InferenceSession(str(wide), providers=["CPUExecutionProvider"]).run(
        None, {INPUT: x}
    )[0]
    jbody = json_body(x)
    bbody, bheaders = binary_body(x)

    baselines: list[Baseline] = []
    endpoints: list[Any] = []
    targets: list[Target] = []
    wide_targets: list[Target] = []
    grpc_pairs: list[tuple[str, Target, Any]] = []
    try:
        venvs = {kind: ensure_venv(kind, reqs) for kind, reqs in baseline_specs().items()}
        for kind, venv in (("floor", "floor"), ("flask", "flask"), ("flask-gthread", "flask"),
                           ("kserve", "kserve")):  # fmt: skip
            base = start_baseline(kind, *venvs[venv], small, workdir / kind)
            baselines.append(base)
            targets.append(Target(kind, kind, f"{base.url}/v2/models/mlp/infer", jbody, {}))

        for runtime in runtimes:
            for batching in (True, False):
                tag = "on" if batching else "off"
                print(f"[bench] deploying nbdeploy {runtime}, batching {tag}", flush=True)
                ep = deploy_nbdeploy(small, f"mlp-{runtime}-{tag}", runtime, batching)
                endpoints.append(ep)
                url = f"{ep.url}/v2/models/{ep.name}/infer"
                common = {
                    "system": "nbdeploy",
                    "runtime": runtime,
                    "batching": batching,
                    "endpoint": ep,
                }
                json_t = Target(f"nbdeploy {runtime} batching {tag} JSON", url=url, body=jbody,
                                headers=dict(ep.headers), payload="json", **common)  # fmt: skip
                bin_t = Target(f"nbdeploy {runtime} batching {tag} binary", url=url, body=bbody,
                               headers={**ep.headers, **bheaders}, payload="binary", **common)  # fmt: skip
                targets += [json_t, bin_t]
                grpc_url = getattr(ep, "grpc_url", None)
                if grpc_url:
                    grpc_pairs.append((grpc_url, bin_t, ep))
                elif batching and not any("gRPC" in n for n in notes):
                    notes.append(
                        "gRPC rows skipped: the endpoints have no `grpc_url` (the server does not"
                        " offer V2 gRPC yet)."
                    )
                wep = deploy_nbdeploy(wide, f"wide-{runtime}-{tag}", runtime, batching)
                endpoints.append(wep)
                wide_targets.append(
                    Target(f"wide {runtime} batching {tag}", "nbdeploy",
                           f"{wep.url}/v2/models/{wep.name}/infer", bbody,
                           {**wep.headers, **bheaders}, runtime=runtime, batching=batching,
                           payload="binary", endpoint=wep)
                )  # fmt: skip

        for target in targets:
            check_answer(target, expected)
            write_lua(target, workdir)
        for target in wide_targets:
            check_answer(target, expected_wide)
            write_lua(target, workdir)

        for pair in list(grpc_pairs):
            grpc_url, bin_t, ep = pair
            try:
                python_grpc_c1(grpc_url, ep.token, ep.name, x, 20)
            except Exception as exc:  # noqa: BLE001 - a broken gRPC row must not end the run
                grpc_pairs.remove(pair)
                notes.append(f"gRPC row of {bin_t.label} skipped: {type(exc).__name__}: {exc}")

        print(f"[bench] warming up {len(targets) + len(wide_targets)} targets", flush=True)
        for target in targets:
            wrk(target, 8, 1)
        for target in wide_targets:
            wrk(target, 16, 1)

        for r in range(rounds):
            print(
                f"[bench] round {r + 1}/{rounds} ({time.perf_counter() - began_run:.0f} s)",
                flush=True,
            )
            shift = r % len(targets)
            order = targets[shift:] + targets[:shift]
            if r % 2:
                order.reverse()
            for target in order:
                target.rows.setdefault("c8", []).append(wrk(target, 8, seconds))
            for target in order:
                target.rows.setdefault("c1", []).append(wrk(target, 1, seconds))
            wide_order = (
                wide_targets[r % len(wide_targets) :] + wide_targets[: r % len(wide_targets)]
            )
            for target in wide_order:
                target.rows.setdefault("c16", []).append(wrk(target, 16, seconds))
            for grpc_url, bin_t, ep in grpc_pairs[r % 2 :] + grpc_pairs[: r % 2]:
                pair = [
                    ("rest_binary_py_c1", lambda t=bin_t: python_rest_c1(t, calls)),
                    (
                        "grpc_py_c1",
                        lambda u=grpc_url, e=ep: python_grpc_c1(u, e.token, e.name, x, calls),
                    ),
                    ("grpc_live_py_c1", lambda u=grpc_url: python_grpc_live_c1(u, calls)),
                ]
                for key, measure in pair if r % 2 == 0 else pair[::-1]:
                    bin_t.rows.setdefault(key, []).append(measure())
    finally:
        for base in baselines:
            base.stop()
        from nbdeploy.api import undeploy

        for ep in endpoints:
            try:
                undeploy(ep.name)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"[bench] stopping {ep.name}: {exc}", file=sys.stderr)

    results = build_results(targets, wide_targets, baselines, notes)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "onnxruntime": host_version("onnxruntime"),
        "numpy": host_version("numpy"),
        "wrk": wrk_version.strip(),
        "rounds": rounds,
        "seconds": seconds,
        "python_calls": calls,
        "quick": args.quick,
        "runtimes": runtimes,
        "wall_s": round(time.perf_counter() - began_run, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = render(results)
    (args.out / "serving.md").write_text(markdown)
    print(markdown)
    return 0


def build_results(
    targets: list[Target], wide_targets: list[Target], baselines: list[Baseline], notes: list[str]
) -> dict[str, Any]:
    rows = [summarize(t) for t in targets]
    by_label = {row["label"]: row for row in rows}
    refs = {
        kind: by_label[kind]["c8"]["rps"]
        for kind in ("floor", "flask", "kserve")
        if kind in by_label
    }
    for row in rows:
        row["c8"]["vs"] = {kind: row["c8"]["rps"] / rps for kind, rps in refs.items()}
        # the same ratio taken round by round (each round's systems ran minutes apart at most)
        row["c8"]["vs_per_round_median"] = {
            kind: statistics.median(
                mine["rps"] / theirs["rps"]
                for mine, theirs in zip(
                    row["c8"]["rounds"], by_label[kind]["c8"]["rounds"], strict=True
                )
            )
            for kind in refs
        }
    wide_rows = [summarize(t) for t in wide_targets]
    gains = {}
    for runtime in sorted({t.runtime for t in wide_targets if t.runtime}):
        on = next(r for r in wide_rows if r["runtime"] == runtime and r["batching"])
        off = next(r for r in wide_rows if r["runtime"] == runtime and not r["batching"])
        gains[runtime] = {
            "rps_on": on["c16"]["rps"],
            "rps_off": off["c16"]["rps"],
            "gain": on["c16"]["rps"] / off["c16"]["rps"],
        }
    targets_table = evaluate(rows, gains)
    return {
        "systems": {b.name: b.served_by for b in baselines},
        "baseline_versions": {
            b.name: {k: v for k, v in b.versions.items() if k in BASELINE_KEYS} for b in baselines
        },
        "rows": rows,
        "wide_c16": wide_rows,
        "batching_gain_wide_c16": gains,
        "targets": targets_table,
        "notes": notes,
    }


BASELINE_KEYS = {
    "onnxruntime", "numpy", "starlette", "uvicorn", "uvloop", "httptools", "orjson",
    "flask", "gunicorn", "werkzeug", "kserve", "fastapi",
}  # fmt: skip


def evaluate(
    rows: list[dict[str, Any]], gains: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """The issue's four targets, per runtime, against this run's medians."""
    by_label = {row["label"]: row for row in rows}
    out: list[dict[str, Any]] = []
    runtimes = sorted({row["runtime"] for row in rows if row["runtime"]})
    for runtime in runtimes:
        on = by_label[f"nbdeploy {runtime} batching on JSON"]["c8"]
        off = by_label[f"nbdeploy {runtime} batching off JSON"]["c8"]
        if "floor" in on["vs"]:
            out.append({
                "target": f"{runtime}: JSON b1 c8 >= 0.7x floor (batching on), >= 0.6x (off)",
                "value": f"on {on['vs']['floor']:.2f}x, off {off['vs']['floor']:.2f}x",
                "met": on["vs"]["floor"] >= 0.7 and off["vs"]["floor"] >= 0.6,
            })  # fmt: skip
        if "flask" in on["vs"] and "kserve" in on["vs"]:
            gthread = by_label.get("flask-gthread", {}).get("c8", {}).get("rps")
            out.append({
                "target": f"{runtime}: >= 5x Flask and >= 3x KServe (JSON b1 c8, batching on / off)",
                "value": f"Flask {on['vs']['flask']:.2f}x / {off['vs']['flask']:.2f}x,"
                         f" KServe {on['vs']['kserve']:.2f}x / {off['vs']['kserve']:.2f}x"
                         + (f" (Flask on gthread: {on['rps'] / gthread:.2f}x / {off['rps'] / gthread:.2f}x)"
                            if gthread else ""),
                "met": on["vs"]["flask"] >= 5 and on["vs"]["kserve"] >= 3,
            })  # fmt: skip
        grpc = [
            row for row in rows
            if row["runtime"] == runtime and row["payload"] == "binary" and "grpc_py_c1" in row
        ]  # fmt: skip
        if grpc:
            g = grpc[0]
            out.append({
                "target": f"{runtime}: gRPC binary c1 p50 <= REST binary c1 p50"
                          f" (batching {'on' if g['batching'] else 'off'})",
                "value": f"{g['grpc_py_c1']['p50_ms']:.3f} vs {g['rest_binary_py_c1']['p50_ms']:.3f} ms",
                "met": g["grpc_py_c1"]["p50_ms"] <= g["rest_binary_py_c1"]["p50_ms"],
            })  # fmt: skip
        else:
            out.append({
                "target": f"{runtime}: gRPC binary c1 p50 <= REST binary c1 p50",
                "value": "no gRPC endpoint (`ep.grpc_url` absent)",
                "met": False,
            })  # fmt: skip
        if runtime in gains:
            gain = gains[runtime]
            out.append({
                "target": f"{runtime}: wide MLP batching gain at c16 >= 2x",
                "value": f"{gain['rps_on']:.0f} / {gain['rps_off']:.0f} req/s = {gain['gain']:.2f}x",
                "met": gain["gain"] >= 2,
            })  # fmt: skip
    return out


def render(r: dict[str, Any]) -> str:
    meta = r["meta"]
    lines = [
        "# Serving: nbdeploy against the floor, Flask and KServe",
        "",
        f"{meta['date']}; {meta['machine']}; load average (1, 5, 15 min) at start"
        f" {', '.join(f'{v:.2f}' for v in meta['load_average_start'])}, at end"
        f" {', '.join(f'{v:.2f}' for v in meta['load_average_end'])}; onnxruntime {meta['onnxruntime']};"
        f" {meta['wrk']} (1 thread). {meta['rounds']} interleaved rounds of {meta['seconds']:.0f} s per"
        f" measurement{' (quick)' if meta['quick'] else ''}; medians of the rounds; wall time"
        f" {meta['wall_s']:.0f} s. Model: MLP 64->64->10 (ONNX, the same file everywhere), batch 1."
        " nbdeploy with auth and metrics on.",
        "",
        "Baselines:",
    ]
    lines += [f"- {name}: {desc}" for name, desc in r["systems"].items()]
    lines += [
        "",
        "| system | payload | req/s c8 | p50 ms c8 | p99 ms c8 | p50 ms c1 | vs floor | vs Flask | vs KServe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        c8, c1 = row["c8"], row["c1"]
        vs = c8["vs"]
        name = row["label"] if row["system"] == "nbdeploy" else f"**{row['label']}**"
        errors = c8["errors"] + c1["errors"]
        lines.append(
            f"| {name}{f' ({errors} errors)' if errors else ''} | {row['payload']} | {c8['rps']:.0f} |"
            f" {c8['p50_ms']:.2f} | {c8['p99_ms']:.2f} | {c1['p50_ms']:.3f} |"
            f" {vs.get('floor', float('nan')):.2f}x | {vs.get('flask', float('nan')):.2f}x |"
            f" {vs.get('kserve', float('nan')):.2f}x |"
        )
    grpc_rows = [row for row in r["rows"] if "grpc_py_c1" in row]
    if grpc_rows:
        lines += [
            "",
            "V2 gRPC against V2 REST binary at concurrency 1 (one Python client each, sequential"
            " calls, interleaved; the last column is a no-op call, ServerLive, on the same gRPC"
            " port: what the gRPC stack itself costs a call):",
            "",
            "| endpoint | REST binary p50 / p99 ms | gRPC p50 / p99 ms | gRPC ServerLive p50 ms |",
            "|---|---|---|---|",
        ]
        for row in grpc_rows:
            rest, grpc = row["rest_binary_py_c1"], row["grpc_py_c1"]
            live = row.get("grpc_live_py_c1", {}).get("p50_ms", float("nan"))
            lines.append(
                f"| {row['label'].replace(' binary', '')} | {rest['p50_ms']:.3f} / {rest['p99_ms']:.3f} |"
                f" {grpc['p50_ms']:.3f} / {grpc['p99_ms']:.3f} | {live:.3f} |"
            )
    lines += [
        "",
        "Wide MLP (64->4096->4096->10, ~68 MB of weights), V2 binary, 16 connections:",
        "",
        "| runtime | batching on req/s | batching off req/s | gain | p50 ms on / off |",
        "|---|---|---|---|---|",
    ]
    for runtime, gain in r["batching_gain_wide_c16"].items():
        on = next(w for w in r["wide_c16"] if w["runtime"] == runtime and w["batching"])["c16"]
        off = next(w for w in r["wide_c16"] if w["runtime"] == runtime and not w["batching"])["c16"]
        lines.append(
            f"| {runtime} | {gain['rps_on']:.0f} | {gain['rps_off']:.0f} | {gain['gain']:.2f}x |"
            f" {on['p50_ms']:.2f} / {off['p50_ms']:.2f} |"
        )
    lines += ["", "Targets (issue 15):", "", "| target | this run | met |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    if r["notes"]:
        lines += ["", *[f"- {note}" for note in r["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
