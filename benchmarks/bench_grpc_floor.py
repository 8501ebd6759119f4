"""What a gRPC call costs in Python before any server work: a no-op ServerLive on a bare grpcio
server (sync, ``grpc.aio``, ``grpc.aio`` on uvloop), called by the sequential client
``bench_serving.py`` uses for gRPC. nbdeploy's gRPC port cannot answer faster than this.

    .venv/bin/python benchmarks/bench_grpc_floor.py [--calls 3000] [--rounds 3]

Prints the median over rounds of each server's p50 in milliseconds, and writes
``results/grpc_floor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

REPO = Path(__file__).resolve().parents[1]


class SyncService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request, context):  # noqa: N802 - the protocol's name
        return service_pb2.ServerLiveResponse(live=True)


class AsyncService(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):  # noqa: N802
        return service_pb2.ServerLiveResponse(live=True)


def p50_of_calls(port: int, calls: int) -> float:
    """p50 in ms of sequential ServerLive calls on one channel (the first tenth warms up)."""
    times = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ServerLiveRequest()
        for i in range(calls + calls // 10):
            began = time.perf_counter_ns()
            stub.ServerLive(request, timeout=30)
            if i >= calls // 10:
                times.append((time.perf_counter_ns() - began) / 1e6)
    return statistics.median(times)


def sync_server(calls: int) -> float:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(SyncService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        return p50_of_calls(port, calls)
    finally:
        server.stop(0)


def aio_server(calls: int, uvloop: bool) -> float:
    async def serve() -> float:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(AsyncService(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.to_thread(p50_of_calls, port, calls)
        finally:
            await server.stop(0)

    if uvloop:
        import uvloop as loops

        return loops.run(serve())
    return asyncio.run(serve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    servers = {
        "sync": lambda: sync_server(args.calls),
        "aio": lambda: aio_server(args.calls, uvloop=False),
        "aio-uvloop": lambda: aio_server(args.calls, uvloop=True),
    }
    rounds: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, measure in servers.items():
            rounds[name].append(measure())
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grpc_floor.json").write_text(
        json.dumps({"calls": args.calls, "rounds": rounds, "p50_ms": medians}, indent=1)
    )
    for name, value in medians.items():
        print(f"{name:11s} ServerLive p50 {value:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
