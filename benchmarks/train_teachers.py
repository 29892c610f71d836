r"""Trains the benchmarks' strong teachers once and records them.

- `cifar10`: ResNet-20 (`examples.models.resnet20`), 30 epochs;
- `fashion_mnist`: ResNet-20 too, 15 epochs (`teacher_cnn`, 20 epochs,
  reached only 90.5 %);

each with the recipe of `benchmarks/strong_teachers.py` (`RECIPES`): random
crops of the zero-padded images and horizontal flips, SGD with Nesterov
momentum 0.9, decoupled weight decay, a one-cycle learning rate (linear
warm-up, cosine decay to 0), batch 128. The images are decoded once into a
uint8 array; `examples.data.from_arrays` augments and scales them to
[0, 1] floats (the teachers' inputs).

Resumable: `keras.callbacks.BackupAndRestore` backs the training state up in
`--backup_dir/<dataset>_<model>` after every epoch; run the same command
again after an interruption and it goes on from the last finished epoch (a
larger `--epochs` goes on too, stretching the remaining schedule). One line
per epoch on stdout (`examples.progress.EpochLine`): the logs, learning
rate and seconds.

Writes `teachers/<dataset>_<model>.weights.h5` and `results/teachers.json`
and `results/teachers.md` (one row per teacher, merged with the rows already
there) to `--output_dir` (default: `benchmarks/`). Load a teacher with
`benchmarks.strong_teachers.load_teacher`.

    python -m benchmarks.train_teachers                 # both, hours on 2 cores
    python -m benchmarks.train_teachers --dataset=fashion_mnist
    python -m benchmarks.train_teachers --dataset=cifar10 --epochs=2 \
        --train_examples=5000 --output_dir=/tmp/teachers   # quick
"""

import dataclasses
import json
import math
import os

import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import strong_teachers
from examples import cli
from examples import data
from examples import progress
from examples import report
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_list(
        "dataset",
        ["fashion_mnist", "cifar10"],
        "Teachers to train, by data set: of "
        f"{sorted(strong_teachers.RECIPES)}.",
        **fv,
    )
    flags.register_validator(
        "dataset",
        lambda names: (
            bool(names) and set(names) <= set(strong_teachers.RECIPES)
        ),
        message=f"must name some of {sorted(strong_teachers.RECIPES)}",
        **fv,
    )
    recipes = strong_teachers.RECIPES.items()
    cli.define(
        "epochs",
        "batch_size",
        "train_examples",
        "test_examples",
        "seed",
        "data_dir",
        "source_dir",
        "output_dir",
        common=(),
        epochs=(
            None,
            "Training epochs. Default: the data set's recipe ("
            + ", ".join(f"{k} {r.epochs}" for k, r in recipes)
            + ").",
        ),
        batch_size=128,
        output_dir=(
            strong_teachers.BENCHMARKS_DIR,
            "Writes teachers/<dataset>_<model>.weights.h5 and "
            "results/teachers.json and .md here.",
        ),
        **fv,
    )
    flags.DEFINE_string(
        "backup_dir",
        os.path.join("~", ".cache", "tfkd", "benchmarks"),
        "Training state backups, one folder per teacher: re-running the same "
        "command resumes from them.",
        **fv,
    )


def _read_epochs(path):
    """The last record of each epoch (an interrupted epoch runs again)."""
    if not os.path.exists(path):
        return []
    records = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[record["epoch"]] = record
    return [records[epoch] for epoch in sorted(records)]


