"""Python models through the public API: plain callables deploy as Python models, and a
framework model whose ONNX export fails is served that way only when asked."""

from __future__ import annotations

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy._errors import ExportError
from tests.helpers.python_models import iris, scaled_softmax


def _log_pipeline():
    """A scikit-learn pipeline skl2onnx cannot convert (a FunctionTransformer with a func)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = iris()
    return make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=500)).fit(
        x, y
    ), x


def test_a_function_deploys_as_a_python_model_and_is_listed_as_one():
    x, _ = iris(16)
    endpoint = nbd.deploy(scaled_softmax, x[:8], name="fn", runtime="process")
    try:
        served, want = endpoint.predict(x), scaled_softmax(x)
        np.testing.assert_allclose(served["probabilities"], want["probabilities"], atol=1e-6)
        assert [label.decode() for label in served["label"]] == want["label"].tolist()
        assert endpoint.view().format == "python"
        from nbdeploy import api

        assert [view.format for view in api.deployment_views()] == ["python"]
        report = nbd.benchmark(endpoint.artifact, x[:4], batch_sizes=(1,), time_budget_s=0.2)
        assert report.results[0].ok
        with pytest.raises(nbd.NbdeployError, match="needs an ONNX model"):
            nbd.deploy(scaled_softmax, x[:8], name="fn", quantize="int8", runtime="process")
    finally:
        endpoint.stop()


@pytest.mark.slow
def test_a_failed_export_offers_the_python_fallback_and_uses_it_when_asked():
    pipeline, x = _log_pipeline()
    with pytest.raises(ExportError, match="fallback='python'") as error:
        nbd.deploy(pipeline, x[:8], name="logpipe", runtime="process")
    assert "\n" not in str(error.value) and "FunctionTransformer" in str(error.value)

    steps: list[nbd.ProgressEvent] = []
    endpoint = nbd.deploy(
        pipeline, x[:8], name="logpipe", fallback="python", runtime="process", progress=steps.append
    )
    try:
        assert endpoint.view().format == "python"
        assert any("Python model" in str(step) for step in steps)
        requirements = endpoint.artifact.metadata["requirements"]
        assert any(r.startswith("scikit-learn==") for r in requirements)
        result = endpoint.predict(x)
        probabilities = result["probabilities"] if isinstance(result, dict) else result
        np.testing.assert_allclose(probabilities, pipeline.predict_proba(x), atol=1e-6)
    finally:
        endpoint.stop()
