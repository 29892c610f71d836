r"""Keras 3 quantization-aware distillation vs post-training int8.

A depthwise-separable student (MobileNet-style blocks: depthwise 3x3 + BN +
ReLU6, pointwise 1x1 + BN + ReLU6) is trained in float on a data set with
crop + flip augmentation (Adam, cosine decay), then turned into full-integer
int8 `.tflite` files, each scored by the LiteRT interpreter on the test split:

- post-training int8 (`to_tflite(student, "int8", calibration images)`);
- the student fine-tuned `--qat_epochs` more epochs in four ways: on the
  labels or distilled from the teacher (`tfkd.Distiller(teacher, student)`,
  the default DIST), each in float then post-training int8 (the fair
  reference: as many epochs, no fake quantization) or quantization-aware
  (`tfkd.quantization.quantize_aware(student)`).

The teacher is the benchmark's strong teacher of the data set
(`benchmarks/strong_teachers.py`, e.g. the 86 % ResNet-20 on CIFAR-10) when
its weights exist, else the float student itself. The augmentation happens
in the input pipeline, so teacher and student see the same view.

Also the cost of a QAT training step against the float step (median
milliseconds per step, after the first epoch's tracing). Keras 3 only
(tfkd's own fake quantization; tf_keras uses TFMOT).

    python -m benchmarks.qat                       # CIFAR-10, 2 seeds
    python -m benchmarks.qat --dataset=mnist_5k --epochs=1 --qat_epochs=1 \
        --train_examples=512 --test_examples=256 --output_dir=/tmp/qat

Writes `qat.md` and `qat.json` to `--output_dir` (default:
`benchmarks/results/`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import tfkd  # noqa: E402
import tfkd.export  # noqa: E402
import tfkd.quantization  # noqa: E402
from benchmarks import strong_teachers  # noqa: E402
from tfkd import _keras  # noqa: E402
from tfkd._keras import keras  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "cifar10", "Data set name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder.")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", None, "Folder of the local source files of the data set."
)
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", 10000, "First N training examples.", lower_bound=64
)
_TEST_EXAMPLES = flags.DEFINE_integer(
    "test_examples", 2000, "First N test examples.", lower_bound=1
)
_EPOCHS = flags.DEFINE_integer(
    "epochs", 15, "Float training epochs.", lower_bound=1
)
_QAT_EPOCHS = flags.DEFINE_integer(
    "qat_epochs",
    3,
    "Fine-tuning epochs (QAT and its float references).",
    lower_bound=1,
)
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds 0..N-1.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Batch size.", lower_bound=1
)
_CALIBRATION = flags.DEFINE_integer(
    "calibration_examples",
    500,
    "Training images that calibrate post-training int8.",
    lower_bound=1,
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", strong_teachers.BENCHMARKS_DIR + "/results", "Output folder."
)


def separable_student(input_shape, classes, width=32):
    """A MobileNet-style student: stem, 4 separable blocks, pooling, Dense."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width // 2, 3, padding="same", use_bias=False)(
        inputs
    )
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters, stride in ((width, 1), (2 * width, 2), (2 * width, 1)):
        x = keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False
        )(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
        x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Conv2D(4 * width, 1, activation="relu6")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name="student")


