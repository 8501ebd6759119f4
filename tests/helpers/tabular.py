"""Small tabular data and fitted models, as data scientists have them: pandas DataFrames built
from scikit-learn's bundled data sets (no download), with a string column, a pandas
``category`` column, a bool column and missing values where asked, and the usual models on
them (Pipelines with a ColumnTransformer, XGBoost, LightGBM, HistGradientBoosting).

    from tests.helpers import tabular
    case = tabular.case("mixed")             # fitted Pipeline + train / held-out rows
    art = nbd.export(case.model, case.sample)
    case.model.predict_proba(case.test)      # what the endpoint must answer on case.test

Everything is small (a few trees, a few hundred rows) so a test fits and exports in well under
a second; ``case`` is cached, so do not mutate what it returns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 0
SIZES = ("small", "medium", "large")
GRADES = ("low", "mid", "high")


def _split(frame: Any, target: np.ndarray) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """Every 4th row held out: the export never sees the test rows."""
    test = np.arange(len(frame)) % 4 == 3
    return (
        frame[~test].reset_index(drop=True),
        frame[test].reset_index(drop=True),
        target[~test],
        target[test],
    )


def _terciles(values: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    cuts = np.quantile(values, [1 / 3, 2 / 3])
    return np.array(names, dtype=object)[np.searchsorted(cuts, values)]


def _with_missing(frame: Any, columns: list[str], every: int = 7) -> Any:
    """NaN in every ``every``-th row of ``columns`` (shifted per column), deterministically."""
    frame = frame.copy()
    for shift, column in enumerate(columns):
        rows = np.arange(len(frame)) % every == shift % every
        frame.loc[rows, column] = np.nan
    return frame


def breast_cancer(
    *,
    numeric: int | None = 8,
    categorical: bool = False,
    category: bool = False,
    boolean: bool = False,
    nan: bool = False,
    nan_strings: bool = False,
) -> tuple[Any, np.ndarray]:
    """The breast-cancer data (569 rows, binary target 0 = malignant, 1 = benign) as a DataFrame.

    ``numeric`` keeps the first N of the 30 numeric columns (named as scikit-learn names them,
    e.g. "mean radius"; None keeps all). Extra columns derived from the data, so they carry
    signal: ``categorical`` adds "size" (str: small / medium / large from the worst radius),
    ``category`` adds "texture grade" (pandas category: low / mid / high from the worst
    texture), ``boolean`` adds "smooth" (bool: worst smoothness below its median). ``nan``
    puts NaN in "mean texture" and "mean smoothness"; ``nan_strings`` NaN in "size".
    """
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    full = data.frame.drop(columns="target")
    frame = full.iloc[:, : numeric if numeric is not None else None].copy()
    if categorical:
        frame["size"] = pd.Series(_terciles(full["worst radius"].to_numpy(), SIZES), dtype=object)
    if category:
        grades = _terciles(full["worst texture"].to_numpy(), GRADES)
        frame["texture grade"] = pd.Categorical(grades, categories=list(GRADES))
    if boolean:
        smoothness = full["worst smoothness"].to_numpy()
        frame["smooth"] = smoothness < np.median(smoothness)
    if nan:
        frame = _with_missing(frame, [c for c in ("mean texture", "mean smoothness") if c in frame])
    if nan_strings and "size" in frame:
        frame = _with_missing(frame, ["size"], every=9)
    return frame, data.target.to_numpy()


def iris() -> tuple[Any, np.ndarray]:
    """Iris as a DataFrame of 4 numeric columns and species names as the (string) target."""
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    names = np.array(data.target_names, dtype=object)[data.target.to_numpy()]
    return data.frame.drop(columns="target"), names


def diabetes(*, categorical: bool = False, nan: bool = False) -> tuple[Any, np.ndarray]:
    """The diabetes regression data (442 rows, 10 columns) as a DataFrame.

    ``categorical`` turns the (centred) "sex" column into strings "female" / "male";
    ``nan`` puts NaN in "bmi" and "bp".
    """
    import pandas as pd
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    frame = data.frame.drop(columns="target")
    if categorical:
        frame["sex"] = pd.Series(np.where(frame["sex"] > 0, "male", "female"), dtype=object)
    if nan:
        frame = _with_missing(frame, ["bmi", "bp"])
    return frame, data.target.to_numpy()


def numeric_columns(frame: Any) -> list[str]:
    return [c for c in frame.columns if frame[c].dtype.kind == "f"]


def preprocessor(frame: Any, *, impute: bool = False, scale: bool = True) -> Any:
    """A ColumnTransformer selecting columns by name: numeric (imputed, scaled), string and
    category columns one-hot encoded, bool columns passed through."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = numeric_columns(frame)
    strings = [
        c
        for c in frame.columns
        if frame[c].dtype.kind == "O" or str(frame[c].dtype) in ("category", "str")
    ]
    flags = [c for c in frame.columns if frame[c].dtype.kind == "b"]
    numeric_steps = [SimpleImputer(strategy="median")] if impute else []
    numeric_steps += [StandardScaler()] if scale else []
    parts: list[tuple[str, Any, list[str]]] = [
        ("numeric", make_pipeline(*numeric_steps) if numeric_steps else "passthrough", numeric)
    ]
    if strings:
        encoder = OneHotEncoder(handle_unknown="ignore")
        if impute:
            encoder = make_pipeline(SimpleImputer(strategy="most_frequent"), encoder)
        parts.append(("categorical", encoder, strings))
    if flags:
        parts.append(("flags", "passthrough", flags))
    return ColumnTransformer(parts)


