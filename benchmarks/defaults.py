r"""Which `tfkd.Distiller(teacher, student)` defaults make the student better?

Evidence for the defaults (issue 12): every recipe of `--recipes` (a
distillation method, its temperature and the hard-label weight `alpha`)
trains each student of `--students` on each data set of `--datasets`, once
per seed, and is compared with the student alone (hard labels). Test
accuracy is read after `--short_epochs` and after `--epochs` epochs of the
same run: with a constant learning rate (Adam 1e-3) the first is exactly a
short schedule, the second a longer one.

Teachers: mnist_5k trains `teacher_cnn` here (`--teacher_epochs`, seed 0);
the other data sets use the benchmark teachers of
`benchmarks/train_teachers.py` (`strong_teachers.load_teacher`). Teacher
outputs are cached once per data set (no augmentation, so caching is
exact), and every recipe of a seed sees the same batches in the same order.

    python -m benchmarks.defaults                         # ~2.5 h on 2 cores
    python -m benchmarks.defaults --datasets=mnist_5k --seeds=1 \
        --epochs=2 --short_epochs=1 --recipes=alone,kd_t4_a0.1   # quick

Writes `benchmarks/results/defaults.md` and `defaults.json`. Results
accumulate per data set: a run updates the rows of its `--datasets` and
keeps the others (so data sets can run in separate processes).
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import tfkd
from benchmarks import strong_teachers
from examples import cli
from examples import data
from examples import methods
from examples import models
from examples import report
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS
# Per data set: (training examples kept, batch size).
SETTINGS = {
    "mnist_5k": (None, 64),
    "fashion_mnist": (10_000, 128),
    "cifar10": (10_000, 128),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way to train the student.

    `method`: a name of `examples.methods` (None: hard labels alone) at
    `temperature`, hard-label weight `alpha`. `augment`: a random crop after
    zero padding (plus a horizontal flip where the data set allows) of each
    training batch, the same view for teacher and student
    (`tfkd.Distiller(augment=...)`); `mixup`: its `alpha` (function matching,
    Beyer et al. 2022).
    """

    method: str | None
    temperature: float = 1.0
    alpha: float = 0.1
    augment: bool = False
    mixup: float = 0.0

    @property
    def live(self):
        """The teacher runs in every step (no cached outputs)."""
        return self.augment or self.method not in _LOGIT_METHODS


_LOGIT_METHODS = (None, "kd", "kd_standardized", "dkd", "dist")
RECIPES = {
    "alone": Recipe(None),
    "alone_aug": Recipe(None, augment=True),
    "kd_t4_a0.1": Recipe("kd", 4.0, 0.1),
    "kd_t4_a0.5": Recipe("kd", 4.0, 0.5),
    "kd_t2_a0.5": Recipe("kd", 2.0, 0.5),
    "kd_t1_a0.5": Recipe("kd", 1.0, 0.5),
    "lskd_t2_a0.1": Recipe("kd_standardized", 2.0, 0.1),
    "lskd_t2_a0.5": Recipe("kd_standardized", 2.0, 0.5),
    "dkd_t4_a0.5": Recipe("dkd", 4.0, 0.5),
    "dist_a0.1": Recipe("dist", 1.0, 0.1),
    "dist_a0.5": Recipe("dist", 1.0, 0.5),
    "dist_a0.1_aug": Recipe("dist", 1.0, 0.1, augment=True),
    "dist_a0.1_fm": Recipe("dist", 1.0, 0.1, augment=True, mixup=1.0),
    "attention_t4_a0.1": Recipe("attention", 4.0, 0.1),
}
# Per data set: (zero padding before the random crop, horizontal flip); the
# teachers' training augmentation where there is one, no flip for digits.
AUGMENTATION = {
    "mnist_5k": (2, False),
    **{
        name: (recipe.crop_padding, recipe.flip)
        for name, recipe in strong_teachers.RECIPES.items()
    },
}

