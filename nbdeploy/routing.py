"""The host's side of a name's routing: the file its server reads, the lock writers take, and
the server's admin routes.

Each name has a serving directory ``NBDEPLOY_HOME/serving/<name>/`` holding ``routing.json``:
which versions the name's one server holds and what share of unversioned traffic each gets.
The host rewrites it atomically and asks the server to reload it; the server reads it again
whenever it restarts, so versions and weights survive a crash or a ``docker restart``.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nbdeploy import _settings
from nbdeploy._errors import DeployError, InputError
from nbdeploy.vocabulary import Guards, TrafficRole, check_name

ROUTING_FILE = "routing.json"
LOCK_FILE = ".lock"
STATE_DIR = "state"
SCHEMA = 1
ADMIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Routing:
    """Which versions serve a name and how unversioned traffic is split between them."""

    name: str
    stable: int
    weights: dict[int, int]
    shadow: tuple[int, ...] = ()
    guards: Guards | None = None
    guarded: int | None = None
    """The version the guards watch (the canary)."""
    generation: int = 0

    def __post_init__(self) -> None:
        if sum(self.weights.values()) != 100 or any(w < 0 for w in self.weights.values()):
            raise InputError(
                f"traffic weights must be whole percents of 0 or more that add up to 100;"
                f" got {format_weights(self.weights)}"
            )
        if self.stable not in self.weights:
            raise InputError(f"the stable version {self.stable} must be among the weights")

    @property
    def versions(self) -> list[int]:
        """Every version the server holds."""
        return sorted(set(self.weights) | set(self.shadow))

    @property
    def candidates(self) -> list[int]:
        """Versions being tried: canaries and shadows, newest first."""
        return sorted((v for v in self.versions if v != self.stable), reverse=True)

    def role(self, version: int) -> TrafficRole:
        if version == self.stable:
            return "stable"
        if version in self.shadow:
            return "shadow"
        return "canary" if self.weights.get(version, 0) > 0 else "idle"

    def to_json(self) -> dict[str, Any]:
        guards = None
        if self.guards is not None and not self.guards.empty and self.guarded is not None:
            guards = {"version": self.guarded, **self.guards.to_dict()}
        return {
            "schema": SCHEMA,
            "name": self.name,
            "generation": self.generation,
            "stable": self.stable,
            "weights": {str(v): int(w) for v, w in sorted(self.weights.items())},
            "shadow": sorted(self.shadow),
            "guards": guards,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Routing:
        guards = dict(data.get("guards") or {})
        guarded = guards.pop("version", None)
        return cls(
            name=str(data["name"]),
            stable=int(data["stable"]),
            weights={int(v): int(w) for v, w in dict(data["weights"]).items()},
            shadow=tuple(int(v) for v in data.get("shadow") or ()),
            guards=Guards.from_dict(guards) if guards else None,
            guarded=int(guarded) if guarded is not None else None,
            generation=int(data.get("generation") or 0),
        )

    def next(self, **changes: Any) -> Routing:
        """This routing with ``changes``, one generation later; guards stay only while the
        version they watch still takes traffic as a canary."""
        changed = replace(self, generation=self.generation + 1, **changes)
        if changed.guarded is not None and changed.role(changed.guarded) != "canary":
            changed = replace(changed, guards=None, guarded=None)
        return changed


def format_weights(weights: Mapping[int, int]) -> str:
    return " ".join(f"v{v}:{w}%" for v, w in sorted(weights.items())) or "none"


def parse_weights(weights: Any) -> dict[int, int]:
    """``{version: percent}`` from a mapping whose keys and values may be strings (REST, CLI)."""
    if not isinstance(weights, Mapping) or not weights:
        raise InputError(
            f"traffic must be a mapping of version to percent, e.g. {{1: 90, 2: 10}}; got {weights!r}"
        )
    parsed: dict[int, int] = {}
    for key, value in weights.items():
        version, percent = _whole(key, "version"), _whole(value, "percent")
        if version < 1:
            raise InputError(f"versions start at 1; got {key!r}")
        if not 0 <= percent <= 100:
            raise InputError(f"a traffic share is a percent from 0 to 100; got {value!r}")
        parsed[version] = percent
    if sum(parsed.values()) != 100:
        raise InputError(
            f"traffic shares must add up to 100; {format_weights(parsed)} adds up to"
            f" {sum(parsed.values())}"
        )
    return parsed


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"a {what} must be a whole number; got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InputError(f"a {what} must be a whole number; got {value!r}")


def serving_dir(name: str) -> Path:
    """``NBDEPLOY_HOME/serving/<name>/``, readable by its owner and the owner's group (the
    container's server user is given that group, see the docker runtime)."""
    path = _settings.home() / "serving" / check_name(name)
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    path.chmod(0o750)
    return path


