"""How nbdeploy writes numbers and errors for people: one function each, so the same figure
prints the same in the magic, the panel, the CLI, the benchmark report and the REST views."""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
from collections.abc import Sequence
from typing import Any

MAX_REASON = 300


def ms(value: float | None) -> str:
    """Milliseconds with three significant figures or more (``0.123``, ``1.23``, ``12.3``, ``123``);
    empty for a missing or non-finite figure."""
    if value is None or not math.isfinite(value):
        return ""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def figure_img(figure: Any, alt: str, dpi: int = 90) -> str:
    """A matplotlib Figure as an HTML ``<img>`` carrying its PNG inline (any backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{encoded}'"
        " style='max-width:100%'>"
    )


def size(size_bytes: int | None) -> str:
    """``812.0 KiB`` below a MiB, ``1.25 MiB`` above; empty when unknown."""
    if size_bytes is None:
        return ""
    if size_bytes < 1 << 20:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes / (1 << 20):.2f} MiB"


def first_line(
    exc: BaseException, *, with_type: bool = False, cause: bool = False, lines: int = 1
) -> str:
    """The first non-empty line of an error, short enough for a table cell or a log line.

    ``cause`` reports the error that an nbdeploy error wraps, when there is one; ``with_type``
    prefixes the exception's class name (for errors that are not nbdeploy's own words);
    ``lines`` joins more than one line, for libraries that put the reason on the second.
    """
    if cause and exc.__cause__ is not None:
        exc = exc.__cause__
    found = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(found[:lines]) if found else type(exc).__name__
    if with_type and found:
        text = f"{type(exc).__name__}: {text}"
    return text[:MAX_REASON]


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> str:
    """An aligned plain-text table with a rule under the headers; ``right`` lists the columns
    to right-align (numbers)."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    numeric = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


_ORT_PREFIX = re.compile(r"(?:\b[A-Z]\w*: )?\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_NOISE = re.compile(
    r"Load model from \S+ failed:\s*|This is an invalid model\.\s*|(?:Type|Node) Error:\s*"
    r"|Non-zero status code returned while running \w+ node\. Name:'[^']*' Status Message:\s*"
)


def _temp_path() -> re.Pattern[str]:
    roots = sorted({tempfile.gettempdir().rstrip("/"), "/tmp", "/var/tmp"}, key=len, reverse=True)
    return re.compile(rf"(?:{'|'.join(map(re.escape, roots))})/(?:\S*/)?([^/\s:]+)")


def reason(exc: BaseException | str, *, cause: bool = False, with_type: bool = False) -> str:
    """One readable sentence for a failure, for variant and benchmark notes: onnxruntime's
    ``[ONNXRuntimeError] : N : CODE :`` prefix and its boilerplate go, and temporary paths
    (``/tmp/nbdeploy-quantize-x/fp16.onnx``) shrink to their file name. ``with_type`` keeps the
    exception's class name for errors that are not onnxruntime's."""
    text = exc if isinstance(exc, str) else first_line(exc, cause=cause)
    from_ort = "[ONNXRuntimeError]" in text
    text = _ORT_NOISE.sub("", _ORT_PREFIX.sub("", text)).replace(" in node ()", "")
    text = _temp_path().sub(r"\1", text)
    text = " ".join(text.split())
    if from_ort:
        text = text.split(". ", 1)[0].rstrip(".") + "."
    elif with_type and not isinstance(exc, str):
        text = f"{type(exc).__name__}: {text}"
    return text[:MAX_REASON]