# The candidates for the defaults: logit methods on cached teacher outputs.
DEFAULT_RECIPES = [
    name
    for name, recipe in RECIPES.items()
    if not recipe.live and recipe.method != "dkd"
]


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    cli.define_names("datasets", list(SETTINGS), SETTINGS, "Data sets.", **fv)
    cli.define_names(
        "students",
        ["student_mlp", "student_cnn"],
        models.MODELS,
        "Students (examples/models).",
        **fv,
    )
    cli.define_names(
        "recipes",
        DEFAULT_RECIPES,
        RECIPES,
        "Recipes; `alone` (the baseline) is needed. Default: the candidates "
        "for the defaults.",
        **fv,
    )
    flags.register_validator(
        "recipes",
        lambda names: "alone" in names,
        message="must include `alone` (the baseline)",
        **fv,
    )
    flags.DEFINE_integer(
        "short_epochs",
        5,
        "The short schedule's epochs (read in the same run).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "teacher_epochs",
        15,
        "Epochs of the mnist_5k teacher (trained here).",
        lower_bound=1,
        **fv,
    )
    cli.define(
        "seeds",
        "epochs",
        "train_examples",
        "data_dir",
        "source_dir",
        "output_dir",
        common=(),
        epochs=(20, "The longer schedule's epochs."),
        train_examples=(
            None,
            "Training examples kept (default: per data set).",
        ),
        output_dir=(strong_teachers.RESULTS_DIR, "Results folder."),
        **fv,
    )
    flags.register_multi_flags_validator(
        ["short_epochs", "epochs"],
        lambda values: values["short_epochs"] <= values["epochs"],
        message="--short_epochs must be <= --epochs",
        **fv,
    )
    flags.DEFINE_string(
        "teachers_dir",
        strong_teachers.WEIGHTS_DIR,
        "Benchmark teachers' weights.",
        **fv,
    )
    flags.DEFINE_string(
        "output_name",
        "defaults",
        "Results file names, without extension.",
        **fv,
    )
    flags.DEFINE_bool(
        "markdown_only",
        False,
        "Only rewrite the .md from the .json results.",
        **fv,
    )


