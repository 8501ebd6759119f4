"""What writing one access line costs the server, by log handler, in process.

``LineWriter`` writes each access line to the root handler's stream and flushes every 100 ms.
With the standard library's ``RotatingFileHandler`` the size check before each line calls the
text stream's ``tell()``, which flushes it: a write and an lseek per line. The server's
``LogFile`` knows its size and lets the lines wait. Both write the same lines to a file in
interleaved rounds on an event loop, as in the server.

    .venv/bin/python benchmarks/bench_access_log.py [--rounds 5] [--lines 20000]

Writes (and prints) ``results/access_log.json`` and ``results/access_log.md``: the median over
rounds of the µs per line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import write_report  # noqa: E402

from nbdeploy.serve.access import LOG_FORMAT, LineWriter, LogFile  # noqa: E402

LINE = '127.0.0.1:50312 "POST /v2/models/mlp/infer HTTP/1.1" 200 0.184ms'
HANDLERS = {"RotatingFileHandler": logging.handlers.RotatingFileHandler, "LogFile": LogFile}


def one_round(handler_class: type[logging.handlers.RotatingFileHandler], lines: int) -> float:
    """µs per line for ``lines`` access lines written through ``handler_class``."""
    directory = Path(tempfile.mkdtemp(prefix="bench-access-log-"))
    handler = handler_class(
        directory / "server.log", maxBytes=64 << 20, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    writer = LineWriter(logging.getLogger("nbdeploy.serve.access"))

    async def write() -> float:
        began = time.perf_counter()
        for _ in range(lines):
            writer.info(LINE)
        elapsed = time.perf_counter() - began
        writer.flush()
        return elapsed

    try:
        return asyncio.run(write()) / lines * 1e6
    finally:
        handler.close()
        root.handlers[:], root.level = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in HANDLERS}
    for _ in range(args.rounds):
        for name, handler_class in HANDLERS.items():
            runs[name].append(one_round(handler_class, args.lines))
    summary = {name: statistics.median(values) for name, values in runs.items()}
    write_report(
        "access_log",
        {"rounds": args.rounds, "lines": args.lines, "us_per_line": summary},
        f"One access line written by LineWriter ({args.rounds} interleaved rounds of"
        f" {args.lines} lines; medians)",
        ["handler", "µs per line"],
        [[name, f"{value:.2f}"] for name, value in summary.items()],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
