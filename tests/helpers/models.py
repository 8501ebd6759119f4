"""Small real models used across the tests (built on demand: torch is imported lazily)."""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1]: (X float32 [n, 64], y int64)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def mlp(in_features: int = 64, classes: int = 10):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, classes),
    ).eval()


def cnn():
    """The quickstart's CNN over [n, 1, 8, 8] digit images."""
    import torch

    from nbdeploy.quickstart import digits_cnn

    torch.manual_seed(0)
    return digits_cnn().eval()


def transformer(vocab: int = 1000, dim: int = 128, layers: int = 2, classes: int = 4):
    """A small text classifier taking int64 token ids [n, seq]."""
    import torch

    class TextClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, dim)
            layer = torch.nn.TransformerEncoderLayer(
                dim, nhead=4, dim_feedforward=4 * dim, batch_first=True, dropout=0.0
            )
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(dim, classes)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

    torch.manual_seed(0)
    return TextClassifier().eval()


def two_input(a_features: int = 16, b_features: int = 8):
    """A model with two named inputs, ``a`` and ``b``, and one output."""
    import torch

    class TwoInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(a_features, 32)
            self.b = torch.nn.Linear(b_features, 32)
            self.out = torch.nn.Linear(32, 3)

        def forward(self, a, b):
            return self.out(torch.relu(self.a(a) + self.b(b)))

    torch.manual_seed(0)
    return TwoInput().eval()


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 30) -> None:
    """A few seconds of full-batch Adam, enough for quantization accuracy to mean something."""
    import torch

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        optimizer.step()
    model.eval()
