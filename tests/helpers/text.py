"""A small sentiment classifier built offline: a WordPiece tokenizer trained with the
``tokenizers`` library on a bundled template corpus, and a 2-layer BERT (hidden 32) trained
for a few seeded steps so its predictions are not uniform.

Built once per test session (``sentiment()`` is cached): the text tests, the example notebook
and the benchmark reuse the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

LABELS = ["negative", "positive"]
MAX_LENGTH = 64

POSITIVE = [
    "great",
    "wonderful",
    "excellent",
    "lovely",
    "fantastic",
    "superb",
    "delightful",
    "brilliant",
    "charming",
    "enjoyable",
]
NEGATIVE = [
    "terrible",
    "awful",
    "boring",
    "horrible",
    "dreadful",
    "poor",
    "disappointing",
    "bad",
    "dull",
    "painful",
]
SUBJECTS = [
    "the movie",
    "this film",
    "the plot",
    "the acting",
    "the food",
    "the service",
    "this book",
    "the hotel",
    "the music",
    "the ending",
]
TEMPLATES = [
    "{subject} was {word}.",
    "I thought {subject} was {word}!",
    "Honestly, {subject} is {word}.",
    "{subject} felt {word} from start to finish",
    "What a {word} experience; {subject} was {word}.",
]


def corpus() -> tuple[list[str], list[int]]:
    """About 200 short sentences and their labels (0 negative, 1 positive), interleaved."""
    texts: list[str] = []
    labels: list[int] = []
    for t, template in enumerate(TEMPLATES):
        for s, subject in enumerate(SUBJECTS):
            for w in ((s + t) % len(POSITIVE), (s + t + 5) % len(POSITIVE)):
                for label, words in ((1, POSITIVE), (0, NEGATIVE)):
                    sentence = template.format(subject=subject, word=words[w])
                    texts.append(sentence[0].upper() + sentence[1:])
                    labels.append(label)
    return texts, labels


SAMPLE_TEXTS = [
    "The movie was wonderful.",
    "This film was terrible!",
    "I thought the food was superb and the service lovely.",
    "the plot felt dull",
    "Honestly, the ending is brilliant, but the music was awful.",
    "Ünïcode café: déjà vu — 🙂 great",
    "a",
    "What a boring, painful, dreadful experience; the hotel was bad.",
]
"""A deploy sample: short and long rows, accents and an emoji (unknown to the vocabulary)."""


@dataclass(frozen=True)
class Sentiment:
    model: Any
    """A ``transformers.BertForSequenceClassification`` in eval mode."""
    tokenizer: Any
    """Its ``transformers.PreTrainedTokenizerFast``."""
    texts: list[str]
    """The deploy sample (:data:`SAMPLE_TEXTS`)."""
    corpus: list[str]
    labels: list[int]


def train_tokenizer(texts: list[str]) -> Any:
    """A lowercasing WordPiece tokenizer (BERT's normaliser, pre-tokenizer and template).

    The trainer breaks ties between equally frequent merges differently from run to run, so
    its vocabulary is pruned to what the corpus determines (the special tokens, the characters
    and every whole word, all of which it learns) and numbered in sorted order: the same
    tokenizer, and so the same model, in every test session.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer, trained.pre_tokenizer = normalizer, pre_tokenizer
    trainer = WordPieceTrainer(vocab_size=1000, special_tokens=specials, show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    words = {
        word
        for text in texts
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    }
    learned = set(trained.get_vocab())
    assert words <= learned, sorted(words - learned)
    pieces = {t for t in learned if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    vocab = specials + sorted((pieces | words) - set(specials))
    tokenizer = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]")
    )
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tokenizer


def fast_tokenizer(raw: Any) -> Any:
    """``raw`` (a ``tokenizers.Tokenizer``) as a ``transformers.PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def bert(vocab_size: int) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    return BertForSequenceClassification(config)


def train(model: Any, tokenizer: Any, texts: list[str], labels: list[int], steps: int) -> None:
    """A few seeded Adam steps on the corpus (batches of 32), then eval mode."""
    import torch

    torch.manual_seed(0)
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    targets = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = torch.randperm(len(texts))
    model.train()
    for step in range(steps):
        rows = order[(step * 32) % len(texts) :][:32]
        out = model(**{key: value[rows] for key, value in encoded.items()}, labels=targets[rows])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()


@cache
def sentiment(steps: int = 60) -> Sentiment:
    """The trained model and tokenizer (built once per process)."""
    texts, labels = corpus()
    tokenizer = fast_tokenizer(train_tokenizer(texts))
    model = bert(len(tokenizer))
    train(model, tokenizer, texts, labels, steps)
    return Sentiment(model, tokenizer, list(SAMPLE_TEXTS), texts, labels)


def token_id_model(vocab_size: int, classes: int = 2, *, masked: bool = True) -> Any:
    """A plain torch classifier over token ids: a mean of embeddings and a linear head.

    ``masked``: forward takes ``(input_ids, attention_mask)`` and averages the real tokens
    only (for "a torch model given a tokenizer"); else it takes ``input_ids`` alone and
    averages the padding too, so its answers depend on the batch (refused at export).
    """
    import torch

    class MeanPool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, 16)
            self.head = torch.nn.Linear(16, classes)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled)

    class Unmasked(MeanPool):
        def forward(self, input_ids):  # type: ignore[override]
            return self.head(self.embed(input_ids).mean(1))

    torch.manual_seed(0)
    return (MeanPool() if masked else Unmasked()).eval()


def accuracy(model: Any, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    import torch

    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        predicted = model(**encoded).logits.argmax(-1)
    return float((predicted == torch.tensor(labels)).float().mean())


def deploy_sentiment(name: str = "sentiment", **options: Any) -> Any:
    """The sentiment model served on the process runtime, raw text in (``nbd.deploy`` with
    ``tokenizer=``); ``options`` go to ``nbd.deploy`` (e.g. ``quantize="int8"``)."""
    import nbdeploy as nbd

    built = sentiment()
    options.setdefault("runtime", "process")
    return nbd.deploy(
        built.model, sample=built.texts, tokenizer=built.tokenizer, name=name, **options
    )