@dataclass(frozen=True)
class Case:
    """A fitted model with the rows it was fitted on and held-out rows it never saw."""

    name: str
    model: Any
    train: Any
    test: Any
    y_train: np.ndarray
    y_test: np.ndarray

    @property
    def sample(self) -> Any:
        """What to export with: the first 8 training rows."""
        return self.train.head(8) if hasattr(self.train, "head") else self.train[:8]

    @property
    def classifier(self) -> bool:
        return hasattr(self.model, "predict_proba")

    def expected(self, rows: Any) -> dict[str, np.ndarray]:
        """The original's answers, named like the export's outputs."""
        if self.classifier:
            return {
                "label": np.asarray(self.model.predict(rows)),
                "probabilities": np.asarray(self.model.predict_proba(rows)),
            }
        return {"prediction": np.asarray(self.model.predict(rows))}


CASES = (
    "numeric",
    "mixed",
    "category",
    "imputer",
    "boolean",
    "iris",
    "regression",
    "numpy",
    "xgb_classifier",
    "xgb_regressor",
    "xgb_pipeline",
    "lgbm_classifier",
    "lgbm_regressor",
    "lgbm_pipeline",
    "hgb_nan",
    "hgb_regressor_nan",
)


def _xgb(classifier: bool, **params: Any) -> Any:
    from xgboost import XGBClassifier, XGBRegressor

    cls = XGBClassifier if classifier else XGBRegressor
    return cls(
        n_estimators=12, max_depth=3, learning_rate=0.3, n_jobs=1, random_state=SEED, **params
    )


def _lgbm(classifier: bool, **params: Any) -> Any:
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if classifier else LGBMRegressor
    return cls(
        n_estimators=12,
        num_leaves=8,
        min_child_samples=10,
        n_jobs=1,
        random_state=SEED,
        verbose=-1,
        **params,
    )


