r"""Compresses a distilled student: QAT and/or pruning, then int8 TFLite.

Distils the student from the teacher again while it learns int8 rounding
(quantization-aware training) and/or loses its smallest weights (magnitude
pruning), exports a full-integer int8 `.tflite` and measures it with LiteRT.
With `--noqat --noprune`: post-training int8 only.

QAT runs in the Keras mode the script was started in (Keras 3: tfkd's own
fake quantization; tf_keras: TFMOT). Pruning uses TFMOT, which needs tf_keras:
with `--prune` the script re-runs itself with `TF_USE_LEGACY_KERAS=1` (QAT is
then TFMOT's too). It reads the teacher and student saved by
`examples.train_teacher` and `examples.distill` in either Keras mode (their
`.weights.h5` and `.json`).

Writes `student_int8.tflite` and `results.json` to `--output_dir`.

Usage:
    python -m examples.quantize --teacher=runs/teacher/teacher.keras \
        --student=runs/kd/student.keras --output_dir=runs/int8
    python -m examples.quantize --teacher=runs/teacher/teacher.keras \
        --student=runs/kd/student.keras --noqat --prune \
        --target_sparsity=0.75 --output_dir=runs/pruned
"""

import os

from absl import app
from absl import flags

from examples import cli
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    cli.define(
        "teacher",
        "temperature",
        "alpha",
        "epochs",
        "seed",
        "calibration_examples",
        epochs=(5, "Epochs of each stage (pruning, QAT)."),
        learning_rate=(1e-4, "Adam step size (fine-tuning: small)."),
        output_dir=(None, "Where to write student_int8.tflite, results.json."),
        **fv,
    )
    flags.DEFINE_string(
        "student",
        None,
        "The student: a .keras file (from examples.distill).",
        **fv,
    )
    flags.DEFINE_bool(
        "qat",
        True,
        "Quantization-aware distillation before the int8 export.",
        **fv,
    )
    flags.DEFINE_bool(
        "prune",
        False,
        "Magnitude pruning (distilled) before QAT / export. With --qat, QAT "
        "retrains every weight: results.json reports the final sparsity.",
        **fv,
    )
    flags.DEFINE_float(
        "target_sparsity",
        0.5,
        "Fraction of zero weights reached by pruning, in [0, 1).",
        **fv,
    )
    flags.mark_flags_as_required(["teacher", "student"], **fv)
    cli.check_fraction("target_sparsity", include_one=False, **fv)
    cli.check_model_files("student", **fv)


def main(argv):
    del argv
    if FLAGS.prune:
        training.relaunch_with_legacy_keras("Pruning (TFMOT)")
    training.quiet_logs()
    keras.utils.set_random_seed(FLAGS.seed)
    test = cli.test_set()
    teacher = training.load_model(FLAGS.teacher)
    student = training.load_model(FLAGS.student)
    float_accuracy = training.accuracy(student, test)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "student_int8.tflite")
    result, histories = training.compress(
        teacher,
        student,
        cli.train_set(FLAGS.seed),
        test,
        cli.calibration_set(),
        qat=FLAGS.qat,
        prune=FLAGS.prune,
        target_sparsity=FLAGS.target_sparsity,
        epochs=FLAGS.epochs,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        learning_rate=FLAGS.learning_rate,
        output_path=path,
        verbose=FLAGS.verbose,
    )
    result.update(float_accuracy=float_accuracy, histories=histories)
    cli.write_json(
        os.path.join(FLAGS.output_dir, "results.json"), result, indent=2
    )
    pruned = ""
    if FLAGS.prune:
        pruned = f", {result['sparsity']:.0%} of the kernels pruned"
    print(
        f"float student {float_accuracy:.2%} -> int8 .tflite "
        f"{result['accuracy']:.2%} (LiteRT), {result['size_bytes']:,} bytes, "
        f"{1000 * result['latency_ms']:.1f} us per example{pruned}; saved to "
        f"{path}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
