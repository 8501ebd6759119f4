"""The vocabulary is the one place choices live: every surface and registry follows it."""

from __future__ import annotations

import argparse

import pytest

from nbdeploy import cli
from nbdeploy._errors import InputError
from nbdeploy.runtimes import Runtime, runtime_class
from nbdeploy.vocabulary import (
    QUANTIZE_CHOICES,
    QUANTIZE_MODES,
    RUNTIME_CHOICES,
    RUNTIME_KINDS,
    STAGE_FRACTIONS,
    ProgressEvent,
    Stage,
    check_name,
    safe_name,
)


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_every_runtime_kind_has_its_module(kind: str) -> None:
    cls = runtime_class(kind)
    assert issubclass(cls, Runtime) and cls.name == kind


def test_every_quantize_mode_is_understood_by_the_optimizer() -> None:
    from nbdeploy.optimize import _requested_modes

    assert _requested_modes(QUANTIZE_MODES) == list(QUANTIZE_MODES)


def _cli_choices(command: str, option: str) -> tuple[str, ...]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return tuple(action.choices)


def test_surfaces_offer_the_vocabulary_choices() -> None:
    from nbdeploy.jupyter.magics import DeployMagic

    assert _cli_choices("deploy", "--quantize") == QUANTIZE_CHOICES
    assert _cli_choices("deploy", "--runtime") == RUNTIME_CHOICES
    assert tuple(DeployMagic.class_traits()["runtime"].values) == RUNTIME_CHOICES
    assert tuple(DeployMagic.class_traits()["default_quantize"].values) == QUANTIZE_CHOICES


@pytest.mark.parametrize("good", ["digits", "a", "digits-cnn_v2.1", "0" * 63])
def test_the_name_rule_accepts_safe_names(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize("bad", ["Digits", "digits\n", "", "-x", "x" * 64, "a/b", "é", 3, None])
def test_the_name_rule_refuses_the_whole_of_anything_else(bad: object) -> None:
    with pytest.raises(InputError, match="invalid model name"):
        check_name(bad)


@pytest.mark.parametrize("text", ["My Model!", "---", "Ünïcode.onnx", "x" * 200])
def test_safe_name_always_makes_a_valid_name(text: str) -> None:
    assert check_name(safe_name(text))


def test_every_stage_has_a_fraction_and_events_render_as_lines() -> None:
    from typing import get_args

    assert set(get_args(Stage)) == set(STAGE_FRACTIONS)
    event = ProgressEvent("export", "converting")
    assert str(event) == "export: converting" and event.fraction == STAGE_FRACTIONS["export"]
    assert str(ProgressEvent("image", "Step 1/4", detail=True)) == "Step 1/4"
