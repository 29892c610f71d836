"""keras-hub causal LMs through `tfkd.Distiller` (issue 25).

keras-hub is Keras 3 only: these tests skip under tf_keras, but for the
error a tf_keras Distiller gives a keras-hub model, and skip when keras-hub
is not installed (`pip install tfkd[lm]`).
"""

import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import run_module

import tfkd
from tfkd import _keras
from tfkd._keras import keras

keras_hub = pytest.importorskip(
    "keras_hub", reason="keras-hub is not installed: pip install tfkd[lm]"
)

keras3_only = pytest.mark.skipif(
    _keras.IS_LEGACY, reason="keras-hub models are Keras 3 only"
)

SEQ = 16
# The examples' subprocesses run under Keras 3 (keras-hub), whatever mode
# the suite runs in.
KERAS_3 = {"TF_USE_LEGACY_KERAS": None}
TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "import os",
    "class Point:\n    x = 0\n    y = 0\n",
    "print('hello')",
]


@pytest.fixture(scope="module")
def tokenizer():
    sys.path.insert(0, REPO_ROOT)
    from examples import language

    corpus = [text * 20 for text in TEXTS]
    return language.train_bpe(corpus, 300)[1]


def _gpt2(vocabulary_size, width, layers, seed, name):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=1,
        hidden_dim=width,
        intermediate_dim=2 * width,
        dropout=0.0,
        max_sequence_length=SEQ,
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=None, name=name
    )


def _batch(tokenizer):
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=SEQ
    )
    x, y, w = preprocessor(tf.constant(TEXTS))
    return x, y, w


def _distiller(tokenizer, method=None):
    vocab = tokenizer.vocabulary_size()
    distiller = tfkd.Distiller(
        _gpt2(vocab, 16, 2, 1, "teacher"),
        _gpt2(vocab, 8, 1, 2, "student"),
        distillation_loss=method or tfkd.losses.ForwardKL(),
        alpha=0.5,
    )
    distiller.compile(
        keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras_hub.metrics.Perplexity(from_logits=True, name="perplexity"),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        ],
    )
    return distiller


@keras3_only
def test_preprocessor_batches_are_masked_per_token(tokenizer):
    distiller = _distiller(tokenizer)
    x, y, w = _batch(tokenizer)
    w = w.numpy().astype("float32")
    assert 0 < w.sum() < w.size  # Padding to mask.
    logs = distiller.evaluate(
        x, y, sample_weight=w, verbose=0, return_dict=True
    )
    t = distiller.teacher(x).numpy().astype("float64")
    s = distiller.student(x).numpy().astype("float64")

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(t), log_softmax(s)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    ce = -np.take_along_axis(lq, y.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        logs["distillation_loss"], (kl * w).sum() / w.size, rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["student_loss"], (ce * w).sum() / w.size, rtol=1e-5
    )
    # The metrics: per real token, padding ignored.
    np.testing.assert_allclose(
        logs["perplexity"], np.exp((ce * w).sum() / w.sum()), rtol=1e-5
    )
    correct = s.argmax(-1) == y.numpy()
    np.testing.assert_allclose(
        logs["accuracy"], (correct * w).sum() / w.sum(), rtol=1e-6
    )
    # Labels at padded positions do not matter.
    y_other = np.where(w > 0, y.numpy(), 7)
    other = distiller.evaluate(
        x, y_other, sample_weight=w, verbose=0, return_dict=True
    )
    for key in ("loss", "perplexity", "accuracy"):
        np.testing.assert_allclose(other[key], logs[key], rtol=1e-6)


@keras3_only
def test_fit_save_load_resume_with_gpt2_models(tokenizer, tmp_path):
    distiller = _distiller(tokenizer, tfkd.losses.GeneralizedJSD())
    x, y, w = _batch(tokenizer)
    data = tf.data.Dataset.from_tensors((x, y, w)).repeat(2)
    before = distiller.student.get_weights()
    distiller.fit(data, epochs=1, verbose=0)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(before, distiller.student.get_weights())
    )
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.student(x).numpy(), distiller.student(x).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        loaded.teacher(x).numpy(), distiller.teacher(x).numpy(), atol=1e-6
    )
    # Resumed: the same next step as the original.
    distiller.fit(data.take(1), verbose=0)
    loaded.fit(data.take(1), verbose=0)
    np.testing.assert_allclose(
        loaded.student(x).numpy(), distiller.student(x).numpy(), atol=1e-5
    )


