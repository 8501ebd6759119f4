"""The lab extension's ``IDeployment`` (labextension/src/api.ts) is the REST row, field for field.

The REST list emits ``DeploymentView.to_dict()``; the TypeScript interface is written by hand,
so this test reads it as text (no browser, no Jupyter server) and compares names, order and
types with the dataclass.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from nbdeploy.vocabulary import DeploymentView, VersionView

API_TS = Path(__file__).resolve().parents[2] / "labextension" / "src" / "api.ts"
TS_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def ts_type(hint: object) -> str:
    """The TypeScript spelling of a Python annotation: ``str | None`` -> ``string | null``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(ts_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(f"'{arg}'" for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return f"{ts_type(item)}[]"
    if dataclasses.is_dataclass(hint):
        return f"I{hint.__name__}"
    if hint in TS_TYPES:
        return TS_TYPES[hint]
    raise AssertionError(f"no TypeScript mapping for the annotation {hint!r}")


def python_fields(record: type = DeploymentView) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(record)
    return [(f.name, ts_type(hints[f.name])) for f in dataclasses.fields(record)]


def typescript_fields(interface: str = "IDeployment") -> list[tuple[str, str]]:
    source = API_TS.read_text()
    body = re.search(rf"export interface {interface}\s*\{{(.*?)\n\}}", source, re.DOTALL)
    assert body, f"no `export interface {interface} {{ ... }}` in {API_TS}"
    fields = re.findall(r"^\s*(\w+)\??\s*:\s*([^;]+);", body.group(1), re.MULTILINE)
    return [(name, " ".join(kind.split())) for name, kind in fields]


@pytest.mark.parametrize(
    ("record", "interface"), [(DeploymentView, "IDeployment"), (VersionView, "IVersionView")]
)
def test_interface_matches_record(record: type, interface: str) -> None:
    expected, actual = python_fields(record), typescript_fields(interface)
    if actual == expected:
        return
    want, have = dict(expected), dict(actual)
    problems = [f"missing in api.ts: {n}: {t}" for n, t in expected if n not in have]
    problems += [f"not in {record.__name__}: {n}: {t}" for n, t in actual if n not in want]
    problems += [
        f"type of {n}: api.ts has {have[n]}, {record.__name__} means {t}"
        for n, t in expected
        if n in have and have[n] != t
    ]
    if not problems:
        problems.append(
            f"order differs: api.ts has {[n for n, _ in actual]}, "
            f"{record.__name__} has {[n for n, _ in expected]}"
        )
    raise AssertionError(
        f"{interface} in {API_TS} does not match nbdeploy.vocabulary.{record.__name__}:\n  "
        + "\n  ".join(problems)
    )
