"""Command line and process life: logging, uvicorn, graceful SIGTERM, exit codes.

Exit codes: 0 after a graceful stop (SIGTERM or SIGINT), 1 when a model cannot be loaded,
2 for a bad command line or model repository layout, 3 when the address cannot be bound
(uvicorn's start-up failure code; a runtime may retry on another port).
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

import numpy as np
import onnxruntime as ort
import uvicorn

from . import __version__
from .access import AccessLog
from .app import create_app
from .cpus import available_cpus
from .dataplane import ServerState
from .metrics import Metrics
from .model import RepositoryError, check_default_version, discover, version_directory
from .routing import RoutingError, read_routing
from .settings import Settings

log = logging.getLogger("nbdeploy.serve")

TOKEN_ENV = "NBDEPLOY_TOKEN"
ADMIN_TOKEN_ENV = "NBDEPLOY_ADMIN_TOKEN"
GRACEFUL_SHUTDOWN_S = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    parser.add_argument("--max-batch-size", type=_positive_int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=_non_negative_float, default=2.0)
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="onnxruntime intra-op threads (default: the CPUs this process may use)",
    )
    parser.add_argument("--max-body-bytes", type=_positive_int, default=64 * 1024 * 1024)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _configure_logging(args.log_file, args.log_level)
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
        max_body_bytes=args.max_body_bytes,
        token=os.environ.get(TOKEN_ENV) or None,
        routing_file=args.routing,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
    )
    _log_startup(settings, cpus)
    metrics = Metrics()
    state = ServerState(settings, metrics)
    config = uvicorn.Config(
        AccessLog(create_app(state), metrics),
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=args.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    server = _Server(config, state)
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

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

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
        await super().startup(sockets)
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


def _configure_logging(log_file: Path | None, level: str) -> None:
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
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


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
