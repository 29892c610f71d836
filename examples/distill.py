r"""Distills a student from a saved teacher, on one device or many.

Writes to `--output_dir`: `student.keras` (this Keras), `student.weights.h5`
and `student.json` (the final student, readable in either Keras mode),
`history.json` and TensorBoard logs in `logs/`. Under `multi_worker` only the
chief (task 0) writes there; the other workers write to a temporary folder
that they delete.

Usage:
    python -m examples.distill --teacher=runs/teacher/teacher.keras \
        --output_dir=runs/kd
    python -m examples.distill --teacher=runs/teacher/teacher.keras \
        --student=student_cnn --method=attention --strategy=mirrored \
        --cpu_replicas=2 --output_dir=runs/at
    # One process per worker, each with its TF_CONFIG:
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \
      python -m examples.distill --strategy=multi_worker \
        --teacher=teacher.keras --output_dir=/shared/run
"""

import json
import os

import tensorflow as tf
from absl import app
from absl import flags

from examples import data
from examples import methods
from examples import models
from examples import training
from tfkd._keras import keras

_TEACHER = flags.DEFINE_string(
    "teacher", None, "The teacher: a .keras file (from train_teacher.py)."
)
_STUDENT = flags.DEFINE_enum(
    "student", "student_mlp", sorted(models.MODELS), "Student to distill."
)
_DATASET = flags.DEFINE_enum(
    "dataset", "mnist_5k", sorted(data.DATASETS), "TFDS data set."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data folder. Default: ~/tensorflow_datasets."
)
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir",
    None,
    "Folder of local source files for fashion_mnist (idx .gz) or cifar10 "
    "(npz). Default: auto-detected, else TFDS downloads.",
)
_METHOD = flags.DEFINE_enum(
    "method", "kd", sorted(methods.METHODS), "Distillation method."
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 8.0, "Temperature of the logit term."
)
_ALPHA = flags.DEFINE_float(
    "alpha", 0.1, "Weight of the hard-label loss, in [0, 1]."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    list(training.STRATEGIES),
    "default: one device; mirrored: all local GPUs (or --cpu_replicas "
    "logical CPUs); multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.",
)
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas",
    1,
    "With --strategy=mirrored and no GPU: logical CPUs.",
    lower_bound=1,
)
_MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision",
    False,
    "mixed_float16 on GPU, mixed_bfloat16 on CPU; the losses stay float32.",
)
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "Compile with XLA.")
_CACHE_TEACHER = flags.DEFINE_bool(
    "cache_teacher",
    False,
    "Run the teacher once over the training set and train on its stored "
    "outputs (the batches are then fixed: no reshuffling between epochs).",
)
_EPOCHS = flags.DEFINE_integer("epochs", 60, "Training epochs.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Steps per epoch. Default: one pass.",
    lower_bound=1,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    64,
    "GLOBAL batch size (split over the replicas).",
    lower_bound=1,
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam step size.")
_SEED = flags.DEFINE_integer(
    "seed",
    0,
    "Seed of weights and shuffling.",
    lower_bound=0,
    upper_bound=2**32 - 1,
)
_SHUFFLE = flags.DEFINE_bool(
    "shuffle", True, "Reshuffle the training set every epoch."
)
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples",
    None,
    "Use only the first N training examples.",
    lower_bound=1,
)
_TEST_EXAMPLES = flags.DEFINE_integer(
    "test_examples", None, "Use only the first N test examples.", lower_bound=1
)
_VERBOSE = flags.DEFINE_integer(
    "verbose", 1, "Keras verbosity (0, 1, 2).", lower_bound=0, upper_bound=2
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write student.keras, history and logs."
)
flags.mark_flags_as_required(["teacher", "output_dir"])
training.check_positive(_TEMPERATURE, _LEARNING_RATE)
training.check_fraction(_ALPHA)
training.check_model_files(_TEACHER)
training.check_output_dirs(_OUTPUT_DIR)
training.check_data_flags(_DATASET, _DATA_DIR, _SOURCE_DIR)
flags.register_multi_flags_validator(
    [_STRATEGY, _CPU_REPLICAS],
    lambda values: (
        values["cpu_replicas"] == 1 or values["strategy"] == "mirrored"
    ),
    message="--cpu_replicas > 1 needs --strategy=mirrored",
)


def _datasets(strategy):
    replicas = strategy.num_replicas_in_sync
    common = dict(
        data_dir=_DATA_DIR.value,
        source_dir=_SOURCE_DIR.value,
        batch_size=_BATCH_SIZE.value,
        # Equal per-replica batches: relational methods gather them.
        drop_remainder=replicas > 1,
    )
    train = data.load(
        _DATASET.value,
        "train",
        shuffle=_SHUFFLE.value,
        seed=_SEED.value,
        num_examples=_TRAIN_EXAMPLES.value,
        **common,
    )
    test = data.load(
        _DATASET.value, "test", num_examples=_TEST_EXAMPLES.value, **common
    )
    if _STEPS_PER_EPOCH.value:
        train = train.repeat()
    options = tf.data.Options()
    # Every worker reads the same files: shard by batches, in order.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return train.with_options(options), test.with_options(options)


def main(argv):
    del argv
    training.quiet_logs()
    # The strategy first: MultiWorkerMirroredStrategy and logical devices
    # must be set up before TensorFlow runs any op.
    strategy = training.make_strategy(_STRATEGY.value, _CPU_REPLICAS.value)
    keras.utils.set_random_seed(_SEED.value)
    policy = training.set_mixed_precision(_MIXED_PRECISION.value)
    input_shape, num_classes = data.info(_DATASET.value)
    train, test = _datasets(strategy)
    with strategy.scope():
        teacher = training.load_model(_TEACHER.value)
        student = models.build_model(_STUDENT.value, input_shape, num_classes)
        distiller = training.make_distiller(
            teacher,
            student,
            _METHOD.value,
            temperature=_TEMPERATURE.value,
            alpha=_ALPHA.value,
            learning_rate=_LEARNING_RATE.value,
            jit_compile=_JIT_COMPILE.value,
        )
    if _CACHE_TEACHER.value:
        from tfkd.teachers import cache_teacher_outputs

        steps = _STEPS_PER_EPOCH.value
        train = cache_teacher_outputs(
            distiller, train.take(steps) if steps else train
        )
        if steps:
            train = train.repeat()
    directory = training.write_dir(_OUTPUT_DIR.value, strategy)
    history = training.fit(
        distiller,
        train,
        test,
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        verbose=_VERBOSE.value,
        callbacks=[training.ScalarSummaries(os.path.join(directory, "logs"))],
    )
    spec = {
        "model": _STUDENT.value,
        "dataset": _DATASET.value,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "method": _METHOD.value,
        "temperature": _TEMPERATURE.value,
        "alpha": _ALPHA.value,
        "strategy": _STRATEGY.value,
        "replicas": strategy.num_replicas_in_sync,
        "policy": policy,
        "test_accuracy": history["val_accuracy"][-1],
    }
    training.save_model(student, os.path.join(directory, "student.keras"), spec)
    with open(os.path.join(directory, "history.json"), "w") as f:
        json.dump(history, f)
    training.discard(directory, _OUTPUT_DIR.value)
    if training.is_chief(strategy):
        print(
            f"student {_STUDENT.value} distilled with {_METHOD.value} on "
            f"{strategy.num_replicas_in_sync} replica(s): test accuracy "
            f"{spec['test_accuracy']:.2%}, saved to {_OUTPUT_DIR.value}"
        )


if __name__ == "__main__":
    app.run(main)
