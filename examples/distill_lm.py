r"""Distils a keras-hub GPT-2 language model, offline, in ~15 min on 2 cores.

Trains a byte-level BPE tokenizer and a GPT-2 teacher built from a config
(no downloaded weights) on CPython's own library sources (`--corpus=stdlib`,
on every machine), its documentation text (`--corpus=pydoc`) or your text
files (`--text_files='notes/**/*.txt'`); then a smaller student alone and
distilled with `tfkd.Distiller` (tfkd's defaults: DIST, hard-label weight
0.1; or a token-level divergence, `--method`), with the same steps and
initial weights. Prints the validation perplexity
(over the real tokens, padding masked) of all three and a generated sample
of each, and writes them to `--output_dir/results.json`.

The CausalLMs train with `preprocessor=None` on tokenized batches of the
form keras-hub's `CausalLMPreprocessor` gives (`({"token_ids",
"padding_mask"}, labels, padding mask as sample weights)`); a
`GPT2CausalLMPreprocessor` is attached for `generate` only.

Usage:
    python -m examples.distill_lm --output_dir=runs/lm
    python -m examples.distill_lm --method=reverse_kl --output_dir=runs/rkl
    python -m examples.distill_lm --text_files='docs/*.md' --output_dir=runs/md

Keras 3 only (keras-hub).
"""

import json
import os
import time

from absl import app
from absl import flags

import tfkd
from examples import language
from tfkd import keras

FLAGS = flags.FLAGS

METHODS = {
    # tfkd's default method (`tfkd.Distiller(teacher, student)`): the best
    # student of `python -m benchmarks.lm` (docs/language_models.md).
    "dist": lambda: tfkd.losses.DIST(),
    "forward_kl": lambda: tfkd.losses.ForwardKL(),
    "reverse_kl": lambda: tfkd.losses.ReverseKL(),
    "gkd": lambda: tfkd.losses.GeneralizedJSD(beta=0.5),
    "skew_kl": lambda: tfkd.losses.SkewKL(alpha=0.1),
    "skew_reverse_kl": lambda: tfkd.losses.SkewReverseKL(alpha=0.1),
    "tvd": lambda: tfkd.losses.TVD(),
}


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "corpus",
        "stdlib",
        language.CORPORA,
        "stdlib: CPython's library sources; pydoc: its help texts.",
        **fv,
    )
    flags.DEFINE_string(
        "text_files",
        None,
        "Glob pattern of your UTF-8 text files (instead of --corpus).",
        **fv,
    )
    flags.DEFINE_enum(
        "method",
        "dist",
        sorted(METHODS),
        "dist: tfkd's default (DIST); the others: token divergences.",
        **fv,
    )
    flags.DEFINE_float(
        "alpha",
        0.1,
        "Weight of the next-token cross-entropy (tfkd's default).",
        **fv,
    )
    flags.DEFINE_integer(
        "vocabulary_size", 2048, "BPE vocabulary.", lower_bound=260, **fv
    )
    flags.DEFINE_integer(
        "sequence_length", 128, "Tokens per window.", lower_bound=8, **fv
    )
    flags.DEFINE_integer("batch_size", 16, "Windows per batch.", **fv)
    flags.DEFINE_integer(
        "teacher_steps", 2000, "Teacher steps.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "student_steps", 800, "Student steps.", lower_bound=1, **fv
    )
    for role, default in (("teacher", "teacher"), ("student", "student")):
        flags.DEFINE_string(
            f"{role}_size",
            default,
            f"The {role}'s GPT-2 size: one of {sorted(language.SIZES)} "
            '(tiny: tests) or "layers,heads,hidden,intermediate".',
            **fv,
        )
        flags.register_validator(
            f"{role}_size",
            _is_size,
            message=f"--{role}_size must be one of {sorted(language.SIZES)} "
            'or "layers,heads,hidden,intermediate" (positive integers, '
            "hidden a multiple of heads)",
            **fv,
        )
    flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW rate.", **fv)
    flags.DEFINE_integer("seed", 0, "Seed.", lower_bound=0, **fv)
    flags.DEFINE_string("prompt", "def ", "Prompt of the samples.", **fv)
    flags.DEFINE_string("output_dir", None, "Where to write.", **fv)
    flags.mark_flag_as_required("output_dir", **fv)
    flags.register_validator(
        "alpha",
        lambda value: 0.0 <= value <= 1.0,
        message="--alpha must be in [0, 1]",
        **fv,
    )
    flags.register_validator(
        "learning_rate",
        lambda value: value > 0,
        message="--learning_rate must be > 0",
        **fv,
    )


