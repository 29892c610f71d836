r"""Trains a teacher on a TFDS data set and saves it.

Writes `teacher.keras` (this Keras), `teacher.weights.h5` and `teacher.json`
(read by `examples.distill` in either Keras mode) and `history.json` to
`--output_dir`.

Usage:
    python -m examples.train_teacher --output_dir=runs/teacher
    python -m examples.train_teacher --dataset=fashion_mnist --epochs=10 \
        --output_dir=runs/fashion_teacher
"""

import os

from absl import app
from absl import flags

from examples import cli
from examples import data
from examples import models
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    flags.DEFINE_enum(
        "model",
        "teacher_cnn",
        sorted(models.MODELS),
        "Model to train.",
        flag_values=flag_values,
    )
    cli.define(
        "epochs",
        "seed",
        epochs=15,
        output_dir=(None, "Where to write teacher.keras and history.json."),
        flag_values=flag_values,
    )


def main(argv):
    del argv
    training.quiet_logs()
    keras.utils.set_random_seed(FLAGS.seed)
    test = cli.test_set()
    model = models.build_model(FLAGS.model, *data.info(FLAGS.dataset))
    training.compile_model(model, FLAGS.learning_rate)
    history = training.fit(
        model,
        cli.train_set(FLAGS.seed),
        test,
        epochs=FLAGS.epochs,
        verbose=FLAGS.verbose,
    )
    path = os.path.join(FLAGS.output_dir, "teacher.keras")
    accuracy = training.accuracy(model, test)
    cli.save_model(model, path, FLAGS.model, test_accuracy=accuracy)
    cli.write_json(os.path.join(FLAGS.output_dir, "history.json"), history)
    print(
        f"teacher {FLAGS.model}: test accuracy {accuracy:.2%}, "
        f"{model.count_params():,} parameters, saved to {path}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
