r"""Self-distillation without a separate teacher, against the student alone.

Issue 24. Each recipe trains the examples' `student_cnn` for the same number
of epochs on Fashion-MNIST and CIFAR-10 (10,000 training images each, the
full test sets), once per seed; the table gives the test accuracy (mean ±
std over the seeds, gain over the student alone) and the wall time of
training, so that the extra forward passes of each method show:

- `alone`: hard labels only;
- `tf_kd`: teacher-free KD's virtual teacher (`tfkd.losses.TeacherFreeKD`,
  `tfkd.Distiller(teacher=None)`), no teacher model at all;
- `pskd`: PS-KD, the student's predictions of the previous epoch
  (`tfkd.teachers.snapshot` + `tfkd.losses.PSKD`, `PSKDSchedule`);
- `ema`: a moving average of the student's weights as the teacher
  (`tfkd.teachers.moving_average`, decay 0.99, KD at T=2, `alpha=0.5`);
- `ema_dist`: the same teacher with tfkd's default method (DIST,
  `alpha=0.1`), added after the first run;
- `byot`: Be Your Own Teacher's heads on the student's two pooling
  layers (`tfkd.self_distillation.DeepSelfDistillation`), the accuracy of
  the student's own output (its heads are left out), added later;
- `born_again`: generation 2 of born-again networks, distilled (KD at T=1,
  labels unused) from the `alone` student of the same seed: its time is its
  own training, the generation before it costs the `alone` time again;
- `teacher_dist`: for reference, the Distiller with the strong teacher
  (`benchmarks/teachers`, DIST, `alpha=0.1`, cached teacher outputs: its
  time leaves out the teacher's training and one pass to cache it).

Adam 1e-3, constant, batch 128, no augmentation; every recipe of a seed sees
the same batches in the same order.

Data: the local source files of `--source_dir`, else of $TFKD_SOURCE_DIR
(`examples.data.arrays`).

    python -m benchmarks.self_distillation                    # ~1 h on 2 cores
    python -m benchmarks.self_distillation --datasets=fashion_mnist \
        --seeds=1 --epochs=1 --train_examples=512 \
        --recipes=alone,tf_kd                                 # quick

Writes `benchmarks/results/self_distillation.md` and `.json`. Results
accumulate per data set and recipe: a run updates what it ran and keeps the
rest (so recipes can be added later).
"""

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
from examples import models
from examples import report
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS
DATASETS = ("fashion_mnist", "cifar10")
RECIPES = (
    "alone",
    "tf_kd",
    "pskd",
    "ema",
    "ema_dist",
    "born_again",
    "byot",
    "teacher_dist",
)
BATCH_SIZE = 128
STUDENT = "student_cnn"


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    cli.define_names("datasets", list(DATASETS), DATASETS, "Data sets.", **fv)
    cli.define_names("recipes", list(RECIPES), RECIPES, "Recipes.", **fv)
    cli.define(
        "seeds",
        "epochs",
        "train_examples",
        "data_dir",
        "source_dir",
        "output_dir",
        common=(),
        epochs=(20, "Training epochs of every recipe."),
        train_examples=(10_000, "Training examples kept."),
        output_dir=(strong_teachers.RESULTS_DIR, "Results folder."),
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
        "self_distillation",
        "Results file names, no extension.",
        **fv,
    )


def _batches(source, size, seed):
    return (
        source.shuffle(size, seed=seed, reshuffle_each_iteration=True)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )


def _student(train, seed):
    keras.utils.set_random_seed(seed)
    return models.build_model(STUDENT, train[0].shape[1:], 10)


def _model(recipe, student, teacher, previous):
    """The model that `fit` trains for `recipe`, and its callbacks."""
    epochs = FLAGS.epochs
    if recipe == "alone":
        return student, []
    if recipe == "tf_kd":
        # The authors' ResNet-18 setting (T=20, reg_alpha=0.1, multiplier
        # 100 on 100 classes); multiplier 10 on 10 classes keeps the
        # term's weight per class.
        method = tfkd.losses.TeacherFreeKD(temperature=20.0, multiplier=10.0)
        return tfkd.Distiller(None, student, method, alpha=0.9), []
    if recipe == "pskd":
        return tfkd.Distiller(
            tfkd.teachers.snapshot(student),
            student,
            tfkd.losses.PSKD(alpha=0.8),
            alpha=0.0,
        ), [tfkd.callbacks.PSKDSchedule(epochs)]
    if recipe == "ema":
        return tfkd.Distiller(
            tfkd.teachers.moving_average(student, decay=0.99),
            student,
            tfkd.losses.KD(temperature=2.0),
            alpha=0.5,
        ), []
    if recipe == "ema_dist":
        return tfkd.Distiller(
            tfkd.teachers.moving_average(student, decay=0.99),
            student,
            tfkd.losses.DIST(),
        ), []
    if recipe == "born_again":
        return tfkd.Distiller(
            previous, student, tfkd.losses.KD(temperature=1.0), alpha=0.0
        ), []
    if recipe == "byot":
        # The authors' T=3, alpha=0.1; beta=1e-6 on a feature loss summed
        # over the batch is 128e-6 on tfkd's batch mean at batch 128.
        return tfkd.self_distillation.DeepSelfDistillation(
            student,
            ["pool", "features_pool"],
            feature_layer="embedding",
            beta=1e-6 * BATCH_SIZE,
        ), []
    if recipe == "teacher_dist":
        return tfkd.Distiller(teacher, student, tfkd.losses.DIST()), []
    raise ValueError(recipe)