def _is_size(value):
    try:
        language.parse_size(value)
    except ValueError:
        return False
    return True


def _train(model, data, steps, label):
    model.compile(
        optimizer=language.optimizer(FLAGS.learning_rate, steps),
        loss=language.token_loss(),
        # Per real token: Keras gives weighted metrics the padding mask.
        weighted_metrics=language.token_metrics(),
    )
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=2)
    seconds = time.perf_counter() - start
    print(f"{label}: {steps} steps in {seconds:.0f} s")
    return seconds


def main(argv):
    del argv
    if tfkd.KERAS_NAME == "tf_keras":
        raise app.UsageError("keras-hub is Keras 3 only.")
    started = time.perf_counter()
    docs = language.documents(FLAGS.corpus, FLAGS.text_files)
    train_docs, valid_docs = language.split(docs)
    bpe, tokenizer = language.train_bpe(
        [text for _, text in train_docs], FLAGS.vocabulary_size
    )
    length, end = FLAGS.sequence_length, tokenizer.end_token_id
    train, valid = (
        language.windows(bpe, [text for _, text in part], length, end)
        for part in (train_docs, valid_docs)
    )
    print(
        f"{len(train_docs)} training and {len(valid_docs)} validation "
        f"documents: {len(train[0])} and {len(valid[0])} windows of "
        f"{length} tokens ({1 - valid[3].mean():.1%} of validation "
        "positions padded)."
    )
    valid_set = language.dataset(valid, 64)
    vocab = FLAGS.vocabulary_size

    def data(seed):
        return language.dataset(
            train, FLAGS.batch_size, shuffle_seed=seed, repeat=True
        )

    teacher = language.causal_lm(
        FLAGS.teacher_size, vocab, length, FLAGS.seed + 1000, "teacher"
    )
    seconds = {
        "teacher": _train(teacher, data(99), FLAGS.teacher_steps, "teacher")
    }
    models = {"teacher": teacher}
    for name in ("student_alone", "student_distilled"):
        student = language.causal_lm(
            FLAGS.student_size, vocab, length, FLAGS.seed, name
        )
        model = student
        if name == "student_distilled":
            model = tfkd.Distiller(
                teacher,
                student,
                distillation_loss=METHODS[FLAGS.method](),
                alpha=FLAGS.alpha,
            )
        seconds[name] = _train(
            model, data(FLAGS.seed), FLAGS.student_steps, name
        )
        models[name] = student
    results = {}
    for name, model in models.items():
        results[name] = {
            "perplexity": language.perplexity(model, valid_set),
            "parameters": model.count_params(),
            "train_seconds": seconds[name],
            "sample": language.generate(
                model,
                tokenizer,
                FLAGS.prompt,
                length,
                max_length=min(48, length),
            ),
        }
    for name, result in results.items():
        print(
            f"\n{name} ({result['parameters']:,} parameters): validation "
            f"perplexity {result['perplexity']:.2f}\n"
            f"sample: {result['sample']!r}"
        )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "flags": {key: FLAGS[key].value for key in _OWN_FLAGS},
                "models": results,
                "seconds": time.perf_counter() - started,
                "keras": keras.__version__,
            },
            f,
            indent=2,
        )
    print(f"\nDone in {time.perf_counter() - started:.0f} s.")


_OWN_FLAGS = (
    "corpus text_files method alpha vocabulary_size sequence_length "
    "batch_size teacher_steps student_steps teacher_size student_size "
    "learning_rate seed prompt"
).split()


if __name__ == "__main__":
    define_flags()
    app.run(main)