def _check_backup(backup_dir, run):
    """Records `run` in `backup_dir`, or refuses a backup of another run."""
    os.makedirs(backup_dir, exist_ok=True)
    path = os.path.join(backup_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        if recorded != run:
            raise ValueError(
                f"The backup in {backup_dir} is of another run: {recorded}, "
                f"not {run}. Delete that folder to start afresh, or pass "
                "another --backup_dir."
            )
    with open(path, "w") as f:
        json.dump(run, f, indent=1)


def _optimizer(recipe, total_steps):
    warmup_steps = max(1, int(recipe.warmup_fraction * total_steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.0,
        warmup_target=recipe.peak_learning_rate,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.SGD(
        schedule,
        momentum=0.9,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def train(dataset):
    """Trains (or resumes) `dataset`'s teacher; returns its results row."""
    recipe = strong_teachers.RECIPES[dataset]
    epochs = FLAGS.epochs or recipe.epochs
    load = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
    images, labels = data.arrays(
        dataset, "train", num_examples=FLAGS.train_examples, **load
    )
    test = data.arrays(
        dataset, "test", num_examples=FLAGS.test_examples, **load
    )
    test_examples = len(test[1])
    test = data.from_arrays(*test, batch_size=1000)
    name = f"{dataset}_{recipe.model}"
    backup_dir = os.path.join(os.path.expanduser(FLAGS.backup_dir), name)
    # What the backup depends on (not the epochs: a run may be extended).
    run = {
        "batch_size": FLAGS.batch_size,
        "train_examples": len(labels),
        "seed": FLAGS.seed,
        **dataclasses.asdict(recipe),
    }
    del run["epochs"]
    _check_backup(backup_dir, run)
    print(
        f"{name}: {len(labels):,} train / {test_examples:,} test "
        f"images, {epochs} epochs, backups in {backup_dir}",
        flush=True,
    )

    keras.utils.set_random_seed(FLAGS.seed)
    teacher = strong_teachers.build_teacher(dataset)
    steps_per_epoch = math.ceil(len(labels) / FLAGS.batch_size)
    teacher.compile(
        optimizer=_optimizer(recipe, epochs * steps_per_epoch),
        loss=training.hard_label_loss(),
        metrics=["accuracy"],
    )
    log_path = os.path.join(backup_dir, "epochs.jsonl")
    train = data.from_arrays(
        images,
        labels,
        batch_size=FLAGS.batch_size,
        shuffle=True,
        seed=FLAGS.seed,
        crop_padding=recipe.crop_padding,
        flip=recipe.flip,
    )
    teacher.fit(
        train,
        validation_data=test,
        epochs=epochs,
        shuffle=False,  # The dataset reshuffles itself.
        verbose=0,
        callbacks=[
            # The log first: an epoch logged but not backed up runs again,
            # and its second record replaces the first.
            progress.EpochLine(epochs, log_path),
            keras.callbacks.BackupAndRestore(
                os.path.join(backup_dir, "keras"), delete_checkpoint=False
            ),
        ],
    )
    test_accuracy = training.accuracy(teacher, test)
    path = strong_teachers.weights_path(
        dataset, os.path.join(FLAGS.output_dir, "teachers")
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A fresh model: the weights file holds no optimizer state.
    saved = strong_teachers.build_teacher(dataset)
    saved.set_weights(teacher.get_weights())
    saved.save_weights(path)
    records = [r for r in _read_epochs(log_path) if r["epoch"] <= epochs]
    print(
        f"{name}: test accuracy {test_accuracy:.4f}, saved to {path}",
        flush=True,
    )
    return {
        "dataset": dataset,
        "model": recipe.model,
        "params": int(teacher.count_params()),
        "epochs": epochs,
        "batch_size": FLAGS.batch_size,
        "train_examples": len(labels),
        "test_examples": test_examples,
        "test_accuracy": test_accuracy,
        "train_seconds": sum(r["seconds"] for r in records),
        "epoch_log": records,
        "recipe": dataclasses.asdict(recipe),
        "weights": os.path.relpath(path, FLAGS.output_dir),
        **report.header(),
    }


def _markdown(rows):
    lines = [
        "# Benchmark teachers",
        "",
        "Written by `benchmarks/train_teachers.py`; the weights are in "
        "`benchmarks/teachers/` (`strong_teachers.load_teacher`).",
        "",
        "| data set | model | params | epochs | test accuracy % | "
        "train time | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['params']:,} | "
            f"{row['epochs']} | {100 * row['test_accuracy']:.2f} | "
            f"{row['train_seconds'] / 60:.1f} min | `{row['command']}` |"
        )
    lines.append("")
    for row in rows.values():
        recipe = row["recipe"]
        lines.append(
            f"- {row['dataset']}: {row['train_examples']:,} train / "
            f"{row['test_examples']:,} test images, batch "
            f"{row['batch_size']}; SGD Nesterov 0.9, one-cycle learning rate "
            f"(peak {recipe['peak_learning_rate']:g}, warm-up "
            f"{recipe['warmup_fraction']:.0%}, cosine to 0), decoupled "
            f"weight decay {recipe['weight_decay']:g}, random crops "
            f"(padding {recipe['crop_padding']})"
            + (" and flips" if recipe["flip"] else "")
            + f". {report.describe(row)}."
        )
    lines.append("")
    return lines


def _write_results(row):
    results_dir = os.path.join(FLAGS.output_dir, "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, "teachers.json")
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["teachers"]
    rows[row["dataset"]] = row
    rows = dict(sorted(rows.items()))
    with open(path, "w") as f:
        json.dump({"teachers": rows}, f, indent=1)
    with open(os.path.join(results_dir, "teachers.md"), "w") as f:
        f.write("\n".join(_markdown(rows)))


def main(argv):
    del argv
    training.quiet_logs()
    tf.get_logger().setLevel("ERROR")
    for dataset in FLAGS.dataset:
        _write_results(train(dataset))


if __name__ == "__main__":
    define_flags()
    app.run(main)
