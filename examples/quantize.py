r"""Compresses a distilled student: QAT and/or pruning, then int8 TFLite.

Distils the student from the teacher again while it learns int8 rounding
(quantization-aware training) and/or loses its smallest weights (magnitude
pruning), exports a full-integer int8 `.tflite` and measures it with LiteRT.
With `--noqat --noprune`: post-training int8 only.

QAT runs in the Keras mode the script was started in (Keras 3: tfkd's own
fake quantization; tf_keras: TFMOT). Pruning uses TFMOT, which needs tf_keras:
with `--prune` the script re-runs itself with `TF_USE_LEGACY_KERAS=1` (QAT is
then TFMOT's too). It reads the teacher and
student saved by `train_teacher.py` and `distill.py` in either Keras mode
(their `.weights.h5` and `.json`).

Writes `student_int8.tflite` and `results.json` to `--output_dir`.

Usage:
    python -m examples.quantize --teacher=runs/teacher/teacher.keras \
        --student=runs/kd/student.keras --output_dir=runs/int8
    python -m examples.quantize --teacher=runs/teacher/teacher.keras \
        --student=runs/kd/student.keras --noqat --prune \
        --target_sparsity=0.75 --output_dir=runs/pruned
"""

import json
import os

from absl import app
from absl import flags

from examples import data
from examples import training
from tfkd._keras import keras

_TEACHER = flags.DEFINE_string(
    "teacher", None, "The teacher: a .keras file (from train_teacher.py)."
)
_STUDENT = flags.DEFINE_string(
    "student", None, "The student: a .keras file (from distill.py)."
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
_QAT = flags.DEFINE_bool(
    "qat", True, "Quantization-aware distillation before the int8 export."
)
_PRUNE = flags.DEFINE_bool(
    "prune",
    False,
    "Magnitude pruning (distilled) before QAT / export. With --qat, QAT "
    "retrains every weight: results.json reports the final sparsity.",
)
_TARGET_SPARSITY = flags.DEFINE_float(
    "target_sparsity",
    0.5,
    "Fraction of zero weights reached by pruning, in [0, 1).",
)
_EPOCHS = flags.DEFINE_integer(
    "epochs", 5, "Epochs of each stage (pruning, QAT).", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 8.0, "KD temperature while compressing."
)
_ALPHA = flags.DEFINE_float(
    "alpha", 0.1, "Weight of the hard-label loss, in [0, 1]."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Batch size.", lower_bound=1
)
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 1e-4, "Adam step size (fine-tuning: small)."
)
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of shuffling.", lower_bound=0, upper_bound=2**32 - 1
)
_CALIBRATION_EXAMPLES = flags.DEFINE_integer(
    "calibration_examples",
    512,
    "Training examples that calibrate int8.",
    lower_bound=1,
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
    "output_dir", None, "Where to write student_int8.tflite, results.json."
)
flags.mark_flags_as_required(["teacher", "student", "output_dir"])
training.check_positive(_TEMPERATURE, _LEARNING_RATE)
training.check_fraction(_ALPHA)
training.check_fraction(_TARGET_SPARSITY, include_one=False)
training.check_model_files(_TEACHER, _STUDENT)
training.check_output_dirs(_OUTPUT_DIR)
training.check_data_flags(_DATASET, _DATA_DIR, _SOURCE_DIR)


def main(argv):
    del argv
    if _PRUNE.value:
        training.relaunch_with_legacy_keras("Pruning (TFMOT)")
    training.quiet_logs()
    keras.utils.set_random_seed(_SEED.value)
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
    calibration = data.load(
        _DATASET.value,
        "train",
        num_examples=_CALIBRATION_EXAMPLES.value,
        **common,
    )
    teacher = training.load_model(_TEACHER.value)
    student = training.load_model(_STUDENT.value)
    float_accuracy = training.accuracy(student, test)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    path = os.path.join(_OUTPUT_DIR.value, "student_int8.tflite")
    result, histories = training.compress(
        teacher,
        student,
        train,
        test,
        calibration,
        qat=_QAT.value,
        prune=_PRUNE.value,
        target_sparsity=_TARGET_SPARSITY.value,
        epochs=_EPOCHS.value,
        temperature=_TEMPERATURE.value,
        alpha=_ALPHA.value,
        learning_rate=_LEARNING_RATE.value,
        output_path=path,
        verbose=_VERBOSE.value,
    )
    result["float_accuracy"] = float_accuracy
    result["histories"] = histories
    with open(os.path.join(_OUTPUT_DIR.value, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    pruned = (
        f", {result['sparsity']:.0%} of the kernels pruned"
        if _PRUNE.value
        else ""
    )
    print(
        f"float student {float_accuracy:.2%} -> int8 .tflite "
        f"{result['accuracy']:.2%} (LiteRT), {result['size_bytes']:,} bytes, "
        f"{1000 * result['latency_ms']:.1f} us per example{pruned}; saved to "
        f"{path}"
    )


if __name__ == "__main__":
    app.run(main)
