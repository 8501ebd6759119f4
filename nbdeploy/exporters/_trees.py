"""Gradient-boosted trees: XGBoost and LightGBM through onnxmltools, HistGradientBoosting checks.

XGBoost's and LightGBM's scikit-learn models (``XGBClassifier``, ``LGBMRegressor``, ...) are
converted by skl2onnx once onnxmltools' converters are registered for their classes with
``skl2onnx.update_registered_converter`` (the documented way), so they export alone and as the
last step of a Pipeline through the very same path as any scikit-learn estimator. This module
recognises them by class module names (xgboost and lightgbm are imported only when such a model
is given), registers the converters, and refuses up front what would not convert faithfully.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nbdeploy._errors import ExportError

LIBRARIES = ("xgboost", "lightgbm")

SUPPORTED = {
    "xgboost": ("XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor"),
    "lightgbm": ("LGBMClassifier", "LGBMRegressor"),
}
"""The boosters that export, by class name (subclasses of these are fine too)."""

_ALIAS_PREFIX = {"xgboost": "XGBoost", "lightgbm": "LightGbm"}
_CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
_registered: set[type] = set()
_lock = threading.Lock()


def library_of(model: Any) -> str | None:
    """``xgboost`` or ``lightgbm`` when ``model`` comes from one of them, judged by the class
    modules only (nothing is imported)."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in LIBRARIES:
            return root
    return None


def components(model: Any) -> Iterator[Any]:
    """``model`` and every fitted estimator inside it: Pipeline steps, ColumnTransformer and
    FeatureUnion parts, and the fitted estimators of meta-estimators."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, str) or obj is None:
            continue
        seen.add(id(obj))
        yield obj
        for entry in _safe(obj, "steps") or ():
            stack.append(entry[1])
        for attr in ("transformers_", "transformer_list"):
            for entry in _safe(obj, attr) or ():
                stack.append(entry[1])
        for attr in ("estimator_", "best_estimator_", "regressor_", "final_estimator_"):
            stack.append(_safe(obj, attr))
        estimators = _safe(obj, "estimators_")
        if isinstance(estimators, list | tuple):
            stack.extend(e for e in estimators if hasattr(e, "fit"))


def _safe(obj: Any, attr: str) -> Any:
    try:
        return getattr(obj, attr, None)
    except Exception:
        return None


def check_supported(model: Any) -> None:
    """Refuse, in one line, a booster class that does not export (a raw Booster, a ranker)."""
    library = library_of(model)
    if library is None:
        return
    names = {cls.__name__ for cls in type(model).__mro__}
    if names & set(SUPPORTED[library]):
        return
    cls = type(model)
    hint = ""
    if cls.__name__ == "Booster":
        train = "xgb.train" if library == "xgboost" else "lgb.train"
        hint = (
            f" (a Booster from {train}: train the same model with the scikit-learn API, e.g."
            f" {SUPPORTED[library][0]}(...).fit(X, y), to deploy it)"
        )
    raise ExportError(
        f"cannot export a {cls.__module__}.{cls.__qualname__}: the {library} models that export"
        f" are {', '.join(SUPPORTED[library])}{hint}"
    )


def prepare(model: Any) -> set[str]:
    """Check the tree models inside ``model`` and register converters for the boosters.

    Returns the booster libraries found (empty for a model without XGBoost / LightGBM), so
    the caller can record their versions. Raises ExportError for trees that would not convert
    faithfully: native categorical splits (HistGradientBoosting ``categorical_features``,
    XGBoost ``enable_categorical``, LightGBM on pandas category columns).
    """
    found: set[str] = set()
    for part in components(model):
        library = library_of(part)
        if library is not None:
            check_supported(part)
            _check_categorical(part, library)
            _register(part, library)
            found.add(library)
        elif type(part).__name__.startswith("HistGradientBoosting"):
            categorical = _safe(part, "is_categorical_")
            if categorical is not None and np.any(categorical):
                raise ExportError(
                    f"a {type(part).__name__} with categorical features (native categorical"
                    " splits) does not convert to ONNX (skl2onnx ignores those splits): fit it"
                    " with categorical_features=None on one-hot or ordinal encoded columns"
                )
    return found


def _check_categorical(part: Any, library: str) -> None:
    name = type(part).__name__
    if library == "xgboost":
        booster = _safe(part, "get_booster")
        types = None
        if booster is not None:
            try:
                types = booster().feature_types
            except Exception:
                types = None
        if types and "c" in types:
            raise ExportError(
                f"an {name} fitted with enable_categorical on category columns does not convert"
                " to ONNX: encode the categories in the Pipeline instead (a ColumnTransformer"
                " with OneHotEncoder or OrdinalEncoder before the model)"
            )
    else:
        booster = _safe(part, "booster_")
        if booster is not None and getattr(booster, "pandas_categorical", None):
            raise ExportError(
                f"an {name} fitted on pandas category columns (LightGBM categorical splits) does"
                " not convert to ONNX: encode the categories in the Pipeline instead (a"
                " ColumnTransformer with OneHotEncoder or OrdinalEncoder before the model)"
            )


def _register(part: Any, library: str) -> None:
    """Register onnxmltools' converter for the class of ``part`` with skl2onnx (once)."""
    cls = type(part)
    with _lock:
        if cls in _registered:
            return
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
        from sklearn.base import is_classifier

        convert = _converter(library)
        alias = f"{_ALIAS_PREFIX[library]}{cls.__name__}"
        if is_classifier(part):
            update_registered_converter(
                cls,
                alias,
                calculate_linear_classifier_output_shapes,
                convert,
                options=_CLASSIFIER_OPTIONS,
            )
        else:
            options = {"split": None} if library == "lightgbm" else None
            update_registered_converter(
                cls, alias, calculate_linear_regressor_output_shapes, convert, options=options
            )
        _registered.add(cls)