def state_dir(name: str) -> Path:
    """``serving/<name>/state/``: the one place the name's server writes, to keep a guard trip
    across its restarts until the host records it; shared with the container's server user
    through the owner's group (new files take the directory's group: setgid)."""
    path = serving_dir(name) / STATE_DIR
    path.mkdir(exist_ok=True)
    path.chmod(0o2770)
    return path


def routing_path(name: str) -> Path:
    return serving_dir(name) / ROUTING_FILE


def write_routing(routing: Routing) -> Path:
    """Replace the routing file atomically (a server reading it sees the old or the new)."""
    directory = serving_dir(routing.name)
    fd, temporary = tempfile.mkstemp(prefix=".routing-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(routing.to_json(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o640)
        os.replace(temporary, directory / ROUTING_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return directory / ROUTING_FILE


def read_routing(name: str) -> Routing | None:
    try:
        return Routing.from_json(json.loads(routing_path(name).read_text()))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


@contextlib.contextmanager
def name_lock(name: str) -> Iterator[None]:
    """Serialise every change to one name's server across threads, kernels and processes."""
    with open(serving_dir(name) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class AdminClient:
    """The server's ``/nbdeploy/*`` routes, with its admin token: straight to the server (no
    proxy from the environment), and only once the process on the port proved it holds that
    token (the identity challenge), so the token never reaches another process."""

    url: str
    token: str
    timeout: float = 5.0
    name: str | None = None

    def routing(self) -> dict[str, Any]:
        return self._call("GET", "/nbdeploy/routing")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/nbdeploy/stats")

    def series(self, window: float) -> dict[str, Any]:
        return self._call("GET", f"/nbdeploy/series?window={int(window)}")

    def drift(self) -> dict[str, Any]:
        return self._call("GET", "/nbdeploy/drift")

    def reload(self, timeout: float = ADMIN_TIMEOUT_S) -> dict[str, Any]:
        return self._call("POST", "/nbdeploy/reload", timeout=timeout)

    def _call(self, method: str, path: str, timeout: float | None = None) -> dict[str, Any]:
        parsed = urlsplit(self.url)
        connection = _ProvenConnection(
            parsed.hostname or "127.0.0.1",
            parsed.port,
            timeout or self.timeout,
            self.token,
            self.name,
        )
        try:
            connection.request(
                method,
                path,
                body=b"" if method == "POST" else None,
                headers={"Authorization": f"Bearer {self.token}"},
            )
            response = connection.getresponse()
            body = response.read()
        except DeployError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise DeployError(f"the server at {self.url} did not answer {path}: {exc}") from None
        finally:
            connection.close()
        if response.status >= 400:
            raise AdminError(response.status, _error_text(body, response.status))
        try:
            return dict(json.loads(body))
        except ValueError as exc:
            raise DeployError(f"the server at {self.url} answered {path} with {exc}") from None


class _ProvenConnection(http.client.HTTPConnection):
    """A connection whose socket is used only after the server proved it holds the token."""

    def __init__(
        self, host: str, port: int | None, timeout: float, token: str, name: str | None
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._token, self._name = token, name

    def connect(self) -> None:
        from nbdeploy.client import prove_identity_on_socket

        super().connect()
        assert self.sock is not None
        prove_identity_on_socket(
            self.sock, self.host, self.port, self._token, self._name, key="admin_proof"
        )


class AdminError(DeployError):
    """The server refused an admin call (``status``: its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_text(body: bytes, status: int) -> str:
    try:
        found = json.loads(body)
        return str(found.get("error") or found)
    except (ValueError, AttributeError):
        return f"HTTP {status}"
