"""Text classifiers with their tokenizer: raw strings in, labels out.

The model is a 2-layer BERT with a WordPiece tokenizer, both built offline
(``tests/helpers/text.py``). The export is checked text to logits against the notebook's
tokenizer and model; the endpoint (process runtime) takes V2 ``BYTES`` strings, tokenizes
with the version's own ``tokenizer.json`` and answers like the transformers pipeline; an int8
variant of the token graph keeps the answers; the demo is a text box.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import nbdeploy as nbd  # noqa: E402
from nbdeploy._errors import ExportError, InputError  # noqa: E402
from nbdeploy._types import Signature  # noqa: E402
from tests.helpers import text as helpers  # noqa: E402
from tests.helpers.demo import nbdeploy_home  # noqa: E402

TEXTS = helpers.SAMPLE_TEXTS
FEEDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


@pytest.fixture(scope="module")
def built() -> helpers.Sentiment:
    return helpers.sentiment()


@pytest.fixture(scope="module")
def pipeline_scores(built):
    """What the transformers pipeline answers: per-class probabilities in class order."""

    def scores(texts: list[str]) -> np.ndarray:
        from transformers import pipeline

        classify = pipeline("text-classification", model=built.model, tokenizer=built.tokenizer)
        answers = classify(list(texts), top_k=None)
        return np.array(
            [[{a["label"]: a["score"] for a in row}[c] for c in helpers.LABELS] for row in answers]
        )

    return scores


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def run_graph(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


# --------------------------------------------------------------------------- export


def test_export_takes_raw_text_and_keeps_the_tokenizer_beside_the_graph(built, pipeline_scores):
    from tokenizers import Tokenizer

    from nbdeploy.exporters import eager_runner
    from nbdeploy.exporters._transformers import graph_feeds, token_feeds

    art = nbd.export(built.model, TEXTS, tokenizer=built.tokenizer, name="sentiment")

    assert [(s.name, s.dtype, s.shape) for s in art.signature.inputs] == [("text", "str", (-1,))]
    assert [(s.name, s.shape) for s in art.signature.outputs] == [("logits", (-1, 2))]
    assert art.input_kind == "text" and art.framework == "transformers"
    graph = Signature.from_onnx(art.path)
    assert [(s.name, s.dtype, s.shape) for s in graph.inputs] == [
        (name, "int64", (-1, -1)) for name in FEEDS
    ]
    assert [p.name for p in art.sidecars] == ["tokenizer.json"]
    Tokenizer.from_file(str(art.sidecars[0]))  # the server reads it back
    tokenization = art.metadata["tokenization"]
    assert tokenization["where"] == "server" and tokenization["library"] == "tokenizers"
    assert tokenization["max_length"] == helpers.MAX_LENGTH and tokenization["feeds"] == FEEDS
    import tokenizers

    assert art.metadata["requirements"] == [f"tokenizers=={tokenizers.__version__}"]
    assert art.labels == helpers.LABELS
    assert art.metadata["outputs"] == {"logits": {"kind": "logits", "classes": helpers.LABELS}}
    assert art.parity is not None and art.parity.passed

    # In-process, text to probabilities: the server's tokenization and onnxruntime answer
    # like the transformers pipeline, and the eager baseline runs tokenizer + model on text.
    feeds = token_feeds(art, TEXTS)
    assert {k: v.dtype for k, v in feeds.items()} == dict.fromkeys(FEEDS, np.int64)
    probabilities = softmax(run_graph(art.path, feeds))
    np.testing.assert_allclose(probabilities, pipeline_scores(TEXTS), atol=1e-5)
    assert len(set(probabilities.argmax(1))) == 2, "the test model must not be uniform"
    assert set(graph_feeds(art, {"text": TEXTS})) == set(FEEDS)
    eager = eager_runner(art, {"text": np.array(TEXTS, dtype=object)})()
    np.testing.assert_allclose(softmax(eager.logits.numpy()), probabilities, atol=1e-5)


def test_a_torch_model_over_token_ids_takes_a_tokenizer_too(built):
    raw = built.tokenizer.backend_tokenizer  # a tokenizers.Tokenizer works as well
    model = helpers.token_id_model(len(built.tokenizer))
    art = nbd.export(model, TEXTS, tokenizer=raw, name="meanpool", labels=helpers.LABELS)

    assert art.framework == "torch" and art.signature.input_names == ["text"]
    assert art.metadata["tokenization"]["feeds"] == {
        "input_ids": "ids",
        "attention_mask": "attention_mask",
    }
    assert Signature.from_onnx(art.path).input_names == ["input_ids", "attention_mask"]
    assert art.metadata["outputs"]["logits"]["classes"] == helpers.LABELS
    assert art.parity is not None and art.parity.passed


def test_a_model_that_does_not_mask_its_padding_is_refused_in_one_line(built):
    model = helpers.token_id_model(len(built.tokenizer), masked=False)
    with pytest.raises(ExportError, match="differently alone and padded in a batch") as error:
        nbd.export(model, TEXTS, tokenizer=built.tokenizer, name="unmasked")
    assert "\n" not in str(error.value)


def test_what_a_text_model_cannot_take_is_named(built):
    with pytest.raises(InputError, match=r"pass its tokenizer too \(tokenizer=tok\)"):
        nbd.export(built.model, TEXTS, name="sentiment")
    with pytest.raises(InputError, match="fast Hugging Face tokenizer"):
        nbd.export(built.model, TEXTS, tokenizer=object(), name="sentiment")
    with pytest.raises(InputError, match="item 1 is a int"):
        nbd.export(built.model, ["fine", 3], tokenizer=built.tokenizer, name="sentiment")
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(InputError, match="tokenizer= applies to transformers and torch"):
        nbd.export(LogisticRegression(), TEXTS, tokenizer=built.tokenizer, name="lr")


# --------------------------------------------------------------------------- int8


def test_an_int8_variant_of_the_token_graph_keeps_the_answers(built, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from nbdeploy import optimize
    from nbdeploy.exporters._transformers import token_feeds

    art = nbd.export(built.model, TEXTS, tokenizer=built.tokenizer, name="sentiment")
    prepared, quantized = tmp_path / "pre.onnx", tmp_path / "int8.onnx"
    quant_pre_process(str(art.path), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
    feeds = token_feeds(art, built.corpus)
    reference, answers = run_graph(art.path, feeds), run_graph(quantized, feeds)
    assert (reference.argmax(1) == answers.argmax(1)).mean() >= 0.99
    assert quantized.stat().st_size < 0.8 * art.path.stat().st_size

    if "tokenization" not in optimize.INTERFACE_METADATA:
        pytest.skip("nbdeploy.quantize does not tokenize calibration texts yet")
    (variant,) = nbd.quantize(art, ("int8",), calibration=built.corpus)
    assert variant.ok, variant.quantization
    assert variant.signature == art.signature
    assert [p.name for p in variant.sidecars] == ["tokenizer.json"]
    assert variant.metadata["tokenization"] == art.metadata["tokenization"]
    assert variant.quantization.size_ratio < 0.8 and variant.parity.top1_agreement >= 0.99


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def text_version(built, tmp_path_factory) -> Any:
    """The exported version loaded by the server's own code (no HTTP)."""
    from nbdeploy.serve.model import load_repository

    home = tmp_path_factory.mktemp("text-version-home")
    with nbdeploy_home(home):
        art = nbd.export(built.model, TEXTS, tokenizer=built.tokenizer, name="sentiment")
        directory = home / "repo" / "sentiment" / "1"
        shutil.copytree(art.directory, directory)
    repository = load_repository({"sentiment": {1: directory}}, threads=1, default_version=None)
    return repository.lookup("sentiment", None)


