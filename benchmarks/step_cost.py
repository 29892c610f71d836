r"""Step cost of distillation: tfkd vs Keras 3's Distiller vs keras.io's.

Times one training epoch of the same student CNN (`examples/models.py`'s
`student_cnn`, taught by `teacher_cnn`) in six ways, in one process:

- the student trained alone (`student.fit`), the floor;
- `tfkd.Distiller`, live (the teacher runs every step);
- `tfkd.Distiller` on `tfkd.cache_teacher_outputs` data (cached teacher);
- `keras.distillation.Distiller` with
  `LogitsDistillation(loss=keras.losses.KLDivergence())`, its correct form;
- `keras.distillation.Distiller` with the default `loss="kl_divergence"`
  (which skips the softmax and T^2, see the README: timed, not endorsed);
- the keras.io "Knowledge Distillation" example's `Distiller` (its Keras 3
  `compute_loss` form), with its teacher frozen.

All use Adam, batch 64, KD at T=4 with a 0.1 weight on the hard labels, the
TensorFlow backend's default `jit_compile` (off on CPU), and the same
in-memory batches (so input pipelines do not differ). Each contender is
warmed up (tracing) for one epoch; then epochs run round-robin (`--rounds`
rounds, one `fit(epochs=1)` each), so a slow moment of the shared machine
hits all of them. An epoch is timed by a callback from its first step's
start to its last step's end, in wall and in process CPU time (all
threads; less disturbed by other jobs); the table gives medians.

Peak memory: each contender runs again in its own subprocess (`--memory`).
After imports and loading the data it resets the peak RSS (Linux:
`/proc/self/clear_refs`, then `VmHWM` in `/proc/self/status`), builds its
models (and cache) and trains two epochs; it reports that peak and the RSS
at the reset, so the difference is what the models, the cache and training
added.

Keras 3 only (`keras.distillation` does not exist in tf_keras).

    python -m benchmarks.step_cost                        # ~2-3 min, 2 cores
    python -m benchmarks.step_cost --rounds=3 --nomemory  # quick

Writes `benchmarks/results/step_cost.md` and `step_cost.json`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import tensorflow as tf
from absl import app
from absl import flags

import tfkd
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
        "batch_size",
        "output_dir",
        common=(),
        output_dir=(strong_teachers.RESULTS_DIR, "Results folder."),
        **fv,
    )
    flags.DEFINE_integer(
        "rounds",
        40,
        "Timed epochs per contender, interleaved.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_bool(
        "memory",
        True,
        "Measure peak RSS, one subprocess per contender.",
        **fv,
    )
    flags.DEFINE_enum(
        "memory_run",
        None,
        list(CONTENDERS),
        "Internal: run one contender, print its peak RSS.",
        **fv,
    )


TEMPERATURE = 4.0
ALPHA = 0.1  # Weight of the hard-label loss.


class KerasIoDistiller(keras.Model):
    """The keras.io "Knowledge Distillation" example's class (Keras 3 form).

    Kenneth Borup, keras.io/examples/vision/knowledge_distillation; its loss
    runs in `compute_loss`, so Keras' own `train_step` drives it. Reproduced
    as published; the benchmark freezes its teacher, which the example does
    not (there the teacher's weights are in `trainable_variables`).
    """

    def __init__(self, student, teacher):
        super().__init__()
        self.teacher = teacher
        self.student = student

    def compile(
        self,
        optimizer,
        metrics,
        student_loss_fn,
        distillation_loss_fn,
        alpha=0.1,
        temperature=3,
    ):
        super().compile(optimizer=optimizer, metrics=metrics)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = distillation_loss_fn
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, allow_empty=False
    ):
        teacher_pred = self.teacher(x, training=False)
        student_loss = self.student_loss_fn(y, y_pred)

        distillation_loss = self.distillation_loss_fn(
            keras.ops.softmax(teacher_pred / self.temperature, axis=1),
            keras.ops.softmax(y_pred / self.temperature, axis=1),
        ) * (self.temperature**2)

        loss = self.alpha * student_loss + (1 - self.alpha) * distillation_loss
        return loss

    def call(self, x):
        return self.student(x)


def _alone(teacher, student, train):
    student.compile(
        keras.optimizers.Adam(),
        training.hard_label_loss(),
        metrics=["accuracy"],
    )
    return student, train


def _tfkd(teacher, student, train, cached=False):
    distiller = tfkd.Distiller(
        teacher,
        student,
        tfkd.losses.KD(temperature=TEMPERATURE),
        alpha=ALPHA,
    )
    distiller.compile(
        keras.optimizers.Adam(),
        training.hard_label_loss(),
        metrics=["accuracy"],
    )
    if cached:
        train = tfkd.cache_teacher_outputs(distiller, train, verbose=0)
    return distiller, train


def _keras_distiller(teacher, student, train, loss="kl_divergence"):
    distiller = keras.distillation.Distiller(
        teacher,
        student,
        keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=loss
        ),
        student_loss_weight=ALPHA,
    )
    distiller.compile(
        keras.optimizers.Adam(),
        training.hard_label_loss(),
        metrics=["accuracy"],
    )
    return distiller, train


def _keras_io(teacher, student, train):
    teacher.trainable = False
    distiller = KerasIoDistiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=training.hard_label_loss(),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=ALPHA,
        temperature=TEMPERATURE,
    )
    return distiller, train


CONTENDERS = {
    "student alone": _alone,
    "tfkd, live teacher": _tfkd,
    "tfkd, cached teacher": lambda t, s, d: _tfkd(t, s, d, cached=True),
    "keras.distillation, KLDivergence()": lambda t, s, d: _keras_distiller(
        t, s, d, keras.losses.KLDivergence()
    ),
    'keras.distillation, default "kl_divergence"': _keras_distiller,
    "keras.io example": _keras_io,
}


def _memory_kib(field):
    """`VmRSS` (now) or `VmHWM` (peak) of this process, KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"No {field} in /proc/self/status (Linux only).")


