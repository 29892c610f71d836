r"""Language-model distillation: a keras-hub GPT-2 student alone vs distilled.

On CPython's library sources (offline on every machine; `--corpus`,
`--text_files`), a byte-level BPE (`--vocabulary_size`) and GPT-2 CausalLMs
built from configs (`examples/language.py`): the teacher (2 layers, 128
wide) is trained once and saved in `--work_dir` (reused when its settings
match); then, for each seed, students (1 layer, 64 wide) of the same
initial weights train for `--student_steps` steps:

- `alone`: the student alone (cross-entropy on the next tokens);
- `forward_kl`, `reverse_kl`, `gkd`: distilled from the live teacher with
  `tfkd.losses.ForwardKL()`, `ReverseKL()`, `GeneralizedJSD(beta=0.5)`
  (hard-label weight `--alpha`), padding masked per token;
- `default`: `tfkd.Distiller(teacher, student)`, tfkd's defaults (DIST,
  hard-label weight 0.1);
- `cache_forward_kl`, `cache_forward_kl_wide`: `ForwardKL()` from a top-k
  teacher cache (`tfkd.cache_teacher_outputs(..., top_k=k)`, `k` =
  `--top_k` and `--top_k_wide`, the teacher's tail mass kept as one bucket);
- `cache_forward_kl_sampled`: the `--top_k` cache with `--tail_samples`
  ids drawn from the teacher's tail per position (an unbiased forward-KL
  gradient);
- `alone_wall`, `alone_wall_cache`, `alone_wall_default`: the student
  alone for as many steps as fit in the `forward_kl` (`cache_forward_kl`,
  `default`) run's wall time (its steps: `--student_steps` times the ratio
  of this seed's measured step times).

Validation perplexity: `exp` of the mean cross-entropy over the real tokens
of held-out files. Every run is written to `lm.json` as it ends, and
`lm.md` is rewritten, so an interrupted benchmark keeps its rows; `--rows`
runs some rows only (added to the existing results).

    nohup python -m benchmarks.lm > lm.log 2>&1 &        # ~1 h, 2 cores

Keras 3 only (keras-hub).
"""

import json
import os
import platform
import statistics
import sys
import time

import tensorflow as tf
from absl import app
from absl import flags

import tfkd
from examples import cli
from examples import language
from tfkd import keras

FLAGS = flags.FLAGS

