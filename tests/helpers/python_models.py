"""Python models for the tests: the kind of code a notebook holds when ONNX is not enough.

This module is not installed (it lives in the test tree), so nbdeploy must pickle what it
defines by value, as it does for a notebook's own functions and classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = np.array(["low", "mid", "high"])
MEAN = np.array([5.8, 3.0, 3.8, 1.2])
SCALE = np.array([0.8, 0.4, 1.8, 0.8])
WEIGHTS = np.array(
    [[-1.0, 0.2, 0.9], [0.8, -0.3, -0.6], [-2.0, 0.4, 1.7], [-1.8, 0.1, 1.9]], dtype=np.float64
)
LIMIT = 1e3


def iris(rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Iris measurements (float32) and their species names, shuffled with a fixed seed."""
    from sklearn.datasets import load_iris

    data = load_iris()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = data.data[order].astype(np.float32)
    y = np.asarray(data.target_names)[data.target[order]]
    return (x, y) if rows is None else (x[:rows], y[:rows])


def scaled_softmax(x: np.ndarray) -> dict[str, np.ndarray]:
    """Pre-processing (standardise with fixed statistics, refuse absurd values), a numpy
    linear model, post-processing (softmax, class names): labels and probabilities out."""
    x = np.asarray(x, dtype=np.float64)
    if np.abs(x).max(initial=0.0) > LIMIT:
        raise ValueError(f"measurements must be below {LIMIT:g} cm\nthis line is not shown")
    z = (x - MEAN) / SCALE
    logits = z @ WEIGHTS
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return {"label": CLASSES[p.argmax(axis=1)], "probabilities": p.astype(np.float32)}


class ThresholdClassifier:
    """A scikit-learn classifier with a business rule on top: the positive class only above
    ``threshold``; negative measurements are refused."""

    def __init__(self, model: Any, positive: str, threshold: float = 0.8) -> None:
        self.model = model
        self.positive = positive
        self.threshold = threshold

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if (np.asarray(x) < 0).any():
            raise ValueError("measurements cannot be negative")
        return self.model.predict_proba(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = self.predict_proba(x)
        classes = np.asarray(self.model.classes_)
        ranked = np.argsort(p, axis=1)
        best, second = classes[ranked[:, -1]], classes[ranked[:, -2]]
        positive = list(classes).index(self.positive)
        unsure = (best == self.positive) & (p[:, positive] < self.threshold)
        return np.where(unsure, second, best)


def threshold_classifier() -> ThresholdClassifier:
    from sklearn.linear_model import LogisticRegression

    x, y = iris()
    model = LogisticRegression(max_iter=500).fit(x, y)
    return ThresholdClassifier(model, positive="virginica", threshold=0.8)


def centred(x: np.ndarray) -> np.ndarray:
    """Not batch-safe: each row's answer depends on the other rows of the batch."""
    return x - x.mean(axis=0, keepdims=True)


def shout(texts: list[str]) -> dict[str, Any]:
    """Strings in, strings and numbers out."""
    return {"upper": [text.upper() for text in texts], "length": np.array([len(t) for t in texts])}


def frame_score(frame: Any) -> Any:
    """A DataFrame in (a number and a category column), a DataFrame out."""
    import pandas as pd

    z = frame["size"] * 2.0 + frame["colour"].map({"red": 1.0, "blue": -1.0}).fillna(0.0)
    return pd.DataFrame({"score": 1.0 / (1.0 + np.exp(-z)), "big": np.where(z > 0, "yes", "no")})


def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two positional inputs."""
    return a * 2 + b.sum(axis=1, keepdims=True)