def test_merged_batches_answer_each_text_as_alone(text_version):
    """The batcher concatenates requests' text tensors; padding to the longest must not
    change any row's answer (and an empty batch answers empty outputs)."""
    model = text_version
    assert model.batchable and [i.to_json() for i in model.inputs] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}
    ]
    alone = [model.run({"text": np.array([t], dtype=object)}, ["logits"])["logits"] for t in TEXTS]
    merged = model.run({"text": np.array(TEXTS, dtype=object)}, ["logits"])["logits"]
    np.testing.assert_allclose(merged, np.concatenate(alone), atol=1e-5)
    empty = model.run({"text": np.empty(0, dtype=object)}, ["logits"])["logits"]
    assert empty.shape == (0, 2) and empty.dtype == np.float32


@pytest.fixture(scope="module")
def endpoint(built, tmp_path_factory):
    home = tmp_path_factory.mktemp("text-endpoint-home")
    with nbdeploy_home(home):
        running = helpers.deploy_sentiment("sentiment")
        try:
            yield home, running
        finally:
            running.stop()


def infer(endpoint: Any, texts: list[str], **extra: Any) -> httpx.Response:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    body.update(extra)
    return httpx.post(
        f"{endpoint.url}/v2/models/{endpoint.name}/infer",
        content=json.dumps(body),
        headers={**endpoint.headers, "Content-Type": "application/json"},
        timeout=30,
    )


