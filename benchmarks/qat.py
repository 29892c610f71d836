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

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import tfkd
import tfkd.export
import tfkd.quantization
from benchmarks import strong_teachers
from examples import cli
from examples import data
from examples import models
from examples import report
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    cli.define(
        "dataset",
        "data_dir",
        "source_dir",
        "train_examples",
        "test_examples",
        "epochs",
        "seeds",
        "batch_size",
        "calibration_examples",
        "output_dir",
        common=(),
        dataset="cifar10",
        train_examples=10_000,
        test_examples=2_000,
        epochs=(15, "Float training epochs."),
        seeds=2,
        calibration_examples=500,
        output_dir=(strong_teachers.RESULTS_DIR, "Results folder."),
        **fv,
    )
    flags.DEFINE_integer(
        "qat_epochs",
        3,
        "Fine-tuning epochs (QAT and its float references).",
        lower_bound=1,
        **fv,
    )


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


def _teacher(student):
    """The benchmark's strong teacher of the data set, if trained; else the
    float student itself (self-distillation). Returns (model, name)."""
    dataset = FLAGS.dataset
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
    trainer.compile(keras.optimizers.Adam(1e-4), training.hard_label_loss())
    callbacks = [timer] if timer else []
    trainer.fit(train, epochs=FLAGS.qat_epochs, verbose=0, callbacks=callbacks)
    return model


def run_seed(seed, train, test, calibration):
    """One seed's rows: {name: {keras, litert, size_bytes}}, step costs,
    the student's parameter count and the teacher's name."""
    keras.utils.set_random_seed(seed)
    shape, classes = data.info(FLAGS.dataset)
    student = models.build_model("student_separable", shape, classes)
    steps = FLAGS.epochs * int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    student.compile(keras.optimizers.Adam(schedule), training.hard_label_loss())
    float_timer = _StepTimer()
    student.fit(train, epochs=FLAGS.epochs, verbose=0, callbacks=[float_timer])
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
            "keras": training.accuracy(model, test),
            "litert": tfkd.export.evaluate_tflite(content, test)["accuracy"],
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
        *report.markdown(args["header"], args["seconds"]),
        "",
        f"A separable student ({parameters:,} parameters) trained "
        f"{args['epochs']} epochs in float on {args['train_examples']:,} "
        "training images (crop + flip), then fine-tuned "
        f"{args['qat_epochs']} more epochs (Adam 1e-4) on the labels or "
        f"distilled from {args['teacher']} "
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
    began = time.time()
    training.quiet_logs()
    tf.get_logger().setLevel("ERROR")
    if tfkd.KERAS_NAME == "tf_keras":
        raise app.UsageError(
            "benchmarks.qat measures tfkd's Keras 3 QAT: run it without "
            "TF_USE_LEGACY_KERAS=1."
        )
    load = dict(data_dir=FLAGS.data_dir, source_dir=FLAGS.source_dir)
    images, labels = data.arrays(
        FLAGS.dataset, "train", num_examples=FLAGS.train_examples, **load
    )
    test = data.arrays(
        FLAGS.dataset, "test", num_examples=FLAGS.test_examples, **load
    )
    test_examples = len(test[1])
    test = data.from_arrays(*test, batch_size=500)
    calibration = images[: FLAGS.calibration_examples].astype(np.float32) / 255
    recipe = strong_teachers.RECIPES.get(
        FLAGS.dataset, strong_teachers.RECIPES["cifar10"]
    )
    results, steps = [], []
    for seed in range(FLAGS.seeds):
        train = data.from_arrays(
            images,
            labels,
            batch_size=FLAGS.batch_size,
            shuffle=True,
            seed=seed,
            crop_padding=recipe.crop_padding,
            flip=recipe.flip,
        )
        start = time.time()
        result, step, parameters, teacher = run_seed(
            seed, train, test, calibration
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
        "dataset": FLAGS.dataset,
        "header": report.header(),
        "seconds": time.time() - began,
        "epochs": FLAGS.epochs,
        "qat_epochs": FLAGS.qat_epochs,
        "train_examples": len(labels),
        "test_examples": test_examples,
        "batch_size": FLAGS.batch_size,
        "teacher": teacher,
    }
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    table = _table(results, steps, parameters, args)
    with open(os.path.join(FLAGS.output_dir, "qat.md"), "w") as f:
        f.write(table)
    with open(os.path.join(FLAGS.output_dir, "qat.json"), "w") as f:
        json.dump({"args": args, "seeds": results, "steps": steps}, f, indent=1)
    print(table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
