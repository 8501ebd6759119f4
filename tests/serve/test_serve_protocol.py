"""The protocol's pure functions, in process: ranking for the classification extension."""

from __future__ import annotations

import numpy as np
import pytest

from nbdeploy.serve.protocol import classify, top_indices


def ranked_by_full_sort(scores: np.ndarray, count: int) -> np.ndarray:
    """The rule ``top_indices`` keeps: a stable sort of the negated scores (as float64, so
    unsigned integers do not wrap), which puts ties in index order and NaN last."""
    return np.argsort(-scores.astype(np.float64), kind="stable")[:count]


@pytest.mark.parametrize("kind", ["few values", "floats", "uint8", "with NaN", "int8 extremes"])
def test_top_indices_ranks_as_a_full_stable_sort(kind: str):
    rng = np.random.default_rng(7)
    for _ in range(400):
        size = int(rng.integers(1, 300))
        count = int(rng.integers(1, size + 1))
        if kind == "few values":
            scores = rng.integers(0, 4, size).astype(np.float32)
        elif kind == "floats":
            scores = rng.random(size)
        elif kind == "uint8":
            scores = rng.integers(0, 256, size).astype(np.uint8)
        elif kind == "int8 extremes":
            scores = rng.choice(np.array([-128, -1, 0, 127], np.int8), size)
        else:
            scores = rng.integers(0, 3, size).astype(np.float32)
            scores[rng.random(size) < 0.2] = np.nan
        assert top_indices(scores, count).tolist() == ranked_by_full_sort(scores, count).tolist()


@pytest.mark.parametrize("classes", [5, 40, 1000])
def test_top_indices_ranks_each_row_of_a_batch(classes: int):
    rng = np.random.default_rng(classes)
    rows = rng.integers(0, 6, (50, classes)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.01] = np.nan
    for matrix in (rows, np.nan_to_num(rows, nan=0.0)):
        ranked = top_indices(matrix, 3)
        assert ranked.shape == (50, 3)
        for row, top in zip(matrix, ranked, strict=True):
            assert top.tolist() == ranked_by_full_sort(row, 3).tolist()
    assert top_indices(rows[:0], 3).shape == (0, 3)


def test_unsigned_scores_rank_highest_first():
    scores = np.array([0, 200, 3, 255, 200], np.uint8)  # negating would wrap 0 to the top
    assert classify(scores, 3, ["a", "b", "c", "d", "e"]).tolist() == [
        "255.000000:3:d",
        "200.000000:1:b",
        "200.000000:4:e",
    ]


def test_a_huge_output_with_ties_is_ranked_as_a_full_sort_would():
    scores = np.zeros(2_000_000, np.float32)
    scores[[17, 1_999_999, 400_000]] = [0.5, 0.9, 0.5]
    rows = np.stack([scores, scores[::-1]])
    assert classify(rows, 3, None).tolist() == [
        ["0.900000:1999999", "0.500000:17", "0.500000:400000"],
        ["0.900000:0", "0.500000:1599999", "0.500000:1999982"],
    ]
