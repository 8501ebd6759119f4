"""The notebook surfaces (``%deploy`` magics, ``DeployPanel``) and the few helpers they share.

Both surfaces resolve what the user typed in the user's namespace, find model and sample
variables there, and open demos the same way; those helpers live here so the magic (which
must not need ipywidgets) and the panel agree.
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbdeploy._errors import InputError
from nbdeploy.artifact import ModelArtifact

MODEL_FILE_SUFFIXES = (".onnx", ".keras", ".h5")


class ExpressionError(InputError):
    """Something the user typed (a variable name or expression) could not be evaluated."""


def evaluate(expression: str, namespace: Mapping[str, Any], *, what: str) -> Any:
    """Evaluate ``expression`` (e.g. ``x_test[:8]``) in the user's namespace.

    ``what`` names the argument in the message, so a typo reads as one clear line instead of
    a traceback from inside nbdeploy.
    """
    text = expression.strip()
    try:
        code = compile(text, f"<{what}>", "eval")
    except SyntaxError as exc:
        raise ExpressionError(
            f"{what} {text!r} is not a valid Python expression: {exc.msg}"
        ) from exc
    try:
        return eval(code, dict(namespace))
    except NameError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        hint = _name_hint(namespace, what, missing)
        raise ExpressionError(
            f"{what}: no variable named {missing!r} in the notebook namespace{hint}"
        ) from exc
    except Exception as exc:
        raise ExpressionError(
            f"{what} {text!r} could not be evaluated: {type(exc).__name__}: {exc}"
        ) from exc


WEIGHT_PAIR = re.compile(r"(\d+)[=:](\d+)%?")


def parse_weights(pairs: Sequence[str]) -> dict[int, int]:
    """``["1=90", "2=10"]`` (or ``1:90``, as listings print it) as ``{1: 90, 2: 10}``.

    Only the shape is checked here; whether the percents add up and the versions exist is the
    core's call, so every surface gets the same answer.
    """
    weights: dict[int, int] = {}
    for pair in pairs:
        match = WEIGHT_PAIR.fullmatch(pair.strip())
        if match is None:
            raise InputError(
                f"traffic: expected VERSION=PERCENT pairs such as 1=90 2=10; got {pair!r}"
            )
        version, percent = int(match.group(1)), int(match.group(2))
        if version in weights:
            raise InputError(f"traffic: version {version} is given twice")
        weights[version] = percent
    return weights


def _name_hint(namespace: Mapping[str, Any], what: str, missing: str) -> str:
    """The closest variable names to a mistyped one, else the variables that would fit."""
    close = difflib.get_close_matches(missing, list(user_variables(namespace)), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(map(repr, close))}?"
    found = find_models(namespace) if what.lower().startswith("model") else find_samples(namespace)
    return f" (found: {', '.join(found)})" if found else ""


def is_identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def user_variables(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The user's own variables: no private names, modules, IPython history or builtins."""
    hidden = _ipython_hidden(namespace)
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_")
        and name not in hidden
        and type(value).__name__ != "module"
        and not isinstance(value, type)
    }


def current_shell() -> Any:
    """The running IPython shell, or None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _ipython_hidden(namespace: Mapping[str, Any]) -> set[str]:
    shell = current_shell()
    if shell is not None and namespace is shell.user_ns:
        return set(shell.user_ns_hidden)
    return set()


def model_kind(value: Any) -> str | None:
    """What kind of deployable model ``value`` is (``torch``, ``onnx``, ...), or None.

    Recognised by class modules and names (via the exporter's own test), never by importing
    a framework; a string or path counts when it names an existing model file.
    """
    if isinstance(value, ModelArtifact):
        return f"artifact {value.variant}"
    if isinstance(value, str | Path):
        path = Path(value)
        try:
            is_model_file = path.suffix.lower() in MODEL_FILE_SUFFIXES and path.is_file()
        except (OSError, ValueError):
            return None
        return f"{path.suffix.lower().lstrip('.')} file" if is_model_file else None
    from nbdeploy import api

    return api.framework_of(value)


def default_name(variable: str, model: Any) -> str | None:
    """Name a framework model after its variable; artifacts and model files keep their own."""
    kind = model_kind(model)
    if kind is None or kind.startswith("artifact") or kind.endswith("file"):
        return None
    return variable if is_identifier(variable) and variable[0].isalpha() else None


def find_models(namespace: Mapping[str, Any]) -> dict[str, str]:
    """Variables holding something ``nbd.deploy`` accepts, mapped to a short description."""
    found = {}
    for name, value in user_variables(namespace).items():
        kind = model_kind(value)
        if kind is not None:
            found[name] = f"{kind} {type(value).__name__}" if "file" not in kind else kind
    return found


def describe_sample(value: Any) -> str | None:
    """``float32 (8, 64)`` for an array or tensor, None for anything that is not one."""
    dtype = getattr(value, "dtype", None)
    if dtype is None and hasattr(value, "dtypes"):
        dtype = "mixed" if len(set(map(str, value.dtypes))) > 1 else next(iter(value.dtypes), "")
    try:
        shape = tuple(int(d) for d in value.shape)
    except (AttributeError, TypeError, ValueError):
        return None
    if dtype is None:
        return None
    dtype_name = str(dtype).removeprefix("torch.").removeprefix("<dtype: '").removesuffix("'>")
    return f"{type(value).__name__} {dtype_name} {shape}"


def find_samples(namespace: Mapping[str, Any]) -> dict[str, str]:
    """Array-like variables (numpy, torch, tensorflow, pandas) that can serve as a sample."""
    found = {}
    for name, value in user_variables(namespace).items():
        description = describe_sample(value)
        if description is not None and model_kind(value) is None:
            found[name] = description
    return found


def launch_demo_url(name: str) -> str:
    """Start (or reuse) the Voila demo page of deployment ``name`` and return its URL.

    The single place the magic and the panel open demos from.
    """
    from nbdeploy import api

    return api.demo(name).url
