r"""Trains a teacher on a TFDS data set and saves it.

Writes `teacher.keras` (this Keras), `teacher.weights.h5` and `teacher.json`
(read by `distill.py` in either Keras mode) and `history.json` to
`--output_dir`.

Usage:
    python -m examples.train_teacher --output_dir=runs/teacher
    python -m examples.train_teacher --dataset=fashion_mnist --epochs=10 \
        --output_dir=runs/fashion_teacher
"""

import json
import os

from absl import app
from absl import flags

from examples import data
from examples import models
from examples import training
from tfkd._keras import keras

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
_MODEL = flags.DEFINE_enum(
    "model", "teacher_cnn", sorted(models.MODELS), "Model to train."
)
_EPOCHS = flags.DEFINE_integer("epochs", 15, "Training epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Batch size.", lower_bound=1
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam step size.")
_SEED = flags.DEFINE_integer(
    "seed",
    0,
    "Seed of weights and shuffling.",
    lower_bound=0,
    upper_bound=2**32 - 1,
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
    "output_dir", None, "Where to write teacher.keras and history.json."
)
flags.mark_flags_as_required(["output_dir"])
training.check_positive(_LEARNING_RATE)
training.check_output_dirs(_OUTPUT_DIR)
training.check_data_flags(_DATASET, _DATA_DIR, _SOURCE_DIR)


def main(argv):
    del argv
    training.quiet_logs()
    keras.utils.set_random_seed(_SEED.value)
    input_shape, num_classes = data.info(_DATASET.value)
    common = dict(
        data_dir=_DATA_DIR.value,
        source_dir=_SOURCE_DIR.value,
        batch_size=_BATCH_SIZE.value,
    )
    train = data.load(
        _DATASET.value,
        "train",
        shuffle=True,
        seed=_SEED.value,
        num_examples=_TRAIN_EXAMPLES.value,
        **common,
    )
    test = data.load(
        _DATASET.value, "test", num_examples=_TEST_EXAMPLES.value, **common
    )
    model = models.build_model(_MODEL.value, input_shape, num_classes)
    training.compile_model(model, _LEARNING_RATE.value)
    history = training.fit(
        model, train, test, epochs=_EPOCHS.value, verbose=_VERBOSE.value
    )
    path = os.path.join(_OUTPUT_DIR.value, "teacher.keras")
    spec = {
        "model": _MODEL.value,
        "dataset": _DATASET.value,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "test_accuracy": training.accuracy(model, test),
    }
    training.save_model(model, path, spec)
    with open(os.path.join(_OUTPUT_DIR.value, "history.json"), "w") as f:
        json.dump(history, f)
    print(
        f"teacher {_MODEL.value}: test accuracy {spec['test_accuracy']:.2%}, "
        f"{model.count_params():,} parameters, saved to {path}"
    )


if __name__ == "__main__":
    app.run(main)