def _reset_peak_memory():
    """Resets `VmHWM` to the current RSS (Linux >= 4.0), so the peak measured
    afterwards is training's, not data loading's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _setup():
    """In-memory data and the two model builders.

    Every contender reads the same in-memory batches (the form a cache has),
    so the table compares training steps, not input pipelines.
    """
    source = data.load(
        FLAGS.dataset,
        "train",
        data_dir=FLAGS.data_dir,
        source_dir=FLAGS.source_dir,
        batch_size=FLAGS.batch_size,
        num_examples=FLAGS.train_examples,
    )
    x = tf.concat([x for x, _ in source], axis=0)
    y = tf.concat([y for _, y in source], axis=0)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(FLAGS.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    steps = int(train.cardinality())
    input_shape, num_classes = data.info(FLAGS.dataset)
    keras.utils.set_random_seed(0)
    # Untrained weights: a step costs the same whatever the values.
    teacher = models.build_model("teacher_cnn", input_shape, num_classes)
    student = models.build_model("student_cnn", input_shape, num_classes)

    def fresh_student():
        copy = models.build_model("student_cnn", input_shape, num_classes)
        copy.set_weights(student.get_weights())
        return copy

    return train, steps, teacher, fresh_student


def _memory_run(name):
    train, _, teacher, fresh_student = _setup()
    _reset_peak_memory()
    before = _memory_kib("VmRSS")
    model, dataset = CONTENDERS[name](teacher, fresh_student(), train)
    model.fit(dataset, epochs=2, verbose=0)
    print(json.dumps({"before_kib": before, "peak_kib": _memory_kib("VmHWM")}))


def _measure_memory(name):
    command = [
        sys.executable,
        "-m",
        "benchmarks.step_cost",
        f"--memory_run={name}",
        *(
            f"--{flag}={FLAGS[flag].value}"
            for flag in ("dataset", "data_dir", "source_dir", "train_examples")
            if FLAGS[flag].value is not None
        ),
        f"--batch_size={FLAGS.batch_size}",
    ]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=repo
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


class _EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU seconds from the first step to the last.

    Leaves out `fit`'s own set-up (iterator, callbacks), the same for all.
    CPU time (all threads) is less disturbed by other jobs on the machine.
    """

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, batch, logs=None):
        self.end = (time.perf_counter(), time.process_time())


