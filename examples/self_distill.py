r"""Trains a student by self-distillation: no separate teacher.

`--method`:
- `tf_kd`: teacher-free KD's virtual teacher (`tfkd.losses.TeacherFreeKD`,
  `tfkd.Distiller(teacher=None)`);
- `pskd`: progressive self-knowledge distillation, the student's own
  predictions of the previous epoch (`tfkd.teachers.snapshot`,
  `tfkd.losses.PSKD`, `tfkd.callbacks.PSKDSchedule`);
- `ema`: a moving average of the student's weights as the teacher
  (`tfkd.teachers.moving_average`, KD at `--temperature`);
- `born_again`: `--generations` born-again generations, each distilled
  from the one before (`tfkd.self_distillation.born_again`): the epochs
  are per generation.

Writes to `--output_dir`: `student.keras` (and the `.weights.h5` / `.json`
that either Keras mode reads) and `history.json`.

Usage:
    python -m examples.self_distill --method=tf_kd --student=student_cnn \
        --dataset=cifar10 --epochs=20 --output_dir=runs/tf_kd
    python -m examples.self_distill --method=born_again --generations=2 \
        --output_dir=runs/ban
"""

import os

from absl import app
from absl import flags

import tfkd
from examples import cli
from examples import data
from examples import models
from examples import training
from tfkd import keras

FLAGS = flags.FLAGS
METHODS = ("tf_kd", "pskd", "ema", "born_again")


def define_flags(flag_values=FLAGS):
    """Defines this script's flags in `flag_values` (tests: a new one)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "student", "student_mlp", sorted(models.MODELS), "Student.", **fv
    )
    flags.DEFINE_enum(
        "method", "tf_kd", list(METHODS), "Self-distillation method.", **fv
    )
    cli.define(
        "temperature",
        "alpha",
        "epochs",
        "seed",
        epochs=20,
        temperature=(2.0, "Temperature of the ema and born_again KD term."),
        alpha=(0.5, "Hard-label weight of ema (tf_kd: 0.9, pskd: 0)."),
        output_dir=(None, "Where to write student.keras and history.json."),
        **fv,
    )
    flags.DEFINE_float("decay", 0.99, "ema: the moving average's decay.", **fv)
    flags.DEFINE_float(
        "pskd_alpha", 0.8, "pskd: the final weight of past predictions.", **fv
    )
    flags.DEFINE_integer(
        "generations",
        1,
        "born_again: generations after the first.",
        lower_bound=1,
        **fv,
    )


def _distiller(student):
    """The Distiller of `--method` (not born_again) and its callbacks."""
    if FLAGS.method == "tf_kd":
        method = tfkd.losses.TeacherFreeKD(temperature=20.0, multiplier=10.0)
        return tfkd.Distiller(None, student, method, alpha=0.9), []
    if FLAGS.method == "pskd":
        return tfkd.Distiller(
            tfkd.teachers.snapshot(student),
            student,
            tfkd.losses.PSKD(alpha=FLAGS.pskd_alpha),
            alpha=0.0,
        ), [tfkd.callbacks.PSKDSchedule(FLAGS.epochs)]
    return tfkd.Distiller(
        tfkd.teachers.moving_average(student, decay=FLAGS.decay),
        student,
        tfkd.losses.KD(temperature=FLAGS.temperature),
        alpha=FLAGS.alpha,
    ), []


def main(argv):
    del argv
    training.quiet_logs()
    keras.utils.set_random_seed(FLAGS.seed)
    train = cli.train_set(FLAGS.seed)
    test = cli.test_set()
    shape = data.info(FLAGS.dataset)

    def make_student():
        return models.build_model(FLAGS.student, *shape)

    if FLAGS.method == "born_again":
        lineage = tfkd.self_distillation.born_again(
            make_student,
            train,
            generations=FLAGS.generations,
            epochs=FLAGS.epochs,
            optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
            loss=training.hard_label_loss(),
            metrics=["accuracy"],
            distillation_loss=tfkd.losses.KD(temperature=FLAGS.temperature),
            test_data=test,
            seed=FLAGS.seed,
            verbose=FLAGS.verbose,
        )
        student = lineage[-1].model
        history = {
            f"generation_{g.index}": {
                "history": {
                    k: [float(v) for v in values]
                    for k, values in g.history.items()
                },
                "test_accuracy": g.test["accuracy"],
            }
            for g in lineage
        }
        accuracy = lineage[-1].test["accuracy"]
    else:
        student = make_student()
        model, callbacks = _distiller(student)
        training.compile_model(model, FLAGS.learning_rate)
        history = training.fit(
            model,
            train,
            test,
            epochs=FLAGS.epochs,
            verbose=FLAGS.verbose,
            callbacks=callbacks,
        )
        accuracy = history["val_accuracy"][-1]
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    cli.save_model(
        student,
        os.path.join(FLAGS.output_dir, "student.keras"),
        FLAGS.student,
        method=FLAGS.method,
        test_accuracy=accuracy,
    )
    cli.write_json(os.path.join(FLAGS.output_dir, "history.json"), history)
    print(
        f"student {FLAGS.student} self-distilled with {FLAGS.method}: test "
        f"accuracy {accuracy:.2%}, saved to {FLAGS.output_dir}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