def _shuffled(dataset, size, batch_size, seed):
    return (
        dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _teacher(name, train, test, batch_size):
    """The data set's teacher and its test accuracy."""
    if name == "mnist_5k":
        keras.utils.set_random_seed(0)
        teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
        teacher.compile(keras.optimizers.Adam(1e-3), training.hard_label_loss())
        source = tf.data.Dataset.from_tensor_slices(train)
        teacher.fit(
            _shuffled(source, len(train[1]), batch_size, 0),
            epochs=FLAGS.teacher_epochs,
            verbose=0,
        )
    else:
        teacher = strong_teachers.load_teacher(name, FLAGS.teachers_dir)
    return teacher, training.accuracy(teacher, test)


class _Checkpoints(keras.callbacks.Callback):
    """Test accuracy of `student` after the given epochs."""

    def __init__(self, student, test, epochs):
        super().__init__()
        self._student, self._test, self._epochs = student, test, epochs
        self.accuracies = {}

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self._epochs:
            self.accuracies[epoch + 1] = training.accuracy(
                self._student, self._test
            )


def _augmenter(name, shape):
    padding, flip = AUGMENTATION[name]
    return keras.Sequential(
        [
            keras.layers.ZeroPadding2D(padding),
            keras.layers.RandomCrop(*shape[:2]),
            *([keras.layers.RandomFlip("horizontal")] if flip else []),
        ],
        name="augment",
    )


def _run(name, recipe, student_name, teacher, train, cached, test, seed):
    batch = SETTINGS[name][1]
    recipe = RECIPES[recipe]
    keras.utils.set_random_seed(seed)
    student = models.build_model(student_name, train[0].shape[1:], 10)
    augment = _augmenter(name, train[0].shape[1:]) if recipe.augment else None
    source = tf.data.Dataset.from_tensor_slices(train)
    if recipe.method is None:
        model = student
        batches = _shuffled(source, len(train[1]), batch, seed)
        if augment is not None:
            batches = batches.map(lambda x, y: (augment(x, training=True), y))
    else:
        model = tfkd.Distiller(
            teacher,
            student,
            methods.build(recipe.method, recipe.temperature),
            alpha=recipe.alpha,
            augment=augment,
            mixup=recipe.mixup,
        )
        if not recipe.live:
            source = cached.unbatch()
        batches = _shuffled(source, len(train[1]), batch, seed)
    model.compile(keras.optimizers.Adam(1e-3), training.hard_label_loss())
    checkpoints = _Checkpoints(
        student, test, {FLAGS.short_epochs, FLAGS.epochs}
    )
    model.fit(batches, epochs=FLAGS.epochs, callbacks=[checkpoints], verbose=0)
    return checkpoints.accuracies


def _applies(recipe, student):
    """Feature methods on conv maps need a student with them."""
    conv = RECIPES[recipe].method in methods.CONV_METHODS
    return not conv or student != "student_mlp"


def _run_dataset(name):
    began = time.time()
    kept, batch = SETTINGS[name]
    kept = FLAGS.train_examples or kept
    load = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
    images, labels = data.arrays(name, "train", num_examples=kept, **load)
    train = (images.astype(np.float32) / 255.0, labels)
    test = data.from_arrays(*data.arrays(name, "test", **load), batch_size=1000)
    teacher, teacher_accuracy = _teacher(name, train, test, batch)
    print(f"{name}: teacher {100 * teacher_accuracy:.2f}%", flush=True)
    cached = tfkd.cache_teacher_outputs(
        teacher,
        tf.data.Dataset.from_tensor_slices(train).batch(1024),
        verbose=0,
    )
    # accuracies[student][recipe][epochs] = [one per seed]
    accuracies = {
        s: {r: {} for r in FLAGS.recipes if _applies(r, s)}
        for s in FLAGS.students
    }
    result = {
        "train_examples": len(train[1]),
        "test_examples": int(sum(len(y) for _, y in test)),
        "batch_size": batch,
        "teacher": teacher.name,
        "teacher_accuracy": teacher_accuracy,
        "accuracies": accuracies,
        **report.header(),
    }
    for seed in range(FLAGS.seeds):
        for student in FLAGS.students:
            for recipe in FLAGS.recipes:
                if not _applies(recipe, student):
                    continue
                reads = _run(
                    name, recipe, student, teacher, train, cached, test, seed
                )
                for epochs, value in reads.items():
                    accuracies[student][recipe].setdefault(
                        str(epochs), []
                    ).append(value)
                print(
                    f"{name} seed {seed} {student} {recipe}: "
                    + ", ".join(
                        f"{e} epochs {100 * v:.2f}%" for e, v in reads.items()
                    ),
                    flush=True,
                )
        # Saved after each seed: a stopped run keeps its finished seeds.
        result.update(seeds=seed + 1, seconds=time.time() - began)
        lines = _save(name, result)
    return lines


def _save(name, result):
    """Adds `result` (data set `name`, unless None) to the results files."""

    def update(results):
        if name is not None:
            results[name] = result
        return {key: results[key] for key in SETTINGS if key in results}

    path = os.path.join(FLAGS.output_dir, FLAGS.output_name)
    return report.update_results(path, update, _markdown)


def _cell(values, alone):
    values, alone = 100 * np.array(values), 100 * np.array(alone)
    gain = values.mean() - alone.mean()
    return f"{values.mean():.2f} ± {values.std():.2f} ({gain:+.2f})"


# The README's table: the student alone, tfkd 0.1's default, the default.
HEADLINE = ("alone", "kd_t4_a0.1", "dist_a0.1")


def headline(results):
    """The README table's lines: per data set, student and schedule, the
    accuracy of each recipe of `HEADLINE` (mean ± std over the seeds)."""
    lines = [
        "| data set | student | teacher | epochs | alone | tfkd 0.1 (KD, T=4) "
        "| default (DIST) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for student, by_recipe in result["accuracies"].items():
            if not all(by_recipe.get(r) for r in HEADLINE):
                continue
            for epochs in sorted(by_recipe["alone"], key=int):
                cells = []
                for recipe in HEADLINE:
                    values = 100 * np.array(by_recipe[recipe][epochs])
                    cells.append(f"{values.mean():.1f} ± {values.std():.1f}")
                lines.append(
                    f"| {name} | {student} | "
                    f"{100 * result['teacher_accuracy']:.1f} | {epochs} | "
                    + " | ".join(cells)
                    + " |"
                )
    return lines


def _markdown(results):
    recipes = [
        r
        for r in RECIPES
        if r != "alone"
        and any(
            by_recipe.get(r)
            for result in results.values()
            for by_recipe in result["accuracies"].values()
        )
    ]
    table = headline(results)
    readme = FLAGS.output_name == "defaults"
    lines = [
        "# Defaults: which recipe makes the student better?"
        if readme
        else f"# Recipes compared ({FLAGS.output_name})",
        "",
        *(
            [
                "Both schedules"
                + (" (the README's table):" if readme else ":"),
                "",
                *table,
                "",
            ]
            if len(table) > 2
            else []
        ),
        "Test accuracy %, mean ± std (population) over "
        "the seeds, and in parentheses the gain over the student "
        "alone. `kd_t4_a0.1`: KD, T=4, hard-label weight alpha=0.1 (the "
        "defaults of tfkd 0.1); `lskd`: KD on standardized logits (Sun "
        "et al. 2024); `dkd`: DKD (Zhao et al. 2022); `dist`: DIST (Huang "
        "et al. 2022, T=1); `attention`: attention transfer on the "
        "`features` maps plus KD; `_aug`: pad-and-crop (and flip) "
        "augmentation of each batch, the same view for teacher and student; "
        "`_fm`: that plus mixup 1.0 (function matching). Adam 1e-3, "
        "constant; the shorter schedule (`epochs` column) is the same run "
        "read earlier.",
        "",
        "| data set | student | epochs | teacher | alone | "
        + " | ".join(recipes)
        + " |",
        "|---" * (len(recipes) + 5) + "|",
    ]
    gains = {r: [] for r in recipes}
    for name, result in results.items():
        for student, by_recipe in result["accuracies"].items():
            for epochs in sorted(by_recipe["alone"], key=int):
                alone = by_recipe["alone"][epochs]
                cells = []
                for r in recipes:
                    if not by_recipe.get(r):  # not run, or not applicable
                        cells.append("")
                        continue
                    cells.append(_cell(by_recipe[r][epochs], alone))
                    gains[r].append(
                        100 * (np.mean(by_recipe[r][epochs]) - np.mean(alone))
                    )
                lines.append(
                    f"| {name} | {student} | {epochs} | "
                    f"{100 * result['teacher_accuracy']:.2f} | "
                    f"{100 * np.mean(alone):.2f} ± {100 * np.std(alone):.2f}"
                    " | " + " | ".join(cells) + " |"
                )
    lines += [
        "",
        "Gain over the student alone across all settings above (points):",
        "",
        "| recipe | mean gain | worst gain | settings with a gain |",
        "|---|---|---|---|",
    ]
    for r in recipes:
        g = np.array(gains[r])
        lines.append(
            f"| {r} | {g.mean():+.2f} | {g.min():+.2f} | "
            f"{int((g > 0).sum())} of {len(g)} |"
        )
    lines.append("")
    for name, result in results.items():
        lines.append(
            f"- {name}: {result['train_examples']:,} train / "
            f"{result['test_examples']:,} test, batch "
            f"{result['batch_size']}, teacher {result['teacher']}, "
            f"{result['seeds']} seeds; "
            f"{result['seconds']:.0f} s on {report.describe(result)}: "
            f"`{result['command']}`"
        )
    return lines + [""]


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    if FLAGS.markdown_only:
        lines = _save(None, None)
    for name in [] if FLAGS.markdown_only else FLAGS.datasets:
        lines = _run_dataset(name)
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