def _time_epochs(runs):
    """`{name: {"wall": [s], "cpu": [s]}}`, round-robin after a warm-up."""
    for model, dataset in runs.values():
        model.fit(dataset, epochs=1, verbose=0)  # Tracing.
    times = {name: {"wall": [], "cpu": []} for name in runs}
    for _ in range(FLAGS.rounds):
        for name, (model, dataset) in runs.items():
            timer = _EpochTimer()
            model.fit(dataset, epochs=1, verbose=0, callbacks=[timer])
            times[name]["wall"].append(timer.end[0] - timer.start[0])
            times[name]["cpu"].append(timer.end[1] - timer.start[1])
    return times


def _table(times, steps, memory, cache_seconds):
    def median(name, kind):
        return statistics.median(times[name][kind])

    lines = [
        "| contender | ms / step (wall) | vs student alone | vs tfkd live | "
        "CPU ms / step | vs student alone | vs tfkd live | peak RSS MiB | "
        "RSS added MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in times:
        cells = []
        for kind in ("wall", "cpu"):
            value = median(name, kind)
            cells += [
                f"{1000 * value / steps:.2f}",
                f"{value / median('student alone', kind):.2f}x",
                f"{value / median('tfkd, live teacher', kind):.2f}x",
            ]
        rss = memory.get(name)
        cells += (
            [
                f"{rss['peak_kib'] / 1024:.0f}",
                f"{(rss['peak_kib'] - rss['before_kib']) / 1024:.0f}",
            ]
            if rss
            else ["-", "-"]
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Building the cache (one teacher pass over the data, once) took "
        f"{cache_seconds:.2f} s."
    )
    return lines


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # Retracing notes of new models.
    if tfkd.KERAS_NAME == "tf_keras":
        raise app.UsageError(
            "keras.distillation is Keras 3 only: unset TF_USE_LEGACY_KERAS."
        )
    if FLAGS.memory_run:
        _memory_run(FLAGS.memory_run)
        return
    start = time.time()
    train, steps, teacher, fresh_student = _setup()
    runs = {}
    cache_seconds = 0.0
    for name, build in CONTENDERS.items():
        began = time.perf_counter()
        runs[name] = build(teacher, fresh_student(), train)
        if name == "tfkd, cached teacher":
            cache_seconds = time.perf_counter() - began
    times = _time_epochs(runs)
    memory = (
        {name: _measure_memory(name) for name in CONTENDERS}
        if FLAGS.memory
        else {}
    )
    header = report.header()
    lines = [
        "# Step cost of distillation",
        "",
        *report.markdown(header, time.time() - start),
        "",
        f"Data: {FLAGS.dataset} train, {steps} batches of "
        f"{FLAGS.batch_size}, in memory. Teacher `teacher_cnn`, student "
        f"`student_cnn` (examples/models.py); Adam; KD T={TEMPERATURE:g}, "
        f"hard-label weight {ALPHA:g}; jit_compile default (off on CPU). "
        f"Median of {FLAGS.rounds} interleaved epochs after one warm-up "
        "epoch each, timed from the first step's start to the last step's "
        "end; wall and process CPU time (all threads).",
        "",
        *_table(times, steps, memory, cache_seconds),
        "",
        "Peak RSS: `VmHWM` of a subprocess per contender, reset (Linux "
        "`clear_refs`) after imports and loading the data, read after "
        "building the models (and the cache) and two epochs; RSS added: "
        "that peak minus the RSS at the reset.",
        "",
        "Timings on a shared machine are noisy: interleaving and medians "
        "limit, not remove, the noise, and CPU time is less disturbed by "
        "other jobs than wall time.",
        "",
    ]
    print("\n".join(lines))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "step_cost.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(FLAGS.output_dir, "step_cost.json"), "w") as f:
        json.dump(
            {
                **header,
                "dataset": FLAGS.dataset,
                "steps_per_epoch": steps,
                "batch_size": FLAGS.batch_size,
                "epoch_seconds": times,
                "cache_seconds": cache_seconds,
                "memory_kib": memory,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