def logits_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_the_endpoint_takes_strings_and_answers_like_the_pipeline(endpoint, pipeline_scores):
    _, running = endpoint
    metadata = running.metadata()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
    assert metadata["parameters"]["tokenization"]["where"] == "server"
    assert metadata["parameters"]["labels"] == helpers.LABELS

    probabilities = softmax(logits_of(infer(running, TEXTS)))
    np.testing.assert_allclose(probabilities, pipeline_scores(TEXTS), atol=1e-5)

    # labels out: the classification extension names the class
    ranked = infer(
        running, TEXTS[:2], outputs=[{"name": "logits", "parameters": {"classification": 1}}]
    )
    assert ranked.status_code == 200, ranked.text
    tops = [row[0] if isinstance(row, list) else row for row in ranked.json()["outputs"][0]["data"]]
    expected = [helpers.LABELS[i] for i in probabilities[:2].argmax(1)]
    assert [t.rsplit(":", 1)[-1] for t in tops] == expected

    # concurrent requests of different lengths (merged by the batcher) answer like alone
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: logits_of(infer(running, [t])), TEXTS))
    np.testing.assert_allclose(softmax(np.concatenate(answers)), probabilities, atol=1e-5)


def test_the_endpoint_refuses_other_types_and_takes_empty_text(endpoint):
    _, running = endpoint
    wrong = httpx.post(
        f"{running.url}/v2/models/{running.name}/infer",
        json={"inputs": [{"name": "text", "datatype": "INT64", "shape": [2], "data": [3, 4]}]},
        headers=running.headers,
    )
    assert wrong.status_code == 400
    assert "expects datatype BYTES, the request gives INT64" in wrong.json()["error"]
    column = httpx.post(
        f"{running.url}/v2/models/{running.name}/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}]},
        headers=running.headers,
    )
    assert column.status_code == 400 and "expects shape [-1]" in column.json()["error"]
    assert logits_of(infer(running, [""])).shape == (1, 2)
    assert logits_of(infer(running, ["", "The movie was great."])).shape == (2, 2)
    assert logits_of(infer(running, [])).shape == (0, 2)
    long_text = " ".join(["wonderful"] * 500)  # truncated at max_length, not an error
    assert logits_of(infer(running, [long_text])).shape == (1, 2)


def test_the_demo_is_a_text_box_showing_the_endpoints_label(endpoint, monkeypatch):
    from nbdeploy import _demo_template as page
    from nbdeploy.demo import demo_spec
    from nbdeploy.repository import ModelRepository

    home, running = endpoint
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    demo = demo_spec(ModelRepository().get(running.name, running.version))
    assert demo["kind"] == "text"
    assert demo["preprocessing"]["encoding"] == "string"
    assert demo["preprocessing"]["examples"] == TEXTS
    assert demo["preprocessing"]["request_example"] == {"text": [TEXTS[0]]}

    app = page.DemoApp(running.url, running.token, running.name, demo)
    box = next(w for w in app.input_area.children if "nbd-text" in w._dom_classes)
    assert box.value == TEXTS[0]
    app.examples_picker.value = 1
    assert box.value == TEXTS[1]
    app.predict()
    probabilities = softmax(logits_of(infer(running, [TEXTS[1]])))[0]
    label = helpers.LABELS[int(probabilities.argmax())]
    assert f'<b class="nbd-top1">{label}</b>' in app.output.value
    assert page.percent(float(probabilities.max())) in app.output.value
    assert "softmax of the logits" in app.output.value


def test_a_text_model_is_benchmarked_from_raw_text_with_its_tokenizer():
    import nbdeploy as nbd
    from tests.helpers.text import sentiment

    built = sentiment()
    artifact = nbd.export(
        built.model, built.texts[:8], tokenizer=built.tokenizer, name="bench-text"
    )
    report = nbd.benchmark(artifact, built.texts[:4], batch_sizes=(1, 4), time_budget_s=0.2)
    rows = [row for row in report.results if row.engine == "onnxruntime"]
    assert [row.batch_size for row in rows] == [1, 4] and all(row.ok for row in rows)


@pytest.mark.docker
def test_a_text_model_serves_raw_text_from_its_container(monkeypatch):
    import nbdeploy as nbd
    from nbdeploy.runtimes import docker_available
    from tests.helpers.text import sentiment

    if not docker_available():
        pytest.skip("no Docker engine answers: run scripts/docker-engine.sh")
    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    built = sentiment()
    endpoint = nbd.deploy(
        built.model, built.texts, tokenizer=built.tokenizer, name="docker-text", runtime="docker"
    )
    try:
        assert endpoint.runtime == "docker" and endpoint.status == "running"
        texts = ["the movie was great.", "I thought the food was awful!"]
        from transformers import pipeline

        classify = pipeline("text-classification", model=built.model, tokenizer=built.tokenizer)
        labels = [endpoint.artifact.labels[i] for i in endpoint.predict(texts).argmax(axis=1)]
        assert labels == [answer["label"] for answer in classify(texts)]
    finally:
        endpoint.stop()