ROWS = (
    "alone",
    "forward_kl",
    "reverse_kl",
    "gkd",
    "default",
    "cache_forward_kl",
    "cache_forward_kl_wide",
    "cache_forward_kl_sampled",
    "alone_wall",
    "alone_wall_cache",
    "alone_wall_default",
)
# The row whose wall time an `alone_wall*` row matches.
WALL = {
    "alone_wall": "forward_kl",
    "alone_wall_cache": "cache_forward_kl",
    "alone_wall_default": "default",
}
METHODS = {
    "forward_kl": lambda: tfkd.losses.ForwardKL(),
    "reverse_kl": lambda: tfkd.losses.ReverseKL(),
    "gkd": lambda: tfkd.losses.GeneralizedJSD(beta=0.5),
    "cache_forward_kl": lambda: tfkd.losses.ForwardKL(),
    "cache_forward_kl_wide": lambda: tfkd.losses.ForwardKL(),
    "cache_forward_kl_sampled": lambda: tfkd.losses.ForwardKL(),
}


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "corpus", "stdlib", language.CORPORA, "Built-in corpus.", **fv
    )
    flags.DEFINE_string(
        "text_files", None, "Glob of your text files (instead).", **fv
    )
    flags.DEFINE_integer("vocabulary_size", 2048, "BPE vocabulary.", **fv)
    flags.DEFINE_integer("sequence_length", 128, "Tokens per window.", **fv)
    flags.DEFINE_integer("batch_size", 16, "Windows per batch.", **fv)
    flags.DEFINE_integer("teacher_steps", 1500, "Teacher steps.", **fv)
    flags.DEFINE_integer("student_steps", 600, "Student steps.", **fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW rate.", **fv)
    flags.DEFINE_float("alpha", 0.5, "Hard-label weight.", **fv)
    flags.DEFINE_integer("top_k", 16, "Logits kept by the cache.", **fv)
    flags.DEFINE_integer(
        "top_k_wide", 64, "Logits kept by the wide cache's row.", **fv
    )
    flags.DEFINE_integer(
        "tail_samples", 16, "Tail ids kept by the sampled cache's row.", **fv
    )
    flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1.", lower_bound=1, **fv)
    cli.define_names("rows", list(ROWS), ROWS, "Rows to run.", **fv)
    flags.DEFINE_string(
        "work_dir", "runs/lm_benchmark", "Where the teacher is kept.", **fv
    )
    flags.DEFINE_string(
        "output_dir", "benchmarks/results", "Where lm.md/json go.", **fv
    )
    flags.DEFINE_integer(
        "step_cost_vocabulary",
        None,
        "Instead of the table: time the steps (alone, teacher inference, "
        "live and cached forward KL) and measure the cache's bytes per "
        "position at this vocabulary (e.g. 8192); writes lm_step_cost.md.",
        **fv,
    )
    flags.DEFINE_integer(
        "step_cost_steps", 30, "Timed steps per contender.", **fv
    )
    flags.DEFINE_boolean(
        "jit_compile",
        False,
        "Compile every model's steps with XLA (`compile(jit_compile=True)`), "
        "the student alone's too.",
        **fv,
    )


class _Timer(keras.callbacks.Callback):
    """Wall time of `fit`'s steps: `seconds` from the first step's start
    (tracing included), `step_seconds` per step after the first."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()
        elif batch == 1:
            self.second = time.perf_counter()
        self.batches = batch + 1

    def on_train_end(self, logs=None):
        end = time.perf_counter()
        self.seconds = end - self.start
        if self.batches < 2:  # One step: its time, tracing included.
            self.step_seconds = self.seconds
        else:
            self.step_seconds = (end - self.second) / (self.batches - 1)


def _settings():
    return {
        key: FLAGS[key].value
        for key in (
            "corpus",
            "text_files",
            "vocabulary_size",
            "sequence_length",
            "batch_size",
            "teacher_steps",
            "learning_rate",
        )
    }


def _run_settings():
    """What the students' rows depend on beyond the teacher's settings:
    rows added by another command must share them."""
    return {
        key: FLAGS[key].value
        for key in (
            "student_steps",
            "alpha",
            "top_k",
            "top_k_wide",
            "tail_samples",
        )
    } | {"jit_compile": FLAGS.jit_compile}


def _data():
    docs = language.documents(FLAGS.corpus, FLAGS.text_files)
    train_docs, valid_docs = language.split(docs)
    bpe, tokenizer = language.train_bpe(
        [text for _, text in train_docs], FLAGS.vocabulary_size
    )
    end = tokenizer.end_token_id
    texts = [[t for _, t in part] for part in (train_docs, valid_docs)]
    train, valid = (
        language.windows(bpe, part, FLAGS.sequence_length, end)
        for part in texts
    )
    return tokenizer, train, valid


def _model(size, seed, name):
    return language.causal_lm(
        size, FLAGS.vocabulary_size, FLAGS.sequence_length, seed, name
    )


def _teacher(train, valid_set):
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    weights = os.path.join(FLAGS.work_dir, "teacher.weights.h5")
    described = os.path.join(FLAGS.work_dir, "teacher.json")
    teacher = _model("teacher", 1234, "teacher")
    if os.path.exists(weights) and os.path.exists(described):
        with open(described) as f:
            saved = json.load(f)
        if saved["settings"] == _settings():
            teacher.load_weights(weights)
            print(f"Teacher loaded: perplexity {saved['perplexity']:.2f}")
            return teacher, saved
    teacher.compile(
        optimizer=language.optimizer(FLAGS.learning_rate, FLAGS.teacher_steps),
        loss=language.token_loss(),
    )
    timer = _Timer()
    teacher.fit(
        language.dataset(train, FLAGS.batch_size, shuffle_seed=99, repeat=True),
        steps_per_epoch=FLAGS.teacher_steps,
        epochs=1,
        verbose=2,
        callbacks=[timer],
    )
    saved = {
        "settings": _settings(),
        "perplexity": language.perplexity(teacher, valid_set),
        "seconds": timer.seconds,
        "parameters": teacher.count_params(),
    }
    teacher.save_weights(weights)
    with open(described, "w") as f:
        json.dump(saved, f, indent=2)
    print(f"Teacher trained: perplexity {saved['perplexity']:.2f}")
    return teacher, saved


def _top_k(row):
    return FLAGS.top_k_wide if row.endswith("_wide") else FLAGS.top_k


def _run(row, seed, teacher, train, valid_set, steps):
    """Trains one student; returns its perplexity, steps and seconds."""
    student = _model("student", seed, "student")
    data = language.dataset(
        train, FLAGS.batch_size, shuffle_seed=seed, repeat=True
    )
    optimizer = language.optimizer(FLAGS.learning_rate, steps)
    if row == "alone" or row in WALL:
        model = student
        model.compile(
            optimizer=optimizer,
            loss=language.token_loss(),
            jit_compile=FLAGS.jit_compile,
        )
    else:
        if row == "default":  # `tfkd.Distiller(teacher, student)`.
            model = tfkd.Distiller(teacher, student)
        else:
            model = tfkd.Distiller(
                teacher,
                student,
                distillation_loss=METHODS[row](),
                alpha=FLAGS.alpha,
            )
        model.compile(
            optimizer=optimizer,
            loss=language.token_loss(),
            jit_compile=FLAGS.jit_compile,
        )
        if row.startswith("cache_"):
            once = language.dataset(
                train, FLAGS.batch_size, shuffle_seed=seed
            ).take(steps)
            data = tfkd.cache_teacher_outputs(
                model,
                once,
                top_k=_top_k(row),
                tail_samples=FLAGS.tail_samples if "sampled" in row else 0,
                verbose=0,
            ).repeat()
    timer = _Timer()
    model.fit(
        data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer]
    )
    return {
        "perplexity": language.perplexity(student, valid_set),
        "steps": steps,
        "seconds": timer.seconds,
        "step_seconds": timer.step_seconds,
    }


def _load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"runs": {}}


def _cell(runs, key):
    values = [run[key] for run in runs]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


# The README's table: (row, label).
README_ROWS = (
    ("alone", "alone"),
    ("default", "`tfkd.Distiller(teacher, student)`"),
    ("alone_wall_default", "alone, the same wall time"),
    ("forward_kl", "forward KL, live teacher"),
    (
        "cache_forward_kl_sampled",
        "forward KL, top-{top_k} cache + {tail_samples} tail samples",
    ),
)


def readme_table(results):
    """The README's rows: validation perplexity, mean +- std over seeds."""
    lines = ["| student | perplexity |", "|---|---|"]
    for row, label in README_ROWS:
        runs = list(results["runs"].get(row, {}).values())
        if runs:
            label = label.format(
                top_k=results["top_k"],
                tail_samples=results.get("tail_samples"),
            )
            cell = _cell(runs, "perplexity").replace("+-", "±")
            lines.append(f"| {label} | {cell} |")
    return lines


def _markdown(results):
    lines = [
        "# Language-model distillation (keras-hub GPT-2, issue 25)",
        "",
        "Commands: "
        + ", then ".join(f"`{c}`" for c in results.get("commands", [])),
        "",
        f"Teacher: {results['teacher']['parameters']:,} parameters, "
        f"{results['settings']['teacher_steps']} steps, validation "
        f"perplexity {results['teacher']['perplexity']:.2f}. Student: "
        "GPT-2 1 layer, 64 wide. Corpus "
        f"{results['settings']['corpus']}, BPE vocabulary "
        f"{results['settings']['vocabulary_size']}, batches of "
        f"{results['settings']['batch_size']} x "
        f"{results['settings']['sequence_length']} tokens; hard-label "
        f"weight {results['alpha']:g}; top-k caches k={results['top_k']} "
        f"(`cache_forward_kl`) and k={results.get('top_k_wide')} (`_wide`), "
        f"k={results['top_k']} with {results.get('tail_samples')} tail "
        "samples (`_sampled`); "
        f"XLA: {results.get('jit_compile', False)}.",
        "",
        "| row | steps | train seconds | ms per step | validation "
        "perplexity | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = list(results["runs"].get(row, {}).values())
        ms = [{"ms": 1000 * run["step_seconds"]} for run in runs]
        if runs:
            lines.append(
                f"| {row} | {_cell(runs, 'steps')} | "
                f"{_cell(runs, 'seconds')} | {_cell(ms, 'ms')} | "
                f"{_cell(runs, 'perplexity')} | "
                f"{len(runs)} |"
            )
    lines += [
        "",
        "Perplexity: exp of the mean cross-entropy over the real (unpadded) "
        "tokens of the held-out files; mean +- std over seeds. Wall times on "
        "a shared 2-core machine are noisy.",
        "",
        "The README's table:",
        "",
        *readme_table(results),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"tensorflow {tf.__version__}, keras {keras.__version__}.",
        "",
    ]
    return "\n".join(lines)


def _folder_bytes(folder):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
    )


def _step_cost():
    """Milliseconds per step and cache bytes per position at a large
    vocabulary (untrained models: the cost does not depend on the
    weights)."""
    import tempfile

    import numpy as np

    vocab, length = FLAGS.step_cost_vocabulary, FLAGS.sequence_length
    batch, steps = FLAGS.batch_size, FLAGS.step_cost_steps
    rng = np.random.default_rng(0)
    n = batch * steps
    ids = rng.integers(1, vocab, size=(n, length + 1)).astype("int32")
    mask = np.ones((n, length), bool)
    arrays = (ids[:, :-1], mask, ids[:, 1:], mask.astype("float32"))
    data = language.dataset(arrays, batch)
    teacher = language.causal_lm("teacher", vocab, length, 0, "teacher")
    lines = []

    def timed(model, train):
        model.fit(train.take(2), verbose=0)  # Tracing.
        timer = _Timer()
        model.fit(train, verbose=0, callbacks=[timer])
        return 1000 * timer.step_seconds

    def fresh(method=None):
        student = language.causal_lm("student", vocab, length, 1, "student")
        model = student
        if method is not None:
            model = tfkd.Distiller(
                teacher, student, distillation_loss=method, alpha=FLAGS.alpha
            )
        model.compile(
            optimizer=language.optimizer(1e-3, 100),
            loss=language.token_loss(),
            jit_compile=FLAGS.jit_compile,
        )
        return model

    infer = tf.function(
        lambda x: teacher(x, training=False), jit_compile=FLAGS.jit_compile
    )
    for x, _, _ in data.take(2):
        infer(x)
    start = time.perf_counter()
    for x, _, _ in data:
        infer(x)
    times = {"teacher inference": 1000 * (time.perf_counter() - start) / steps}
    times["student alone"] = timed(fresh(), data)
    times["distilled, live teacher"] = timed(
        fresh(tfkd.losses.ForwardKL()), data
    )
    distiller = fresh(tfkd.losses.ForwardKL())
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        samples = FLAGS.tail_samples
        for top_k, tail in ((FLAGS.top_k, 0), (FLAGS.top_k, samples), (0, 0)):
            label = f"top-{top_k} cache" + (
                f" + {tail} tail samples" if tail else ""
            )
            cache_dir = os.path.join(folder, f"k{top_k}_{tail}")
            part = data if top_k else data.take(2)
            cached = tfkd.cache_teacher_outputs(
                distiller,
                part,
                cache_dir=cache_dir,
                top_k=top_k or None,
                tail_samples=tail,
                verbose=0,
            )
            positions = batch * length * (steps if top_k else 2)
            sizes[label if top_k else None] = (
                _folder_bytes(cache_dir) / positions
            )
            if top_k:
                times[f"distilled, {label}"] = timed(distiller, cached)
    cache_ratio = (
        times[f"distilled, top-{FLAGS.top_k} cache"] / times["student alone"]
    )
    lines += [
        f"# LM step cost at a {vocab:,}-token vocabulary",
        "",
        f"Command: `python -m benchmarks.lm {' '.join(sys.argv[1:])}`",
        "",
        f"GPT-2 teacher (2 layers, 128 wide) and student (1 layer, 64 "
        f"wide), batches of {batch} x {length} tokens, forward KL with "
        f"hard-label weight {FLAGS.alpha:g}; milliseconds per step over "
        f"{steps} steps after tracing (wall time, shared 2-core machine: "
        "noisy).",
        "",
        "| step | ms |",
        "|---|---|",
        *(f"| {name} | {ms:.0f} |" for name, ms in times.items()),
        "",
        f"Live bound (teacher inference + student alone): "
        f"{times['teacher inference'] + times['student alone']:.0f} ms; "
        f"cache / alone: {cache_ratio:.2f}x.",
        "",
        "| cache | bytes per position (on disk) |",
        "|---|---|",
        *(
            f"| {label} (values, ids, log-normalizer[, tail ids]) | "
            f"{size:.0f} |"
            for label, size in sizes.items()
            if label is not None
        ),
        f"| full logits | {sizes[None]:.0f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "lm_step_cost.md"), "w") as f:
        f.write(text)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    if tfkd.KERAS_NAME == "tf_keras":
        raise app.UsageError("keras-hub is Keras 3 only.")
    if FLAGS.step_cost_vocabulary:
        _step_cost()
        return
    tokenizer, train, valid = _data()
    valid_set = language.dataset(valid, 64)
    teacher, described = _teacher(train, valid_set)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "lm.json")
    results = _load(path)
    if results.get("settings") != _settings() or (
        results.get("run_settings") != _run_settings()
    ):
        results = {"runs": {}}
    results.update(
        settings=_settings(),
        run_settings=_run_settings(),
        teacher=described,
        alpha=FLAGS.alpha,
        top_k=FLAGS.top_k,
        top_k_wide=FLAGS.top_k_wide,
        tail_samples=FLAGS.tail_samples,
        jit_compile=FLAGS.jit_compile,
    )
    # Runs that add rows to the same settings keep every command.
    command = "python -m benchmarks.lm " + " ".join(sys.argv[1:])
    commands = results.get("commands", [results.pop("command", None)])
    results["commands"] = [c for c in commands if c and c != command] + [
        command
    ]
    rows = [row for row in ROWS if row in FLAGS.rows]
    for seed in range(FLAGS.seeds):
        for row in rows:
            steps = FLAGS.student_steps
            if row in WALL:
                done = results["runs"]
                alone = done["alone"][str(seed)]
                live = done[WALL[row]][str(seed)]
                steps = round(
                    steps * live["step_seconds"] / alone["step_seconds"]
                )
            run = _run(row, seed, teacher, train, valid_set, steps)
            results["runs"].setdefault(row, {})[str(seed)] = run
            print(f"seed {seed} {row}: {run}", flush=True)
            with open(path, "w") as f:
                json.dump(results, f, indent=2)
            with open(os.path.join(FLAGS.output_dir, "lm.md"), "w") as f:
                f.write(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    define_flags()
    app.run(main)
