"""Where a benchmark leaves its figures: ``results/<name>.json`` (everything) and
``results/<name>.md`` (a title and one table), the table also printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(
    name: str,
    data: dict[str, Any],
    title: str,
    columns: list[str],
    rows: list[list[str]],
    out: Path = RESULTS,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