@keras3_only
def test_attached_preprocessors_sharing_one_tokenizer_save_and_load(
    tokenizer, tmp_path
):
    """Teacher and student built with preprocessors around ONE tokenizer:
    the Distiller fits the tokenized batches (it calls the models, not
    their `fit`), and its file loads with the tokenizer's vocabulary."""
    distiller = _distiller(tokenizer)
    for model in (distiller.teacher, distiller.student):
        model.preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
            tokenizer, sequence_length=SEQ
        )
    x, y, w = _batch(tokenizer)
    distiller.fit(x, y, sample_weight=w, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.student(x).numpy(), distiller.student(x).numpy(), atol=1e-6
    )
    for model in (loaded.teacher, loaded.student):
        ids = model.preprocessor.tokenizer("def add(a, b):")
        np.testing.assert_array_equal(ids, tokenizer("def add(a, b):"))
    assert isinstance(loaded.student.generate("def ", max_length=8), str)


@pytest.mark.skipif(not _keras.IS_LEGACY, reason="tf_keras mode only")
def test_keras_hub_models_under_tf_keras_get_a_clear_error():
    lm = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.GPT2Backbone(
            vocabulary_size=20,
            num_layers=1,
            num_heads=1,
            hidden_dim=8,
            intermediate_dim=8,
            max_sequence_length=8,
        ),
        preprocessor=None,
    )
    with pytest.raises(
        TypeError,
        match="`teacher` is a keras-hub model \\(GPT2CausalLM\\): keras-hub "
        "models are Keras 3 only, and tfkd uses tf_keras. Unset "
        "TF_USE_LEGACY_KERAS",
    ):
        tfkd.Distiller(lm, lm)


@keras3_only
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distill_lm_example_runs_offline(tmp_path):
    stdout = run_module(
        "examples.distill_lm",
        f"--output_dir={tmp_path}",
        "--corpus=pydoc",
        "--vocabulary_size=300",
        "--sequence_length=32",
        "--batch_size=4",
        "--teacher_size=tiny",
        "--student_size=1,2,8,16",
        "--teacher_steps=3",
        "--student_steps=3",
        "--method=reverse_kl",
        timeout=850,
        env=KERAS_3,
    )
    import json

    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert sorted(results["models"]) == [
        "student_alone",
        "student_distilled",
        "teacher",
    ]
    for entry in results["models"].values():
        # Untrained on a 300-token vocabulary: near-uniform perplexity.
        assert 1.0 < entry["perplexity"] < 1000.0
        assert entry["sample"].startswith("def ")
    assert "validation perplexity" in stdout
    # The custom student size: 1 layer, 2 heads, 8 wide, 16 intermediate.
    assert results["models"]["student_alone"]["parameters"] == (
        keras_hub.models.GPT2Backbone(
            vocabulary_size=300,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            max_sequence_length=32,
        ).count_params()
    )


@pytest.mark.mode_independent
@pytest.mark.parametrize("size", ["huge", "2,3,8,16", "1,2,8", "0,1,8,8"])
def test_distill_lm_refuses_a_bad_model_size(size):
    from absl import flags

    from examples import distill_lm

    flag_values = flags.FlagValues()
    distill_lm.define_flags(flag_values)
    with pytest.raises(
        flags.IllegalFlagValueError, match="layers,heads,hidden,intermediate"
    ):
        flag_values(["prog", "--output_dir=x", f"--student_size={size}"])


@keras3_only
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lm_benchmark_runs_on_tiny_settings(tmp_path):
    """Five of its rows (the others differ only in the loss class): the
    student alone, live, tfkd's defaults, a sampled cache, and the student
    alone at the defaults' wall time."""
    rows = [
        "alone",
        "forward_kl",
        "default",
        "cache_forward_kl_sampled",
        "alone_wall_default",
    ]
    run_module(
        "benchmarks.lm",
        "--corpus=pydoc",
        "--vocabulary_size=300",
        "--sequence_length=16",
        "--batch_size=2",
        "--teacher_steps=2",
        "--student_steps=2",
        "--seeds=1",
        "--top_k=4",
        "--tail_samples=2",
        f"--rows={','.join(rows)}",
        f"--work_dir={tmp_path}",
        f"--output_dir={tmp_path}",
        timeout=850,
        env=KERAS_3,
    )
    table = (tmp_path / "lm.md").read_text()
    for row in rows[:-1]:
        assert f"| {row} | 2.0 |" in table, table
    assert "| alone_wall_default |" in table
    assert "| forward KL, top-4 cache + 2 tail samples |" in table


@keras3_only
@pytest.mark.slow
def test_lm_benchmark_step_cost_mode_times_every_contender(tmp_path):
    run_module(
        "benchmarks.lm",
        "--step_cost_vocabulary=300",
        "--step_cost_steps=2",
        "--sequence_length=16",
        "--batch_size=2",
        "--top_k=4",
        "--tail_samples=2",
        f"--output_dir={tmp_path}",
        timeout=850,
        env=KERAS_3,
    )
    cost = (tmp_path / "lm_step_cost.md").read_text()
    for row in (
        "| teacher inference |",
        "| student alone |",
        "| distilled, live teacher |",
        "| distilled, top-4 cache |",
        "| distilled, top-4 cache + 2 tail samples |",
        "| full logits |",
    ):
        assert row in cost, cost