def _converter(library: str) -> Callable[..., Any]:
    try:
        if library == "xgboost":
            from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

            return _with_positional_feature_names(convert_xgboost)
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        return convert_lightgbm
    except ImportError as exc:
        raise ExportError(
            f"exporting a {library} model needs onnxmltools: pip install 'nbdeploy[tabular]'"
            f" (or pip install onnxmltools) [{exc}]"
        ) from exc


def _with_positional_feature_names(convert: Callable[..., Any]) -> Callable[..., Any]:
    """onnxmltools reads XGBoost's tree dump, which names features by the DataFrame's columns
    when the model was fitted on one, and only understands ``f0, f1, ...``: convert with the
    booster's feature names cleared (the inputs are positional in the graph anyway), then put
    them back."""

    def convert_xgboost(scope: Any, operator: Any, container: Any) -> Any:
        booster = operator.raw_operator.get_booster()
        names = booster.feature_names
        with _lock:
            booster.feature_names = None
            try:
                return convert(scope, operator, container)
            finally:
                booster.feature_names = names

    return convert_xgboost


def versions(libraries: set[str]) -> dict[str, str]:
    """The versions of the booster libraries and of onnxmltools, for the artifact's record."""
    found: dict[str, str] = {}
    if not libraries:
        return found
    import importlib

    for name in (*sorted(libraries), "onnxmltools"):
        try:
            found[name] = importlib.import_module(name).__version__
        except Exception:
            continue
    return found


CLASSIC_TREE_MODULES = ("sklearn.tree.", "sklearn.ensemble._forest", "sklearn.ensemble._gb")
"""scikit-learn's classic trees (DecisionTree*, ExtraTree*, RandomForest*, ExtraTrees*,
GradientBoosting*): they route NaN by a learned per-node direction, which skl2onnx does not
convert (NaN always takes the same branch in ONNX). HistGradientBoosting converts faithfully."""


def _classic_tree(part: Any) -> bool:
    return type(part).__module__.startswith(CLASSIC_TREE_MODULES)


def nan_unfaithful_rows(model: Any, rows: Any) -> np.ndarray | None:
    """Per row: True when a NaN in it reaches a classic scikit-learn tree, whose ONNX export
    does not follow its missing-value branches; None when the model holds no such tree.

    For a tree that is the model or its Pipeline's last step, the rows are run through the
    steps before it and a row counts when NaN is left after them (an imputer fills it: fine);
    a tree anywhere else counts every row.
    """
    if not any(_classic_tree(part) for part in components(model)):
        return None
    count = len(rows)
    final, prefix = model, None
    if hasattr(model, "steps") and model.steps:
        final, prefix = model.steps[-1][1], model[:-1]
    others = [p for p in components(model) if _classic_tree(p) and p is not final]
    if not _classic_tree(final) or (others and not _is_ensemble_of(final, others)):
        return np.ones(count, dtype=bool)
    try:
        features = rows if prefix is None else prefix.transform(rows)
        if hasattr(features, "toarray"):
            features = features.toarray()
        values = np.asarray(features, dtype=np.float64).reshape(count, -1)
    except Exception:
        return np.ones(count, dtype=bool)
    return np.isnan(values).any(axis=1)


def _is_ensemble_of(final: Any, trees: list[Any]) -> bool:
    """The other trees are the final forest's own estimators (a RandomForest's trees)."""
    members = _safe(final, "estimators_")
    if members is None:
        return False
    flat = [*np.ravel(np.asarray(members, dtype=object)), _safe(final, "estimator_")]
    return all(any(t is m for m in flat) for t in trees)
