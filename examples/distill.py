r"""Distills a student from a saved teacher, on one device or many.

Writes to `--output_dir`: `student.keras` (this Keras), `student.weights.h5`
and `student.json` (the final student, readable in either Keras mode),
`history.json` and TensorBoard logs in `logs/`. Under `multi_worker` only the
chief (task 0) writes there; the other workers write to a temporary folder
that they delete.

Usage:
    python -m examples.distill --teacher=runs/teacher/teacher.keras \
        --output_dir=runs/kd
    python -m examples.distill --teacher=runs/teacher/teacher.keras \
        --student=student_cnn --method=attention --strategy=mirrored \
        --cpu_replicas=2 --output_dir=runs/at
    # One process per worker, each with its TF_CONFIG:
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \
      python -m examples.distill --strategy=multi_worker \
        --teacher=teacher.keras --output_dir=/shared/run
"""

import os

import tensorflow as tf
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
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "student",
        "student_mlp",
        sorted(models.MODELS),
        "Student to distill.",
        **fv,
    )
    cli.define(
        "teacher",
        "method",
        "temperature",
        "alpha",
        "epochs",
        "seed",
        epochs=60,
        output_dir=(None, "Where to write student.keras, history and logs."),
        **fv,
    )
    flags.DEFINE_enum(
        "strategy",
        "default",
        list(training.STRATEGIES),
        "default: one device; mirrored: all local GPUs (or --cpu_replicas "
        "logical CPUs); multi_worker: MultiWorkerMirroredStrategy from "
        "TF_CONFIG.",
        **fv,
    )
    flags.DEFINE_integer(
        "cpu_replicas",
        1,
        "With --strategy=mirrored and no GPU: logical CPUs.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_bool(
        "mixed_precision",
        False,
        "mixed_float16 on GPU, mixed_bfloat16 on CPU; the losses stay float32.",
        **fv,
    )
    flags.DEFINE_bool("jit_compile", False, "Compile with XLA.", **fv)
    flags.DEFINE_bool(
        "cache_teacher",
        False,
        "Run the teacher once over the training set and train on its stored "
        "outputs (the batches are then fixed: no reshuffling between epochs).",
        **fv,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Steps per epoch. Default: one pass.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_bool(
        "shuffle", True, "Reshuffle the training set every epoch.", **fv
    )
    flags.mark_flag_as_required("teacher", **fv)
    flags.register_multi_flags_validator(
        ["strategy", "cpu_replicas"],
        lambda values: (
            values["cpu_replicas"] == 1 or values["strategy"] == "mirrored"
        ),
        message="--cpu_replicas > 1 needs --strategy=mirrored",
        **fv,
    )


def _datasets(strategy):
    # Equal per-replica batches: relational methods gather them.
    drop_remainder = strategy.num_replicas_in_sync > 1
    train = cli.train_set(
        FLAGS.seed, shuffle=FLAGS.shuffle, drop_remainder=drop_remainder
    )
    test = cli.test_set(drop_remainder=drop_remainder)
    if FLAGS.steps_per_epoch:
        train = train.repeat()
    options = tf.data.Options()
    # Every worker reads the same files: shard by batches, in order.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return train.with_options(options), test.with_options(options)


def main(argv):
    del argv
    training.quiet_logs()
    # The strategy first: MultiWorkerMirroredStrategy and logical devices
    # must be set up before TensorFlow runs any op.
    strategy = training.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    keras.utils.set_random_seed(FLAGS.seed)
    policy = training.set_mixed_precision(FLAGS.mixed_precision)
    train, test = _datasets(strategy)
    with strategy.scope():
        teacher = training.load_model(FLAGS.teacher)
        student = models.build_model(FLAGS.student, *data.info(FLAGS.dataset))
        distiller = cli.make_distiller(
            teacher, student, jit_compile=FLAGS.jit_compile
        )
    if FLAGS.cache_teacher:
        from tfkd.teachers import cache_teacher_outputs

        steps = FLAGS.steps_per_epoch
        train = cache_teacher_outputs(
            distiller, train.take(steps) if steps else train
        )
        if steps:
            train = train.repeat()
    directory = training.write_dir(FLAGS.output_dir, strategy)
    history = training.fit(
        distiller,
        train,
        test,
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        verbose=FLAGS.verbose,
        callbacks=[training.ScalarSummaries(os.path.join(directory, "logs"))],
    )
    spec = cli.save_model(
        student,
        os.path.join(directory, "student.keras"),
        FLAGS.student,
        method=FLAGS.method,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        strategy=FLAGS.strategy,
        replicas=strategy.num_replicas_in_sync,
        policy=policy,
        test_accuracy=history["val_accuracy"][-1],
    )
    cli.write_json(os.path.join(directory, "history.json"), history)
    training.discard(directory, FLAGS.output_dir)
    if training.is_chief(strategy):
        print(
            f"student {FLAGS.student} distilled with {FLAGS.method} on "
            f"{spec['replicas']} replica(s): test accuracy "
            f"{spec['test_accuracy']:.2%}, saved to {FLAGS.output_dir}"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
