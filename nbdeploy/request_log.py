"""The opt-in inference log: a sampled fraction of the requests a deployment answered, with
what it answered, kept as JSON lines by its server and read back here as a DataFrame (the
start of the next training set).

The server appends ``{"t", "version", "inputs": {name: rows}, "outputs": {name: rows}}`` to
``requests.jsonl`` in the name's request directory and rotates it by size
(``requests.jsonl.1`` is the previous file, and so on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nbdeploy import _settings
from nbdeploy._errors import InputError
from nbdeploy.vocabulary import check_name

LOG_FILE = "requests.jsonl"
BACKUPS = 3


def requests_dir(name: str) -> Path:
    """``NBDEPLOY_HOME/requests/<name>/``: private to the user, shared with the container's
    server through the user's group (new files take the directory's group: setgid)."""
    path = _settings.home() / "requests" / check_name(name)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o2770)
    return path


def check_fraction(value: Any) -> float | None:
    """``log_requests``: None (off) or a fraction of requests in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise InputError(
            f"log_requests is the fraction of requests to keep, above 0 and at most 1"
            f" (e.g. 0.01 for 1%); got {value!r}"
        )
    return float(value)


def log_files(name: str) -> list[Path]:
    """The log and its rotated predecessors, oldest first."""
    directory = _settings.home() / "requests" / check_name(name)
    names = [f"{LOG_FILE}.{i}" for i in range(BACKUPS, 0, -1)] + [LOG_FILE]
    return [directory / n for n in names if (directory / n).is_file()]


def load(name: str, version: int | None = None, limit: int | None = None) -> Any:
    """The logged requests of ``name`` (of one ``version``), one DataFrame row per input
    row: ``t`` (UNIX time), ``version``, then the inputs (one column per input, or
    ``input[i]`` per feature of a wider input) and the outputs (by name, or
    ``output[i]``); the newest ``limit`` rows when given."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for path in log_files(name):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: the rest still loads
                if version is not None and record.get("version") != version:
                    continue
                rows.extend(_rows(record))
    if limit is not None:
        rows = rows[-limit:]
    return pd.DataFrame(rows)


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per batch row of a logged request."""
    tensors = {
        **record.get("inputs", {}),
        **{
            (name if name not in record.get("inputs", {}) else f"output:{name}"): value
            for name, value in record.get("outputs", {}).items()
        },
    }
    count = max((len(value) for value in tensors.values() if isinstance(value, list)), default=0)
    found = []
    for i in range(count):
        row: dict[str, Any] = {"t": record.get("t"), "version": record.get("version")}
        for name, value in tensors.items():
            cell = value[i] if isinstance(value, list) and i < len(value) else None
            if isinstance(cell, list) and len(cell) == 1 and not isinstance(cell[0], list):
                row[name] = cell[0]
            elif isinstance(cell, list) and all(not isinstance(v, list) for v in cell):
                row.update({f"{name}[{j}]": v for j, v in enumerate(cell)})
            else:
                row[name] = cell
        found.append(row)
    return found