@functools.cache
def case(name: str) -> Case:
    """One of :data:`CASES`, fitted (cached: do not mutate it).

    numeric: ColumnTransformer(StandardScaler by column name) + LogisticRegression on 8
        numeric breast-cancer columns.
    mixed: numeric + the "size" string column (OneHotEncoder) + LogisticRegression.
    category: numeric + the "texture grade" pandas category column + LogisticRegression.
    imputer: numeric with NaN, SimpleImputer + StandardScaler, + the "size" string column
        with NaN (imputed, one-hot) + LogisticRegression; the sample rows hold NaN.
    boolean: numeric + the "smooth" bool column (passed through) + LogisticRegression.
    iris: ColumnTransformer + LogisticRegression, string class labels, 3 classes.
    regression: diabetes with "sex" as strings, ColumnTransformer + Ridge.
    numpy: StandardScaler + LogisticRegression fitted on a NumPy matrix (no column names).
    xgb_* / lgbm_*: XGBoost / LightGBM classifier (breast cancer, with NaN) and regressor
        (diabetes), alone on a DataFrame; *_pipeline: behind a ColumnTransformer with the
        "size" string column.
    hgb_nan / hgb_regressor_nan: HistGradientBoosting on data with NaN (native missing values).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def logistic() -> Any:
        return LogisticRegression(max_iter=2000)

    if name in ("numeric", "mixed", "category", "imputer", "boolean"):
        frame, y = breast_cancer(
            categorical=name in ("mixed", "imputer"),
            category=name == "category",
            boolean=name == "boolean",
            nan=name == "imputer",
            nan_strings=name == "imputer",
        )
        train, test, y_train, y_test = _split(frame, y)
        model = make_pipeline(preprocessor(frame, impute=name == "imputer"), logistic())
    elif name == "iris":
        frame, y = iris()
        train, test, y_train, y_test = _split(frame, y)
        model = make_pipeline(preprocessor(frame), logistic())
    elif name == "regression":
        frame, y = diabetes(categorical=True)
        train, test, y_train, y_test = _split(frame, y)
        model = make_pipeline(preprocessor(frame), Ridge())
    elif name == "numpy":
        frame, y = breast_cancer(numeric=None)
        train, test, y_train, y_test = _split(frame, y)
        train, test = train.to_numpy(), test.to_numpy()
        model = make_pipeline(StandardScaler(), logistic())
    elif name.startswith(("xgb_", "lgbm_")):
        make = _xgb if name.startswith("xgb_") else _lgbm
        if name.endswith("_regressor"):
            frame, y = diabetes()
            train, test, y_train, y_test = _split(frame, y)
            model = make(False)
        elif name.endswith("_pipeline"):
            frame, y = breast_cancer(categorical=True)
            train, test, y_train, y_test = _split(frame, y)
            model = make_pipeline(preprocessor(frame, scale=False), make(True))
        else:
            frame, y = breast_cancer(nan=True)
            train, test, y_train, y_test = _split(frame, y)
            model = make(True)
    elif name == "hgb_nan":
        frame, y = breast_cancer(nan=True)
        train, test, y_train, y_test = _split(frame, y)
        model = HistGradientBoostingClassifier(max_iter=15, max_leaf_nodes=8, random_state=SEED)
    elif name == "hgb_regressor_nan":
        frame, y = diabetes(nan=True)
        train, test, y_train, y_test = _split(frame, y)
        model = HistGradientBoostingRegressor(max_iter=15, max_leaf_nodes=8, random_state=SEED)
    else:
        raise ValueError(f"unknown tabular case {name!r}; known: {', '.join(CASES)}")
    model.fit(train, y_train)
    return Case(name, model, train, test, y_train, y_test)


FLOAT64_THRESHOLDS = ("lgbm_regressor", "lgbm_classifier", "hgb_nan", "hgb_regressor_nan")
"""Trees whose split thresholds are float64 (LightGBM, HistGradientBoosting): the float32
ONNX inputs and thresholds may send a row whose value sits next to a threshold down the other
branch. XGBoost works in float32 itself and matches exactly."""


def assert_answers_match(case: Case, rows: Any, got: dict[str, np.ndarray]) -> None:
    """``got`` (outputs by name, from the export or its endpoint) answers ``rows`` like the
    original model, within the parity tolerance (probabilities atol 1e-4, values rtol 1e-4),
    row by row. For trees with float64 thresholds at most 2% of the rows may differ (see
    :data:`FLOAT64_THRESHOLDS`); for every other model, none."""
    expected = case.expected(rows)
    close = np.ones(len(rows), dtype=bool)
    for name, want in expected.items():
        have = np.asarray(got[name]).reshape(want.shape)
        if want.dtype.kind == "f":
            ok = np.isclose(have, want, atol=1e-4, rtol=1e-4)
        else:
            ok = have.astype(str) == want.astype(str)
        close &= ok.reshape(len(rows), -1).all(axis=1)
    allowed = 0.02 if case.name in FLOAT64_THRESHOLDS else 0.0
    assert 1 - close.mean() <= allowed, f"{case.name}: rows {np.flatnonzero(~close)} differ"
