"""Language-model pieces of `examples.distill_lm` and `benchmarks.lm`.

Offline on every machine: the corpus is CPython's own library sources
(`stdlib`), its documentation text (`pydoc`, `pydoc_data.topics`) or the
user's text files; the tokenizer is a byte-level BPE trained here with
`tokenizers` and loaded into keras-hub's `GPT2Tokenizer`; the models are
keras-hub GPT-2 CausalLMs built from a config (no downloaded weights).

Batches have the form keras-hub's `CausalLMPreprocessor` gives:
`({"token_ids", "padding_mask"}, labels, sample_weight)`, each `(batch,
seq)`, labels the next tokens and the sample weights the padding mask of
the labels. Each document is cut into windows; its last window is padded,
so the masks matter. Keras 3 only (keras-hub).
"""

import glob
import json
import math
import os
import sysconfig
import time

import numpy as np
import tensorflow as tf

from tfkd import keras

END_TOKEN = "<|endoftext|>"
CORPORA = ("stdlib", "pydoc")

# name: (layers, heads, hidden, intermediate)
SIZES = {
    "teacher": (2, 2, 128, 512),
    "student": (1, 2, 64, 256),
    "tiny": (1, 1, 16, 32),
}


def parse_size(value):
    """`(layers, heads, hidden, intermediate)` of a GPT-2 size: a name of
    `SIZES`, or four positive integers `"layers,heads,hidden,intermediate"`
    (`hidden` a multiple of `heads`). Raises `ValueError` otherwise."""
    if value in SIZES:
        return SIZES[value]
    try:
        parts = tuple(int(part) for part in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1 or parts[2] % parts[1]:
        raise ValueError(
            f"A model size is one of {sorted(SIZES)} or "
            '"layers,heads,hidden,intermediate" (positive integers, hidden a '
            f"multiple of heads, e.g. 3,4,96,384). Received: {value!r}"
        )
    return parts


def documents(corpus, text_files=None):
    """`(name, text)` of every document, in a fixed order.

    Args:
        corpus: `"stdlib"` (the top-level `.py` files of CPython's library)
            or `"pydoc"` (the `pydoc_data.topics` help texts); ignored when
            `text_files` is given.
        text_files: a glob pattern of the user's UTF-8 text files.
    """
    if text_files:
        paths = sorted(glob.glob(text_files, recursive=True))
        if not paths:
            raise ValueError(
                "Invalid value for argument `text_files`: it matches no "
                f"file. Received: text_files={text_files!r}"
            )
        return [(p, _read(p)) for p in paths]
    if corpus == "stdlib":
        library = sysconfig.get_paths()["stdlib"]
        paths = sorted(glob.glob(os.path.join(library, "*.py")))
        return [(os.path.basename(p), _read(p)) for p in paths]
    if corpus == "pydoc":
        from pydoc_data import topics

        return sorted(topics.topics.items())
    raise ValueError(
        f"Invalid value for argument `corpus`. Expected one of {CORPORA}. "
        f"Received: corpus={corpus!r}"
    )


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def split(docs, validation_fraction=0.1):
    """Training and validation documents: every 1/fraction-th is held out
    (whole documents, so no window is in both)."""
    every = max(2, round(1 / validation_fraction))
    return (
        [d for i, d in enumerate(docs) if i % every],
        [d for i, d in enumerate(docs) if i % every == 0],
    )


def train_bpe(texts, vocabulary_size):
    """A byte-level BPE (`tokenizers`), as `(hf_tokenizer, GPT2Tokenizer)`.

    `<|endoftext|>` gets the LAST id: `GPT2Tokenizer` pads with id 0, and
    an end token at 0 would make `generate` stop at once.
    """
    import keras_hub
    import tokenizers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocabulary_size - 1,
        min_frequency=2,
        special_tokens=[],
        show_progress=False,
    )
    model = json.loads(bpe.to_str())["model"]
    vocabulary = dict(model["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocabulary[END_TOKEN] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=vocabulary, merges=merges
    )
    return bpe, tokenizer


def windows(bpe, texts, sequence_length, end_id):
    """`(token_ids, padding_mask, labels, sample_weight)` arrays.

    Each text becomes `end + ids + end` (the end token also starts a
    sequence, as GPT-2's preprocessor does), cut into windows of
    `sequence_length + 1` tokens; the last window of a text is padded
    with id 0 and masked.
    """
    rows = []
    width = sequence_length + 1
    for encoding in bpe.encode_batch(texts):
        ids = [end_id] + encoding.ids + [end_id]
        for start in range(0, len(ids) - 1, sequence_length):
            rows.append(ids[start : start + width])
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = True
    return (
        tokens[:, :-1],
        mask[:, :-1],
        tokens[:, 1:],
        mask[:, 1:].astype(np.float32),
    )


def dataset(arrays, batch_size, *, shuffle_seed=None, repeat=False):
    """The `({"token_ids", "padding_mask"}, labels, weights)` batches."""
    token_ids, padding_mask, labels, weights = arrays
    data = tf.data.Dataset.from_tensor_slices(
        (
            {"token_ids": token_ids, "padding_mask": padding_mask},
            labels,
            weights,
        )
    )
    if shuffle_seed is not None:
        data = data.shuffle(len(labels), seed=shuffle_seed)
    if repeat:
        data = data.repeat()
    return data.batch(batch_size, drop_remainder=repeat).prefetch(2)


def causal_lm(size, vocabulary_size, sequence_length, seed, name):
    """A keras-hub GPT-2 CausalLM from a config, `preprocessor=None`
    (it trains on tokenized batches; `attach_preprocessor` for generate)."""
    import keras_hub

    layers, heads, hidden, intermediate = parse_size(size)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        dropout=0.0,
        max_sequence_length=sequence_length,
        name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=None, name=name
    )


