"""Tabular models end to end: each deploys with one call and its endpoint answers held-out
rows like the original model; bad rows get one readable line."""

from __future__ import annotations

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy._errors import InferenceError, InputError
from tests.helpers import tabular
from tests.helpers.runtimes import needs_docker


def _answers(endpoint: nbd.Endpoint, rows) -> dict[str, np.ndarray]:
    """The endpoint's outputs by name, BYTES labels decoded to text."""
    result = endpoint.predict(rows)
    if not isinstance(result, dict):
        result = {endpoint.signature.output_names[0]: result}
    return {
        name: np.array([v.decode() for v in value.reshape(-1)]).reshape(value.shape)
        if value.dtype == object
        else value
        for name, value in result.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", tabular.CASES)
def test_every_tabular_model_deploys_and_answers_held_out_rows(name):
    case = tabular.case(name)
    endpoint = nbd.deploy(case.model, case.sample, name=name.replace("_", "-"), runtime="process")
    try:
        assert endpoint.status == "running"
        tabular.assert_answers_match(case, case.test, _answers(endpoint, case.test))
        parameters = endpoint.metadata()["parameters"]
        assert set(parameters["outputs"]) == set(case.expected(case.test[:1]))
    finally:
        endpoint.stop()


def test_dataframe_rows_are_checked_by_column_and_nan_by_input():
    case = tabular.case("mixed")
    endpoint = nbd.deploy(case.model, case.sample, name="churn", runtime="process")
    try:
        rows = case.test.head(5).copy()
        rows["unused"] = "ignored"  # extra columns are not sent
        tabular.assert_answers_match(case, case.test.head(5), _answers(endpoint, rows))

        column = str(case.test.columns[0])
        with pytest.raises(InputError, match=rf"lacks column\(s\) \['{column}'\]"):
            endpoint.predict(case.test.drop(columns=[column]))

        broken = case.test.head(3).copy()
        broken.iloc[1, 0] = np.nan
        with pytest.raises(InferenceError, match=f"input '{column}' contains NaN") as error:
            endpoint.predict(broken, binary=False)
        assert error.value.status == 400 and "\n" not in str(error.value)
        assert endpoint.predict(case.test.head(2)) is not None  # still serving

        frame = endpoint.predict_frame(case.test.head(4))
        assert list(frame.index) == list(case.test.head(4).index)
        assert frame["label"].tolist() == [str(v) for v in case.model.predict(case.test.head(4))]
    finally:
        endpoint.stop()


def test_a_model_that_accepts_missing_values_takes_nan_rows():
    case = tabular.case("hgb_nan")
    endpoint = nbd.deploy(case.model, case.sample, name="hgb", runtime="process")
    try:
        rows = case.test.head(12).copy()
        rows.iloc[:, 0] = np.nan
        assert endpoint.artifact.metadata["accepts_nan"]
        tabular.assert_answers_match(case, rows, _answers(endpoint, rows))
    finally:
        endpoint.stop()


@pytest.mark.slow
def test_one_deploy_line_in_a_notebook_shell_with_benchmark():
    from IPython.core.interactiveshell import InteractiveShell

    case = tabular.case("mixed")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.user_ns.update(pipe=case.model, df=case.train, test=case.test)
    try:
        endpoint = shell.run_line_magic(
            "deploy", "pipe --sample df.head(8) --name pipe --runtime process --bench"
        )
        tabular.assert_answers_match(case, case.test, _answers(endpoint, case.test))
        view = endpoint.view()  # --bench measured the endpoint over HTTP and kept the figures
        assert view.latency_source == "endpoint" and view.p50_ms > 0
    finally:
        for endpoint in nbd.deployments():
            endpoint.stop()
        for name in ("pipe", "df", "test"):
            shell.user_ns.pop(name, None)


@needs_docker
@pytest.mark.docker
def test_a_categorical_pipeline_serves_from_the_container(monkeypatch):
    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    case = tabular.case("xgb_pipeline")
    endpoint = nbd.deploy(case.model, case.sample, name="trees", runtime="docker")
    try:
        assert endpoint.runtime == "docker" and endpoint.status == "running"
        tabular.assert_answers_match(case, case.test, _answers(endpoint, case.test))
    finally:
        endpoint.stop()
