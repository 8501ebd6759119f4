"""The one exception type that becomes a 4xx response: the client got something wrong."""

from __future__ import annotations


class ClientError(Exception):
    """A request the server refuses, with the HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ClientError:
    return ClientError(400, message)


def not_found(message: str) -> ClientError:
    return ClientError(404, message)
