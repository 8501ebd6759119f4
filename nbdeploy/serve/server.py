"""Command line and process life: logging, uvicorn (and the gRPC port, with ``--grpc-port``),
graceful SIGTERM, exit codes.

Exit codes: 0 after a graceful stop (SIGTERM or SIGINT), 1 when a model cannot be loaded,
2 for a bad command line or model repository layout, 3 when the HTTP or gRPC address cannot be
bound (uvicorn's start-up failure code; a runtime may retry on another port).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from . import __version__
from .access import LOG_FORMAT, AccessLog, LogFile
from .app import create_app
from .connections import guarded_protocol
from .cpus import available_cpus
from .dataplane import ServerState
from .fastlane import FastLane
from .limits import REQUEST_WORKERS, default_budget
from .metrics import Metrics
from .model import RepositoryError, check_default_version, discover, version_directory
from .monitoring import LOG_MAX_BYTES, RequestLog
from .routing import RoutingError, read_routing
from .settings import INLINE_RUN_S, Settings

if TYPE_CHECKING:
    from .grpc_service import GrpcServer

log = logging.getLogger("nbdeploy.serve")

TOKEN_ENV = "NBDEPLOY_TOKEN"
ADMIN_TOKEN_ENV = "NBDEPLOY_ADMIN_TOKEN"
GRACEFUL_SHUTDOWN_S = 30.0
LOG_BACKUPS = 3
# How long a worker thread may hold the GIL while the event loop thread waits for it (Python's
# default is 5 ms). Answering one request takes the loop many GIL hand-overs, so with busy
# decode/encode threads 5 ms each would add up to health checks answered in hundreds of ms.
GIL_SWITCH_INTERVAL_S = 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nbdeploy.serve",
        description="Serve ONNX models over the Open Inference Protocol (V2, KServe/Triton HTTP).",
    )
    parser.add_argument(
        "--model-repository",
        required=True,
        type=Path,
        help="directory holding <name>/<version>/model.onnx (and nbdeploy.json)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_non_negative_int, default=8080)
    parser.add_argument(
        "--grpc-port",
        type=_non_negative_int,
        default=None,
        help="also serve V2 over gRPC on this port of --host (0: any free port; default: no gRPC)",
    )
    parser.add_argument(
        "--default-version",
        type=_non_negative_int,
        default=None,
        help="version served by unversioned routes (default: the highest)",
    )
    parser.add_argument(
        "--routing",
        type=Path,
        default=None,
        help="routing.json: serve only the versions it names, split by its weights",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="a writable directory where the server keeps a guard trip across restarts",
    )
    parser.add_argument("--max-batch-size", type=_positive_int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=_non_negative_float, default=2.0)
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument(
        "--inline-run-us",
        type=_non_negative_float,
        default=INLINE_RUN_S * 1e6,
        help="run a small request on the event loop itself when the model's recent small runs"
        " took under this many microseconds (0: always on the model's thread, where concurrent"
        " requests are merged)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="onnxruntime intra-op threads (default: the CPUs this process may use)",
    )
    parser.add_argument("--max-body-bytes", type=_positive_int, default=64 * 1024 * 1024)
    limits = parser.add_argument_group("limits (what one request or connection may cost)")
    limits.add_argument(
        "--memory-budget-bytes",
        type=_positive_int,
        default=None,
        help="memory the requests in flight may use together, estimated before decoding"
        " (default: 40%% of the cgroup memory limit, else of physical RAM; at most 2 GiB)",
    )
    limits.add_argument(
        "--max-json-elements",
        type=_positive_int,
        default=4_000_000,
        help="JSON values one request or response may hold (larger: use binary tensors)",
    )
    limits.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=64,
        help="infer requests in flight; more are answered 503 with Retry-After",
    )
    limits.add_argument(
        "--request-workers",
        type=_positive_int,
        default=REQUEST_WORKERS,
        help="threads that decode and encode big requests (more: the event loop, and with it"
        " the health routes, waits longer for the GIL while they work)",
    )
    limits.add_argument(
        "--request-timeout-s",
        type=_positive_float,
        default=60.0,
        help="an infer request not answered in this time gets a 504",
    )
    limits.add_argument("--header-timeout-s", type=_positive_float, default=10.0)
    limits.add_argument(
        "--body-timeout-s",
        type=_positive_float,
        default=30.0,
        help="longest wait for the next chunk of a request body (408 after it)",
    )
    limits.add_argument("--keep-alive-timeout-s", type=_positive_float, default=5.0)
    monitoring = parser.add_argument_group("request log (opt-in)")
    monitoring.add_argument(
        "--log-requests",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="append this fraction (0 < f <= 1) of answered requests, inputs and outputs, as"
        " JSON lines to DIR/requests.jsonl (needs --request-log-dir)",
    )
    monitoring.add_argument("--request-log-dir", type=Path, default=None, metavar="DIR")
    monitoring.add_argument(
        "--request-log-max-bytes",
        type=_positive_int,
        default=LOG_MAX_BYTES,
        help=f"rotate requests.jsonl at this size, keeping {LOG_BACKUPS} old ones",
    )
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument(
        "--log-max-bytes",
        type=_positive_int,
        default=10 * 1024 * 1024,
        help=f"rotate the log file at this size, keeping {LOG_BACKUPS} old ones",
    )
    parser.add_argument("--log-health", action="store_true", help="also log /v2/health/* requests")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    args = parser.parse_args(argv)
    if args.log_requests is not None and args.request_log_dir is None:
        parser.error("--log-requests needs --request-log-dir")
    if args.state_dir is not None and not (
        args.state_dir.is_dir() and os.access(args.state_dir, os.W_OK | os.X_OK)
    ):
        parser.error(f"--state-dir {args.state_dir} must be a directory this server can write")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _configure_logging(args.log_file, args.log_level, args.log_max_bytes)
    except OSError as exc:
        print(f"cannot open the log file {args.log_file}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.routing is not None:
            found = _routed_versions(args.model_repository, args.routing)
        else:
            found = discover(args.model_repository)
            check_default_version(found, args.default_version)
    except (RepositoryError, RoutingError) as exc:
        log.error("cannot serve: %s", exc)
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 2
    cpus = available_cpus()
    settings = Settings(
        repository=args.model_repository,
        found=found,
        threads=args.threads or cpus,
        default_version=args.default_version,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        batching=not args.no_batching,
        inline_run_s=args.inline_run_us / 1e6,
        max_body_bytes=args.max_body_bytes,
        token=os.environ.get(TOKEN_ENV) or None,
        routing_file=args.routing,
        state_dir=args.state_dir,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
        memory_budget_bytes=args.memory_budget_bytes or default_budget(),
        max_json_elements=args.max_json_elements,
        max_concurrency=args.max_concurrency,
        request_workers=args.request_workers,
        request_timeout_s=args.request_timeout_s,
        body_timeout_s=args.body_timeout_s,
        log_requests=args.log_requests,
        request_log_dir=args.request_log_dir,
    )
    try:
        request_log = _request_log(settings, args.request_log_max_bytes)
    except OSError as exc:
        log.error("cannot open the request log in %s: %s", args.request_log_dir, exc)
        print(f"cannot open the request log in {args.request_log_dir}: {exc}", file=sys.stderr)
        return 2
    _log_startup(settings, cpus)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    metrics = Metrics()
    state = ServerState(settings, metrics, request_log)
    access = AccessLog(create_app(state), metrics, log_health=args.log_health)
    config = uvicorn.Config(
        access,
        host=args.host,
        port=args.port,
        loop="auto",
        http=guarded_protocol(args.header_timeout_s, FastLane(state, access)),
        timeout_keep_alive=args.keep_alive_timeout_s,  # type: ignore[arg-type]
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=args.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        proxy_headers=False,  # the access log names the peer, on either lane
    )
    grpc_server = None
    if args.grpc_port is not None:
        try:
            from .grpc_service import GrpcServer  # grpcio only when gRPC is asked for
        except ImportError as exc:
            log.error("--grpc-port needs grpcio and protobuf 6: %s", exc)
            print(f"--grpc-port needs grpcio and protobuf 6: {exc}", file=sys.stderr)
            return 2
        grpc_server = GrpcServer(state, args.host, args.grpc_port, log_health=args.log_health)
    server = _Server(config, state, grpc_server)
    state.on_failure = server.request_exit
    try:
        server.run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    if state.failure is not None or not server.started:
        return 1
    log.info("exited cleanly")
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, with readiness dropped on the first signal and a clean exit status."""

    def __init__(
        self, config: uvicorn.Config, state: ServerState, grpc_server: GrpcServer | None = None
    ) -> None:
        super().__init__(config)
        self._state = state
        self._grpc = grpc_server

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stop_grpc()
        await super().shutdown(sockets)

    async def _stop_grpc(self) -> None:
        """Refuse new gRPC calls and let those in flight finish (before the batchers stop)."""
        if self._grpc is not None:
            await self._grpc.stop(GRACEFUL_SHUTDOWN_S)

    def request_exit(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises the signal after shutting down, which would end the process with
        # -SIGTERM instead of 0; a graceful stop is a success, so record nothing to re-raise.
        if not self._state.stopping:
            log.info(
                "received %s: readiness now 503, finishing in-flight requests",
                signal.Signals(sig).name,
            )
        self._state.stopping = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self._grpc is not None:
            try:
                await self._grpc.start()
            except OSError as exc:
                log.error("%s", exc)
                sys.exit(STARTUP_FAILURE)
        try:
            await super().startup(sockets)
        except SystemExit:
            await self._stop_grpc()
            raise
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("listening on http://%s:%d", host, port)


def _routed_versions(root: Path, path: Path) -> dict[str, dict[int, Path]]:
    """The versions a routing file names, each checked to hold a model under ``root``."""
    routing = read_routing(path)
    versions = {}
    for version in routing.versions:
        try:
            versions[version] = version_directory(root, routing.name, version)
        except RepositoryError as exc:
            raise RoutingError(f"{path} names version {version}, but {exc}") from None
    return {routing.name: versions}


def _request_log(settings: Settings, max_bytes: int) -> RequestLog | None:
    """The request log, opened now so that a directory it cannot write fails the start."""
    if settings.log_requests is None or settings.request_log_dir is None:
        return None
    settings.request_log_dir.mkdir(parents=True, exist_ok=True)
    request_log = RequestLog(settings.request_log_dir, max_bytes=max_bytes)
    request_log.open()
    return request_log


def _configure_logging(log_file: Path | None, level: str, max_bytes: int) -> None:
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = LogFile(
            log_file, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # LOG_FORMAT shows none of these: do not look them up for every record (the access log
    # writes one per request; see "Optimization" in the logging HOWTO).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _log_startup(settings: Settings, cpus: int) -> None:
    log.info(
        "nbdeploy serve %s from %s (python %s, onnxruntime %s, numpy %s)",
        __version__,
        Path(__file__).resolve().parent,
        platform.python_version(),
        ort.__version__,
        np.__version__,
    )
    log.info(
        "model repository %s: %s",
        settings.repository,
        {name: sorted(versions) for name, versions in settings.found.items()},
    )
    log.info(
        "onnxruntime: %d intra-op threads per session (%d usable CPUs)", settings.threads, cpus
    )
    if settings.routing_file is not None:
        log.info(
            "routing from %s; admin routes %s",
            settings.routing_file,
            "on" if settings.admin_token else "off (no NBDEPLOY_ADMIN_TOKEN)",
        )
    log.info(
        "dynamic batching: %s; request bodies up to %d bytes; bearer token %s",
        f"up to {settings.max_batch_size} rows, waiting at most {settings.max_queue_delay_ms} ms"
        if settings.batching
        else "off (--no-batching)",
        settings.max_body_bytes,
        "required" if settings.token else "off",
    )
    if settings.log_requests is not None:
        log.info(
            "request log: %g of answered requests to %s",
            settings.log_requests,
            settings.request_log_dir,
        )
    log.info(
        "limits: memory budget %d bytes, %d JSON values, %d infer requests in flight,"
        " %g s per request, %g s between body chunks",
        settings.memory_budget_bytes,
        settings.max_json_elements,
        settings.max_concurrency,
        settings.request_timeout_s,
        settings.body_timeout_s,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