class _StepTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each training step; `median()` skips tracing."""

    def __init__(self):
        super().__init__()
        self.steps = []  # (epoch, batch, seconds)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._start
        self.steps.append((self._epoch, batch, seconds))

    def median(self):
        """Median step time past the first epoch's first 5 (tracing) steps;
        short runs keep every step but the first."""
        timed = [s for e, b, s in self.steps if e > 0 or b >= 5]
        timed = timed or [s for _, _, s in self.steps[1:]]
        timed = timed or [s for _, _, s in self.steps]
        return float(np.median(timed))


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _lite_accuracy(content, x, y):
    return float(np.mean(tfkd.export.predict_tflite(content, x).argmax(1) == y))


def _keras_accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


def _teacher(student):
    """The benchmark's strong teacher of the data set, if trained; else the
    float student itself (self-distillation). Returns (model, name)."""
    dataset = _DATASET.value
    if dataset in strong_teachers.RECIPES and os.path.exists(
        strong_teachers.weights_path(dataset)
    ):
        model = strong_teachers.RECIPES[dataset].model
        return strong_teachers.load_teacher(dataset), model
    return student, "the float student"


def _fine_tune(student, train, teacher, *, qat, timer=None):
    """A copy of `student` trained `qat_epochs` more at Adam 1e-4: on the
    labels, or distilled from `teacher` (tfkd's default, DIST alpha 0.1);
    fake-quantized with `qat`."""
    if qat:
        model = tfkd.quantization.quantize_aware(student)
    else:
        model = keras.models.clone_model(student)
        model.set_weights(student.get_weights())
    trainer = model if teacher is None else tfkd.Distiller(teacher, model)
    trainer.compile(keras.optimizers.Adam(1e-4), _loss())
    callbacks = [timer] if timer else []
    trainer.fit(train, epochs=_QAT_EPOCHS.value, verbose=0, callbacks=callbacks)
    return model


def run_seed(seed, train, x_test, y_test, calibration):
    """One seed's rows: {name: {keras, litert, size_bytes}}, step costs,
    the student's parameter count and the teacher's name."""
    keras.utils.set_random_seed(seed)
    shape, classes = x_test.shape[1:], int(y_test.max()) + 1
    student = separable_student(shape, max(classes, 10))
    steps = _EPOCHS.value * int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    student.compile(keras.optimizers.Adam(schedule), _loss())
    float_timer = _StepTimer()
    student.fit(train, epochs=_EPOCHS.value, verbose=0, callbacks=[float_timer])
    rows = {
        "float32": (student, tfkd.export.to_tflite(student)),
        "post-training int8": (
            student,
            tfkd.export.to_tflite(student, "int8", calibration),
        ),
    }
    # Every fine-tuning trains `qat_epochs` more, in float (then
    # post-training int8) or quantization-aware: what QAT adds beyond the
    # extra epochs, on the labels and distilled from the teacher.
    teacher, teacher_name = _teacher(student)
    qat_timer = _StepTimer()
    for how, source in (("on labels", None), (f"from {teacher_name}", teacher)):
        tuned = _fine_tune(student, train, source, qat=False)
        rows[f"fine-tuned {how}, post-training int8"] = (
            tuned,
            tfkd.export.to_tflite(tuned, "int8", calibration),
        )
        timer = qat_timer if source is None else None
        qat = _fine_tune(student, train, source, qat=True, timer=timer)
        rows[f"QAT {how}, int8"] = (qat, tfkd.export.to_tflite(qat, "int8"))
    result = {
        name: {
            "keras": _keras_accuracy(model, x_test, y_test),
            "litert": _lite_accuracy(content, x_test, y_test),
            "size_bytes": len(content),
        }
        for name, (model, content) in rows.items()
    }
    steps = {
        "float_ms": 1000 * float_timer.median(),
        "qat_ms": 1000 * qat_timer.median(),
    }
    return result, steps, student.count_params(), teacher_name


def _table(results, steps, parameters, args):
    names = list(results[0])
    lines = [
        f"# Keras 3 QAT vs post-training int8 ({args['dataset']})",
        "",
        f"`python -m benchmarks.qat {args['command']}` on {args['machine']}"
        f" (TF {tf.__version__}, Keras {keras.__version__}). A separable "
        f"student ({parameters:,} parameters) trained {args['epochs']} "
        f"epochs in float on {args['train_examples']:,} training images "
        f"(crop + flip), then fine-tuned {args['qat_epochs']} more epochs "
        f"(Adam 1e-4) on the labels or distilled from {args['teacher']} "
        "(tfkd's default, DIST), in float followed by post-training int8 or "
        f"quantization-aware; {args['test_examples']:,} test images; "
        f"{len(results)} seeds, mean +- std.",
        "",
        "| model | Keras accuracy | LiteRT accuracy | file |",
        "|---|---|---|---|",
    ]
    for name in names:
        keras_acc = [r[name]["keras"] for r in results]
        lite_acc = [r[name]["litert"] for r in results]
        size = results[0][name]["size_bytes"] / 1024
        lines.append(
            f"| {name} | {100 * np.mean(keras_acc):.2f} +- "
            f"{100 * np.std(keras_acc):.2f} % | {100 * np.mean(lite_acc):.2f}"
            f" +- {100 * np.std(lite_acc):.2f} % | {size:.0f} KiB |"
        )
    float_ms = np.mean([s["float_ms"] for s in steps])
    qat_ms = np.mean([s["qat_ms"] for s in steps])
    lines += [
        "",
        f"Training step (batch {args['batch_size']}, median): float "
        f"{float_ms:.1f} ms, QAT {qat_ms:.1f} ms ({qat_ms / float_ms:.2f}x).",
        "",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    if _keras.IS_LEGACY:
        raise app.UsageError(
            "benchmarks.qat measures tfkd's Keras 3 QAT: run it without "
            "TF_USE_LEGACY_KERAS=1."
        )
    common = dict(data_dir=_DATA_DIR.value, source_dir=_SOURCE_DIR.value)
    images, labels = strong_teachers.load_arrays(
        _DATASET.value,
        "train",
        num_examples=_TRAIN_EXAMPLES.value,
        **common,
    )
    test_images, y_test = strong_teachers.load_arrays(
        _DATASET.value, "test", num_examples=_TEST_EXAMPLES.value, **common
    )
    x_test = test_images.astype(np.float32) / 255.0
    calibration = images[: _CALIBRATION.value].astype(np.float32) / 255.0
    recipe = strong_teachers.RECIPES.get(
        _DATASET.value, strong_teachers.RECIPES["cifar10"]
    )
    results, steps = [], []
    for seed in range(_SEEDS.value):
        train = strong_teachers.train_dataset(
            images, labels, recipe, batch_size=_BATCH_SIZE.value, seed=seed
        )
        start = time.time()
        result, step, parameters, teacher = run_seed(
            seed, train, x_test, y_test, calibration
        )
        results.append(result)
        steps.append(step)
        summary = ", ".join(
            f"{name} {100 * row['litert']:.2f}%" for name, row in result.items()
        )
        print(
            f"seed {seed}: {summary}; steps {step['float_ms']:.1f} / "
            f"{step['qat_ms']:.1f} ms ({time.time() - start:.0f} s)",
            flush=True,
        )
    args = {
        "dataset": _DATASET.value,
        "command": " ".join(
            f"--{name}={flags.FLAGS[name].value}"
            for name in (
                "dataset",
                "train_examples",
                "test_examples",
                "epochs",
                "qat_epochs",
                "seeds",
            )
        ),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "epochs": _EPOCHS.value,
        "qat_epochs": _QAT_EPOCHS.value,
        "train_examples": len(labels),
        "test_examples": len(y_test),
        "batch_size": _BATCH_SIZE.value,
        "teacher": teacher,
    }
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    table = _table(results, steps, parameters, args)
    with open(os.path.join(_OUTPUT_DIR.value, "qat.md"), "w") as f:
        f.write(table)
    with open(os.path.join(_OUTPUT_DIR.value, "qat.json"), "w") as f:
        json.dump({"args": args, "seeds": results, "steps": steps}, f, indent=1)
    print(table)


if __name__ == "__main__":
    app.run(main)