def _run(recipe, train, cached, test, teacher, previous, seed):
    """Trains one recipe; returns (test accuracy, fit seconds, student)."""
    student = _student(train, seed)
    model, callbacks = _model(recipe, student, teacher, previous)
    source = (
        cached.unbatch()
        if recipe == "teacher_dist"
        else tf.data.Dataset.from_tensor_slices(train)
    )
    batches = _batches(source, len(train[1]), seed)
    if recipe == "byot":  # its own sparse cross-entropies
        model.compile(keras.optimizers.Adam(1e-3))
    else:
        model.compile(keras.optimizers.Adam(1e-3), training.hard_label_loss())
    began = time.time()
    model.fit(batches, epochs=FLAGS.epochs, callbacks=callbacks, verbose=0)
    seconds = time.time() - began
    return training.accuracy(student, test), seconds, student


def _run_dataset(name):
    load = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
    images, labels = data.arrays(
        name, "train", num_examples=FLAGS.train_examples, **load
    )
    train = (images.astype(np.float32) / 255.0, labels)
    test = data.from_arrays(*data.arrays(name, "test", **load), batch_size=1000)
    recipes = [r for r in RECIPES if r in FLAGS.recipes]
    teacher = cached = None
    teacher_accuracy = None
    if "teacher_dist" in recipes:
        teacher = strong_teachers.load_teacher(name, FLAGS.teachers_dir)
        teacher_accuracy = training.accuracy(teacher, test)
        cached = tfkd.cache_teacher_outputs(
            teacher,
            tf.data.Dataset.from_tensor_slices(train).batch(1024),
            verbose=0,
        )
    result = {
        "train_examples": len(train[1]),
        "test_examples": int(sum(len(y) for _, y in test)),
        "epochs": FLAGS.epochs,
        "teacher_accuracy": teacher_accuracy,
        "recipes": {r: {"accuracy": [], "seconds": []} for r in recipes},
        **report.header(),
    }
    for seed in range(FLAGS.seeds):
        previous = None
        for recipe in recipes:
            if recipe == "born_again" and previous is None:
                # Generation 1 is the student alone of this seed.
                _, _, previous = _run(
                    "alone", train, cached, test, teacher, None, seed
                )
            accuracy, seconds, student = _run(
                recipe, train, cached, test, teacher, previous, seed
            )
            if recipe == "alone":
                previous = student
            result["recipes"][recipe]["accuracy"].append(accuracy)
            result["recipes"][recipe]["seconds"].append(seconds)
            print(
                f"{name} seed {seed} {recipe}: {100 * accuracy:.2f}% in "
                f"{seconds:.0f} s",
                flush=True,
            )
        result["seeds"] = seed + 1
        lines = _save(name, result)
    return lines


def _save(name, result):
    """Merges `result` into the results files."""

    def update(results):
        old = results.get(name, {})
        merged = dict(result)
        merged["recipes"] = {**old.get("recipes", {}), **result["recipes"]}
        if merged.get("teacher_accuracy") is None:
            merged["teacher_accuracy"] = old.get("teacher_accuracy")
        command = f"{result['command']} ({', '.join(result['recipes'])})"
        commands = [c for c in old.get("commands", []) if c != command]
        merged["commands"] = commands + [command]
        results[name] = merged
        return {k: results[k] for k in DATASETS if k in results}

    path = os.path.join(FLAGS.output_dir, FLAGS.output_name)
    return report.update_results(path, update, markdown)


def markdown(results):
    """The results page: per data set, each recipe's accuracy and time."""
    lines = [
        "# Self-distillation without a separate teacher",
        "",
        f"`{STUDENT}` trained for the same epochs by each recipe; test "
        "accuracy %, mean ± std (population) over the seeds, the gain over "
        "the student alone in points, and the mean wall time of `fit` (its "
        "ratio to the student alone's). See the script's docstring and "
        "docs/self_distillation.md for the recipes. Recipes added by a later "
        "command (below) were timed in that run, at another load of the "
        "shared machine: compare their times with care.",
        "",
        "| data set | epochs | recipe | accuracy | gain | fit time |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        by_recipe = result["recipes"]
        alone = by_recipe.get("alone", {}).get("accuracy")
        alone_time = by_recipe.get("alone", {}).get("seconds")
        for recipe in RECIPES:
            entry = by_recipe.get(recipe)
            if not entry or not entry["accuracy"]:
                continue
            values = 100 * np.array(entry["accuracy"])
            seconds = np.mean(entry["seconds"])
            gain = (
                f"{values.mean() - 100 * np.mean(alone):+.2f}"
                if alone and recipe != "alone"
                else ""
            )
            ratio = (
                f" ({seconds / np.mean(alone_time):.2f}x)"
                if alone_time and recipe != "alone"
                else ""
            )
            label = recipe
            if recipe == "teacher_dist" and result.get("teacher_accuracy"):
                label += f" (teacher {100 * result['teacher_accuracy']:.1f})"
            lines.append(
                f"| {name} | {result['epochs']} | {label} | "
                f"{values.mean():.2f} ± {values.std():.2f} "
                f"(n={len(values)}) | {gain} | {seconds:.0f} s{ratio} |"
            )
    lines.append("")
    for name, result in results.items():
        lines.append(
            f"- {name}: {result['train_examples']:,} train / "
            f"{result['test_examples']:,} test, batch {BATCH_SIZE}, Adam "
            f"1e-3; {report.describe(result)}; "
            + "; ".join(
                f"`{c}`" for c in dict.fromkeys(result.get("commands", []))
            )
        )
    return lines + [""]


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    lines = []
    for name in FLAGS.datasets:
        lines = _run_dataset(name)
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
