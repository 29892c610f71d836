r"""Trains the benchmarks' strong teachers once and records them.

- `cifar10`: ResNet-20 (`examples.models.resnet20`), 30 epochs;
- `fashion_mnist`: ResNet-20 too, 15 epochs (`teacher_cnn`, 20 epochs,
  reached only 90.5 %);

each with the recipe of `benchmarks/strong_teachers.py` (`RECIPES`): random
crops of the zero-padded images and horizontal flips, SGD with Nesterov
momentum 0.9, decoupled weight decay, a one-cycle learning rate (linear
warm-up, cosine decay to 0), batch 128. The images are decoded once into a
uint8 array; `tf.data` augments and scales them to [0, 1] floats (the
teachers' inputs: `strong_teachers.to_inputs`).

Resumable: `keras.callbacks.BackupAndRestore` backs the training state up in
`--backup_dir/<dataset>_<model>` after every epoch; run the same command
again after an interruption and it goes on from the last finished epoch (a
larger `--epochs` goes on too, stretching the remaining schedule). One line
per epoch on stdout: epoch, loss, train and test accuracy, learning rate,
seconds.

Writes `teachers/<dataset>_<model>.weights.h5` and `results/teachers.json`
and `results/teachers.md` (one row per teacher, merged with the rows already
there) to `--output_dir` (default: `benchmarks/`). Load a teacher with
`benchmarks.strong_teachers.load_teacher`.

    python -m benchmarks.train_teachers                 # both, hours on 2 cores
    python -m benchmarks.train_teachers --dataset=fashion_mnist
    python -m benchmarks.train_teachers --dataset=cifar10 --epochs=2 \
        --max_train_examples=5000 --output_dir=/tmp/teachers   # quick
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import strong_teachers  # noqa: E402
from examples import training  # noqa: E402
from tfkd import _keras  # noqa: E402
from tfkd._keras import keras  # noqa: E402

_DATASET = flags.DEFINE_list(
    "dataset",
    ["fashion_mnist", "cifar10"],
    f"Teachers to train, by data set: of {sorted(strong_teachers.RECIPES)}.",
)
_EPOCHS = flags.DEFINE_integer(
    "epochs",
    None,
    "Training epochs. Default: the data set's recipe (fashion_mnist "
    f"{strong_teachers.RECIPES['fashion_mnist'].epochs}, cifar10 "
    f"{strong_teachers.RECIPES['cifar10'].epochs}).",
    lower_bound=1,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 128, "Training batch size.", lower_bound=1
)
_MAX_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "max_train_examples",
    None,
    "Train on the first N training examples only (tests, timing).",
    lower_bound=1,
)
_MAX_TEST_EXAMPLES = flags.DEFINE_integer(
    "max_test_examples",
    None,
    "Evaluate on the first N test examples only (tests).",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and shuffling.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    strong_teachers.BENCHMARKS_DIR,
    "Writes teachers/<dataset>_<model>.weights.h5 and results/teachers.json "
    "and .md here.",
)
_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    os.path.join("~", ".cache", "tfkd", "benchmarks"),
    "Training state backups, one folder per teacher: re-running the same "
    "command resumes from them.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data folder. Default: ~/tensorflow_datasets."
)
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir",
    None,
    "Folder of the local source files (the idx .gz files of fashion_mnist, "
    "the npz of cifar10), or of their sub-folders fashion-mnist/, cifar10/. "
    "Default: $TFKD_SOURCE_DIR, else shared/data next to the repository.",
)

flags.register_validator(
    "dataset",
    lambda names: (
        bool(names) and all(name in strong_teachers.RECIPES for name in names)
    ),
    message=f"--dataset takes names of {sorted(strong_teachers.RECIPES)}.",
)


class EpochLog(keras.callbacks.Callback):
    """Prints one line per epoch and appends it to a JSON-lines file.

    The file (in the backup folder) keeps the epochs of every session of a
    resumed run, so that the total training time survives interruptions.
    """

    def __init__(self, path, epochs):
        super().__init__()
        self.path = path
        self.epochs = epochs
        self._began = None

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        learning_rate = self.model.optimizer.learning_rate
        record = {
            "epoch": epoch + 1,
            "loss": float(logs["loss"]),
            "train_accuracy": float(logs["accuracy"]),
            "test_accuracy": float(logs["val_accuracy"]),
            "learning_rate": float(keras.ops.convert_to_numpy(learning_rate)),
            "seconds": time.time() - self._began,
        }
        print(
            f"epoch {record['epoch']}/{self.epochs} "
            f"loss {record['loss']:.4f} "
            f"train_acc {record['train_accuracy']:.4f} "
            f"test_acc {record['test_accuracy']:.4f} "
            f"lr {record['learning_rate']:.5f} "
            f"seconds {record['seconds']:.1f}",
            flush=True,
        )
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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


def _command():
    return " ".join(["python -m benchmarks.train_teachers", *sys.argv[1:]])


def train(dataset):
    """Trains (or resumes) `dataset`'s teacher; returns its results row."""
    recipe = strong_teachers.RECIPES[dataset]
    epochs = _EPOCHS.value or recipe.epochs
    load = dict(data_dir=_DATA_DIR.value, source_dir=_SOURCE_DIR.value)
    train_images, train_labels = strong_teachers.load_arrays(
        dataset, "train", num_examples=_MAX_TRAIN_EXAMPLES.value, **load
    )
    test_images, test_labels = strong_teachers.load_arrays(
        dataset, "test", num_examples=_MAX_TEST_EXAMPLES.value, **load
    )
    name = f"{dataset}_{recipe.model}"
    backup_dir = os.path.join(os.path.expanduser(_BACKUP_DIR.value), name)
    # What the backup depends on (not the epochs: a run may be extended).
    run = {
        "batch_size": _BATCH_SIZE.value,
        "train_examples": len(train_labels),
        "seed": _SEED.value,
        **dataclasses.asdict(recipe),
    }
    del run["epochs"]
    _check_backup(backup_dir, run)
    print(
        f"{name}: {len(train_labels):,} train / {len(test_labels):,} test "
        f"images, {epochs} epochs, backups in {backup_dir}",
        flush=True,
    )

    keras.utils.set_random_seed(_SEED.value)
    teacher = strong_teachers.build_teacher(dataset)
    steps_per_epoch = math.ceil(len(train_labels) / _BATCH_SIZE.value)
    teacher.compile(
        optimizer=_optimizer(recipe, epochs * steps_per_epoch),
        loss=training.hard_label_loss(),
        metrics=["accuracy"],
    )
    log_path = os.path.join(backup_dir, "epochs.jsonl")
    teacher.fit(
        strong_teachers.train_dataset(
            train_images,
            train_labels,
            recipe,
            batch_size=_BATCH_SIZE.value,
            seed=_SEED.value,
        ),
        validation_data=strong_teachers.eval_dataset(test_images, test_labels),
        epochs=epochs,
        shuffle=False,  # The dataset reshuffles itself.
        verbose=0,
        callbacks=[
            # The log first: an epoch logged but not backed up runs again,
            # and its second record replaces the first.
            EpochLog(log_path, epochs),
            keras.callbacks.BackupAndRestore(
                os.path.join(backup_dir, "keras"), delete_checkpoint=False
            ),
        ],
    )
    test_accuracy = strong_teachers.accuracy(teacher, test_images, test_labels)
    path = strong_teachers.weights_path(
        dataset, os.path.join(_OUTPUT_DIR.value, "teachers")
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
        "batch_size": _BATCH_SIZE.value,
        "train_examples": len(train_labels),
        "test_examples": len(test_labels),
        "test_accuracy": test_accuracy,
        "train_seconds": sum(r["seconds"] for r in records),
        "epoch_log": records,
        "recipe": dataclasses.asdict(recipe),
        "weights": os.path.relpath(path, _OUTPUT_DIR.value),
        "command": _command(),
        "tensorflow": tf.__version__,
        "keras": f"{_keras.KERAS_NAME} {keras.__version__}",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
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
            + f". {row['cpu_count']} CPU cores, no GPU (shared); tensorflow "
            f"{row['tensorflow']}, {row['keras']}, Python {row['python']}; "
            f"{row['date']}."
        )
    lines.append("")
    return lines


def _write_results(row):
    results_dir = os.path.join(_OUTPUT_DIR.value, "results")
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
    for dataset in _DATASET.value:
        _write_results(train(dataset))


if __name__ == "__main__":
    app.run(main)
