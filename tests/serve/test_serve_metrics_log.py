"""The server's light metric families and its direct access-log writer, in process.

Both replace library code on the hot path (``prometheus_client``'s metric types, ``logging``'s
record and handler for access lines), so both are checked against that library code: the same
observations must render the same exposition text, and the same message the same log line, with
the same rotation.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import re
from pathlib import Path

import prometheus_client
import pytest

from nbdeploy.serve.access import FLUSH_S, LOG_FORMAT, LineWriter, LogFile, _direct_handler
from nbdeploy.serve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Counter, Gauge, Histogram


def _exposition(registry: prometheus_client.CollectorRegistry) -> list[str]:
    """The exposition lines without the ``_created`` samples (the light families omit them)."""
    text = prometheus_client.generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_families_render_as_prometheus_client_does():
    light = prometheus_client.CollectorRegistry()
    native = prometheus_client.CollectorRegistry()
    counters = [
        Counter("c_requests", "Requests.", ["method", "status"], registry=light),
        prometheus_client.Counter("c_requests", "Requests.", ["method", "status"], registry=native),
    ]
    gauges = [
        Gauge("g_pending", "Pending.", ["model"], registry=light),
        prometheus_client.Gauge("g_pending", "Pending.", ["model"], registry=native),
    ]
    histograms = [
        Histogram("h_seconds", "Latency.", ["route"], buckets=LATENCY_BUCKETS, registry=light),
        prometheus_client.Histogram(
            "h_seconds", "Latency.", ["route"], buckets=LATENCY_BUCKETS, registry=native
        ),
    ]
    rows = [
        Histogram("h_rows", "Rows.", ["model"], buckets=BATCH_BUCKETS, registry=light),
        prometheus_client.Histogram(
            "h_rows", "Rows.", ["model"], buckets=BATCH_BUCKETS, registry=native
        ),
    ]
    for family in counters:
        family.labels("POST", "200").inc()
        family.labels("POST", "200").inc(2)
        family.labels("GET", "404").inc()
    for family in gauges:
        family.labels("a").inc()
        family.labels("a").inc()
        family.labels("a").dec()
        family.labels("b").inc(0)
    for family in histograms:
        for seconds in (0.0001, 0.0005, 0.0007, 0.003, 0.04, 2.0, 11.0):  # bounds included
            family.labels("/v2/models/{model}/infer").observe(seconds)
    for family in rows:
        for count in (1, 1, 3, 32, 600):
            family.labels("mlp").observe(count)
    assert _exposition(light) == _exposition(native)


def test_a_family_refuses_the_wrong_labels():
    registry = prometheus_client.CollectorRegistry()
    family = Counter("c_total_things", "Things.", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("only-one")


@pytest.fixture(params=[LogFile, logging.handlers.RotatingFileHandler])
def rotating(request: pytest.FixtureRequest, tmp_path: Path):
    """The root logger configured as the server configures it (``LogFile``), or with the
    standard library's rotating handler, to a small rotating file."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = request.param(tmp_path / "server.log", maxBytes=2048, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    handler.close()
    root.handlers[:], root.level = saved


def only_handler(handler: logging.Handler) -> logging.Logger:
    """The access logger, with ``handler`` the root logger's only handler again (pytest adds
    its own for the test's run) so that lines take ``LineWriter``'s direct path."""
    logging.getLogger().handlers[:] = [handler]
    logger = logging.getLogger("nbdeploy.serve.access")
    assert _direct_handler(logger) is handler
    return logger


def test_lines_look_like_logging_lines_and_rotate_alike(rotating, tmp_path: Path):
    logger = only_handler(rotating)
    writer = LineWriter(logger)

    async def write() -> None:
        for index in range(120):
            writer.info(f'127.0.0.1:5 "POST /v2/models/mlp/infer HTTP/1.1" 200 0.{index}ms é')
            if index % 7 == 0:
                logger.info("through logging %d", index)  # the same file, in between
        await asyncio.sleep(FLUSH_S * 1.5)  # the lines are flushed on their own

    asyncio.run(write())
    assert writer._unflushed is None
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["server.log", "server.log.1", "server.log.2", "server.log.3"]
    assert all(f.stat().st_size <= 2048 for f in files)
    lines = (tmp_path / "server.log").read_text(encoding="utf-8").splitlines()
    direct = [line for line in lines if "POST" in line]
    logged = [line for line in lines if "through logging" in line]
    assert direct and logged
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    for line in direct:
        assert re.fullmatch(
            stamp + r' INFO nbdeploy\.serve\.access: 127\.0\.0\.1:5 "POST /v2/models/mlp/infer'
            r' HTTP/1\.1" 200 0\.\d+ms é',
            line,
        ), line
    for line in logged:
        assert re.fullmatch(stamp + r" INFO nbdeploy\.serve\.access: through logging \d+", line)
    numbers = [int(line.split(" 0.")[1].split("ms")[0]) for line in direct]
    assert numbers == sorted(numbers) and numbers[-1] == 119


@pytest.mark.parametrize("rotating", [LogFile], indirect=True)
def test_lines_wait_in_the_buffer_of_the_servers_log_file(rotating, tmp_path: Path):
    """With the server's ``LogFile`` nothing asks the stream its position, so access lines
    reach the file together at the flush, not one write each (the standard handler's size
    check, ``tell()``, flushes the stream at every line)."""
    writer = LineWriter(only_handler(rotating))
    log_file = tmp_path / "server.log"
    before = log_file.stat().st_size

    async def write() -> list[int]:
        sizes = []
        for index in range(5):
            writer.info(f"line {index}")
            sizes.append(log_file.stat().st_size)
        await asyncio.sleep(FLUSH_S * 1.5)
        return sizes

    assert asyncio.run(write()) == [before] * 5
    assert log_file.stat().st_size == rotating.size > before
    assert log_file.read_text(encoding="utf-8").count(" INFO nbdeploy.serve.access: line ") == 5


def test_lines_go_through_logging_when_it_is_configured_otherwise(caplog):
    writer = LineWriter(logging.getLogger("nbdeploy.serve.access"))
    with caplog.at_level(logging.INFO, logger="nbdeploy.serve.access"):
        writer.info("a line")
    assert [record.getMessage() for record in caplog.records] == ["a line"]
