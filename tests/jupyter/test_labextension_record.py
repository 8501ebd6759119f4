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

from nbdeploy.vocabulary import DeploymentView

API_TS = Path(__file__).resolve().parents[2] / "labextension" / "src" / "api.ts"
TS_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def ts_type(hint: object) -> str:
    """The TypeScript spelling of a Python annotation: ``str | None`` -> ``string | null``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(ts_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(f"'{arg}'" for arg in typing.get_args(hint))
    if hint in TS_TYPES:
        return TS_TYPES[hint]
    raise AssertionError(f"no TypeScript mapping for the annotation {hint!r}")


def python_fields() -> list[tuple[str, str]]:
    hints = typing.get_type_hints(DeploymentView)
    return [(f.name, ts_type(hints[f.name])) for f in dataclasses.fields(DeploymentView)]


def typescript_fields() -> list[tuple[str, str]]:
    source = API_TS.read_text()
    body = re.search(r"export interface IDeployment\s*\{(.*?)\n\}", source, re.DOTALL)
    assert body, f"no `export interface IDeployment {{ ... }}` in {API_TS}"
    fields = re.findall(r"^\s*(\w+)\??\s*:\s*([^;]+);", body.group(1), re.MULTILINE)
    return [(name, " ".join(kind.split())) for name, kind in fields]


def test_ideployment_matches_deployment_view() -> None:
    expected, actual = python_fields(), typescript_fields()
    if actual == expected:
        return
    want, have = dict(expected), dict(actual)
    problems = [f"missing in api.ts: {n}: {t}" for n, t in expected if n not in have]
    problems += [f"not in DeploymentView: {n}: {t}" for n, t in actual if n not in want]
    problems += [
        f"type of {n}: api.ts has {have[n]}, DeploymentView means {t}"
        for n, t in expected
        if n in have and have[n] != t
    ]
    if not problems:
        problems.append(
            f"order differs: api.ts has {[n for n, _ in actual]}, "
            f"DeploymentView has {[n for n, _ in expected]}"
        )
    raise AssertionError(
        f"IDeployment in {API_TS} does not match nbdeploy.vocabulary.DeploymentView:\n  "
        + "\n  ".join(problems)
    )
