"""The routing file (``routing.json``, schema 1) and smooth weighted round-robin.

The host owns the file and rewrites it atomically; the server only reads it, at start-up and on
``POST /nbdeploy/reload``. Every problem in it is reported in one sentence naming the key, so a
host (or a person editing it) can fix it without reading this code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
_KEYS = {"schema", "name", "generation", "stable", "weights", "shadow", "guards"}
_GUARD_KEYS = {"version", "max_error_rate", "min_agreement", "max_p99_ms", "min_requests"}


class RoutingError(Exception):
    """The routing file cannot be applied; the message says why."""


@dataclass(frozen=True)
class Guards:
    """Limits one candidate version must stay within; None means not checked."""

    version: int
    max_error_rate: float | None = None
    min_agreement: float | None = None
    max_p99_ms: float | None = None
    min_requests: int = 20

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "max_error_rate": self.max_error_rate,
            "min_agreement": self.min_agreement,
            "max_p99_ms": self.max_p99_ms,
            "min_requests": self.min_requests,
        }


@dataclass(frozen=True)
class Routing:
    """One validated routing file: which versions are loaded and who gets unversioned traffic."""

    name: str
    generation: int
    stable: int
    weights: dict[int, int]
    shadow: tuple[int, ...]
    guards: Guards | None

    @property
    def versions(self) -> list[int]:
        """Every version the server must hold loaded."""
        return sorted(set(self.weights) | set(self.shadow))


def read_routing(path: Path) -> Routing:
    """Read and validate ``path``, or raise RoutingError with one readable sentence."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RoutingError(f"the routing file {path} does not exist") from None
    except OSError as exc:
        raise RoutingError(f"cannot read the routing file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RoutingError(f"the routing file {path} is not valid JSON: {exc}") from None
    try:
        return parse_routing(data)
    except RoutingError as exc:
        raise RoutingError(f"the routing file {path} is invalid: {exc}") from None


def parse_routing(data: Any) -> Routing:
    """Validate the decoded JSON of a routing file."""
    if not isinstance(data, dict):
        raise RoutingError("it must hold a JSON object")
    _no_unknown_keys(data, _KEYS, "")
    missing = sorted(_KEYS - {"guards"} - set(data))
    if missing:
        raise RoutingError(f"it lacks the key(s) {missing}")
    if data["schema"] != SCHEMA:
        raise RoutingError(f"'schema' is {data['schema']!r}; this server reads schema {SCHEMA}")
    name = data["name"]
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise RoutingError(f"'name' must be a model name, got {name!r}")
    generation = _integer(data["generation"], "'generation'", minimum=0)
    stable = _integer(data["stable"], "'stable'", minimum=0)
    weights = _weights(data["weights"])
    shadow = _shadow(data["shadow"])
    if stable not in weights:
        raise RoutingError(f"'stable' version {stable} is not a key of 'weights' {_show(weights)}")
    for version in shadow:
        if version == stable:
            raise RoutingError(f"the stable version {version} cannot also be in 'shadow'")
        if weights.get(version, 0) > 0:
            raise RoutingError(
                f"version {version} is in 'shadow' and has weight {weights[version]};"
                " a shadow gets mirrored traffic only (weight 0)"
            )
    guards = _guards(data.get("guards"), set(weights) | set(shadow), stable)
    return Routing(name, generation, stable, weights, shadow, guards)


def _weights(value: Any) -> dict[int, int]:
    if not isinstance(value, dict) or not value:
        raise RoutingError(f"'weights' must be an object like {{\"1\": 100}}, got {value!r}")
    weights: dict[int, int] = {}
    for key, weight in value.items():
        if not (isinstance(key, str) and key.isdigit() and key == str(int(key))):
            raise RoutingError(f"'weights' key {key!r} is not a version number")
        weights[int(key)] = _integer(weight, f"the weight of version {key}", minimum=0)
    total = sum(weights.values())
    if total != 100:
        raise RoutingError(f"'weights' {_show(weights)} sum to {total}, not 100")
    return dict(sorted(weights.items()))


def _shadow(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RoutingError(f"'shadow' must be a list of versions, got {value!r}")
    versions = [_integer(item, "a 'shadow' entry", minimum=0) for item in value]
    if len(set(versions)) != len(versions):
        raise RoutingError(f"'shadow' {versions} names a version twice")
    return tuple(versions)


def _guards(value: Any, loaded: set[int], stable: int) -> Guards | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RoutingError(f"'guards' must be null or an object, got {value!r}")
    _no_unknown_keys(value, _GUARD_KEYS, "guards.")
    if "version" not in value:
        raise RoutingError("'guards' lacks 'version', the version it watches")
    version = _integer(value["version"], "'guards.version'", minimum=0)
    if version not in loaded:
        raise RoutingError(f"'guards.version' {version} is not in 'weights' or 'shadow'")
    if version == stable:
        raise RoutingError(f"'guards.version' {version} is the stable version; guard a candidate")
    return Guards(
        version=version,
        max_error_rate=_fraction(value.get("max_error_rate"), "guards.max_error_rate"),
        min_agreement=_fraction(value.get("min_agreement"), "guards.min_agreement"),
        max_p99_ms=_positive(value.get("max_p99_ms"), "guards.max_p99_ms"),
        min_requests=_integer(value.get("min_requests", 20), "'guards.min_requests'", minimum=1),
    )


def _no_unknown_keys(data: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(f"'{prefix}{key}'" for key in unknown)
        raise RoutingError(f"unknown key(s) {names}; known: {sorted(known)}")


def _integer(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RoutingError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _fraction(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RoutingError(f"'{what}' must be null or a number between 0 and 1, got {value!r}")
    return float(value)


def _positive(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RoutingError(f"'{what}' must be null or a number above 0, got {value!r}")
    return float(value)


def _show(weights: dict[int, int]) -> str:
    return json.dumps({str(version): weight for version, weight in weights.items()})


class SmoothRoundRobin:
    """nginx's smooth weighted round-robin: exact proportions over every ``sum(weights)``
    picks, and the picks of a small version are spread out instead of bunched together."""

    def __init__(self, weights: dict[int, int]) -> None:
        self._weights = {version: weight for version, weight in weights.items() if weight > 0}
        self._total = sum(self._weights.values())
        self._current = dict.fromkeys(self._weights, 0)

    def pick(self) -> int:
        best = None
        for version, weight in self._weights.items():
            self._current[version] += weight
            if best is None or self._current[version] > self._current[best]:
                best = version
        assert best is not None, "weights sum to 100, so one version has weight > 0"
        self._current[best] -= self._total
        return best
