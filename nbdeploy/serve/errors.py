"""The one exception type that becomes a 4xx/5xx response, and how messages quote client input."""

from __future__ import annotations

from typing import Any

# What an error message may quote of the client's own input: enough to recognise it, never
# so much that a request of 100k bogus names gets them all echoed back (or logged).
QUOTE_CHARS = 100
QUOTE_ITEMS = 5


class ClientError(Exception):
    """A request the server refuses, with the HTTP status and a message naming the problem;
    ``headers`` go on the response (``Retry-After`` on a 503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # The model itself failed to run on the request (an error for monitoring, even as a 4xx).
        self.model_failure = False


def bad_request(message: str) -> ClientError:
    return ClientError(400, message)


def not_found(message: str) -> ClientError:
    return ClientError(404, message)


def busy(message: str) -> ClientError:
    """A 503 the client should retry in a second: the server is full, not broken."""
    return ClientError(503, message, {"Retry-After": "1"})


def quote(value: Any) -> str:
    """``repr(value)``, cut to QUOTE_CHARS characters."""
    return clip(repr(value))


def clip(text: str) -> str:
    """``text`` cut to QUOTE_CHARS characters."""
    return text if len(text) <= QUOTE_CHARS else f"{text[: QUOTE_CHARS - 3]}..."


def quote_names(names: list[str]) -> str:
    """The first QUOTE_ITEMS names, each quoted, and how many more there are."""
    shown = ", ".join(quote(name) for name in names[:QUOTE_ITEMS])
    more = len(names) - QUOTE_ITEMS
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


def name_problems(expected: list[str], given: list[str]) -> str | None:
    """``missing [...], unexpected [...]`` when ``given`` names are not exactly ``expected``."""
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing {quote_names(missing)}")
    if extra:
        problems.append(f"unexpected {quote_names(extra)}")
    return ", ".join(problems) or None
