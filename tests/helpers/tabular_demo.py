"""Shared pieces of the tabular demo tests: a DataFrame pipeline of :mod:`tests.helpers.tabular`
deployed, a softmax-head MLP quantized to int8, and the endpoint's own answer for a form row,
read independently of the page's code."""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

CANCER_LABELS = ["malignant", "benign"]
IRIS_LABELS = ["setosa", "versicolor", "virginica"]


def deploy_case(name: str, case: str = "mixed") -> tuple[Any, Any]:
    """A fitted model of :mod:`tests.helpers.tabular` deployed on the process runtime with its
    first training rows (a DataFrame) as the sample; ``mixed`` is a ColumnTransformer pipeline
    over numeric breast-cancer columns and the "size" string column."""
    import nbdeploy as nbd
    from tests.helpers import tabular

    fitted = tabular.case(case)
    labels = CANCER_LABELS if case == "mixed" else None
    endpoint = nbd.deploy(
        fitted.model, sample=fitted.sample, name=name, runtime="process", labels=labels
    )
    return fitted, endpoint


def softmax_iris(epochs: int = 40) -> tuple[Any, np.ndarray]:
    """A torch MLP over iris ending in Softmax, trained just enough to be unsure sometimes."""
    import torch
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Linear(4, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 3),
    )
    optimizer = torch.optim.Adam(body.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(body(xt), yt).backward()
        optimizer.step()
    return torch.nn.Sequential(body, torch.nn.Softmax(dim=1)).eval(), x


def deploy_softmax_iris(name: str) -> tuple[Any, np.ndarray]:
    """The softmax MLP quantized to int8 with static QDQ (its outputs step by 1/255, so a
    row's probabilities sum to 0.996 or so: the case the demo once re-softmaxed)."""
    import nbdeploy as nbd

    model, x = softmax_iris()
    sample = x[[0, 55, 70, 77, 106, 119, 133, 134, 83, 20]]
    endpoint = nbd.deploy(
        model,
        sample,
        name=name,
        runtime="process",
        quantize="int8-static",
        labels=IRIS_LABELS,
    )
    return endpoint, x


def row_inputs(demo: dict[str, Any], values: list[Any]) -> dict[str, np.ndarray]:
    """A form row as request inputs, built by the page's own function (what it sends)."""
    from nbdeploy.preprocess import tabular_inputs

    return tabular_inputs(values, demo["preprocessing"], demo.get("accepts_nan") or ())


def endpoint_answer(endpoint: Any, demo: dict[str, Any], values: list[Any]) -> tuple[str, float]:
    """The label and its probability as the endpoint returns them for a form row, read with
    the V2 client (binary tensors) and the recorded outputs, not with the page's code."""
    from nbdeploy.client import V2Client

    outputs = V2Client(endpoint.url, token=endpoint.token).infer(
        endpoint.name, row_inputs(demo, values)
    )
    record = demo["outputs"]
    scores = next(n for n, info in record.items() if info["kind"] == "probabilities")
    probabilities = outputs[scores][0]
    names = [str(n) for n in demo.get("labels") or record[scores]["classes"]]
    label_output = next((n for n, info in record.items() if info["kind"] == "label"), None)
    if label_output is None:
        top = int(np.argmax(probabilities))
    else:
        raw = outputs[label_output].reshape(-1)[0]
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        top = [str(c) for c in record[label_output]["classes"]].index(value)
    return names[top], float(probabilities[top])


def answer_shown(page_html: str) -> tuple[str, str]:
    """The label and the percentage the page prints in its headline."""
    label = re.search(r'<b class="nbd-top1">(.*?)</b>', page_html)
    share = re.search(r'class="nbd-top1-p"[^>]*>(.*?)<', page_html)
    assert label and share, page_html[-1500:]
    return html.unescape(label.group(1)), share.group(1)