def attach_preprocessor(model, tokenizer, sequence_length):
    """Gives `model` a `GPT2CausalLMPreprocessor`, for `generate` on text.

    A CausalLM with a preprocessor expects raw strings in `fit`: keep it
    `None` for training on tokenized batches, attach it to generate.
    """
    import keras_hub

    model.preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    return model


def optimizer(learning_rate, steps, warmup_fraction=0.05):
    """AdamW with linear warm-up and cosine decay over `steps` (a model
    trained from scratch wants ~1e-3, not `CausalLM.compile`'s 2e-5)."""
    warmup = max(1, int(steps * warmup_fraction))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(1, steps - warmup),
        alpha=0.1,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0)


def token_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def token_metrics():
    """Perplexity and next-token accuracy, for `weighted_metrics=`: Keras
    weighs them with the sample weights (the padding mask), so both are
    over the real tokens (`exp` of the mean cross-entropy for perplexity).
    """
    import keras_hub

    return [
        keras_hub.metrics.Perplexity(from_logits=True, name="perplexity"),
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    ]


def perplexity(model, data):
    """`exp` of the mean cross-entropy over the real (unpadded) tokens.

    Not `exp` of a Keras loss: `"sum_over_batch_size"` divides by every
    position, padding included.
    """

    @tf.function
    def sums(x, y, w):
        logits = tf.cast(model(x, training=False), tf.float32)
        ce = keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True
        )
        return tf.reduce_sum(ce * w), tf.reduce_sum(w)

    total, count = 0.0, 0.0
    for x, y, w in data:
        ce, n = sums(x, y, w)
        total += float(ce)
        count += float(n)
    return math.exp(total / count)


def generate(model, tokenizer, prompt, sequence_length, max_length=64):
    """A greedy sample of `max_length` tokens (preprocessor attached for
    the call, then removed again)."""
    attach_preprocessor(model, tokenizer, sequence_length)
    try:
        return model.generate(prompt, max_length=max_length)
    finally:
        model.preprocessor = None


class StopAfter(keras.callbacks.Callback):
    """Stops `fit` after `seconds` of training (wall time)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True
