"""Steps that the example scripts compose: flag-free.

Devices and strategies, training, distillation, compression, saving and
loading models in a form both Keras modes read, and re-running a script under
tf_keras. The scripts own the flags (see `examples.cli`) and call these.
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl import flags
from tensorflow.core.framework import summary_pb2

import tfkd
from examples import methods
from examples import models
from examples import progress as progress_lines
from tfkd import keras

STRATEGIES = ("default", "mirrored", "multi_worker")


def relaunch_with_legacy_keras(reason):
    """Re-runs this script with `TF_USE_LEGACY_KERAS=1`, unless already set.

    TFMOT (QAT, pruning) only knows tf_keras models, and the Keras mode is
    fixed when TensorFlow is imported: the process is replaced by a fresh
    `python -m examples.<script>` with the same arguments (`os.execve`).
    Returns only in tf_keras mode.
    """
    if tfkd.KERAS_NAME == "tf_keras":
        return
    print(f"{reason} needs tf_keras: re-running with TF_USE_LEGACY_KERAS=1.")
    sys.stdout.flush()
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    module = sys.modules["__main__"].__spec__.name  # e.g. examples.quantize
    command = [sys.executable, "-m", module] + sys.argv[1:]
    os.execve(sys.executable, command, env)


def quiet_logs():
    """Hides absl INFO lines (TFDS's) unless `--verbosity` was given."""
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def split_cpu(replicas):
    """Splits the CPU into `replicas` logical devices; call before any op."""
    if replicas < 1:
        raise ValueError(
            f"`cpu_replicas` must be >= 1. Received: cpu_replicas={replicas}"
        )
    if replicas == 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )


def make_strategy(name, cpu_replicas=1):
    """A `tf.distribute` strategy: `default`, `mirrored` or `multi_worker`.

    `mirrored` uses every GPU, or else `cpu_replicas` logical CPU devices.
    `multi_worker` is `MultiWorkerMirroredStrategy`, configured by the
    `TF_CONFIG` environment variable.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy. Expected one of {list(STRATEGIES)}. "
            f"Received: strategy={name!r}"
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        split_cpu(cpu_replicas)
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([cpu.name for cpu in cpus])
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes the outputs (task 0 of a multi-worker
    run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def write_dir(output_dir, strategy):
    """Where this process writes: `output_dir` on the chief, else a temp dir.

    The standard multi-worker saving pattern: every worker saves (saving may
    synchronise), only the chief's copy is kept; `discard` the others.
    """
    if is_chief(strategy):
        os.makedirs(output_dir, exist_ok=True)
        return output_dir
    return tempfile.mkdtemp(prefix="tfkd_worker_")


def discard(directory, output_dir):
    if os.path.abspath(directory) != os.path.abspath(output_dir):
        shutil.rmtree(directory, ignore_errors=True)


def set_mixed_precision(enabled):
    """`mixed_float16` on GPU, `mixed_bfloat16` on CPU, or `float32`."""
    policy = "float32"
    if enabled:
        gpu = tf.config.list_physical_devices("GPU")
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def hard_label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_model(model, learning_rate=1e-3, jit_compile=False):
    """Compiles a logits model (or a `tfkd.Distiller`: its hard-label loss)
    with Adam, cross-entropy and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=hard_label_loss(),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def make_distiller(
    teacher,
    student,
    method="kd",
    *,
    temperature=4.0,
    alpha=0.1,
    learning_rate=1e-3,
    jit_compile=False,
):
    """A compiled `tfkd.Distiller` with method `method` of `examples.methods`.

    Raises:
        ValueError: if a method that taps conv maps gets a student without a
            `"features"` layer.
    """
    names = [layer.name for layer in student.layers]
    if method in methods.CONV_METHODS and "features" not in names:
        raise ValueError(
            f"method={method!r} compares conv maps (layer 'features'), which "
            f"the student {student.name!r} has not. Use a CNN student "
            "(--student=student_cnn) or a method on logits or 'embedding'."
        )
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=methods.build(method, temperature),
        alpha=alpha,
    )
    return compile_model(distiller, learning_rate, jit_compile)


def fit(
    model, train, test, *, epochs, steps_per_epoch=None, progress=None, **kwargs
):
    """`model.fit` validated on `test`; returns the history as a dict.

    `progress` (a `progress.ProgressLine`) prints the run's one line instead
    of Keras' output; else `verbose=2` prints one line per epoch
    (`progress.EpochLine`), and 0 and 1 are Keras'.
    """
    line = progress
    if line is None and kwargs.get("verbose") == 2:
        line = progress_lines.EpochLine(epochs)
    if line is not None:
        kwargs["verbose"] = 0
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), line]
    history = model.fit(
        train,
        validation_data=test,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # The datasets shuffle themselves.
        **kwargs,
    )
    return {
        key: [float(v) for v in values]
        for key, values in history.history.items()
    }


class ScalarSummaries(keras.callbacks.Callback):
    """Writes the epoch logs as TensorBoard scalars, with TensorFlow alone.

    `keras.callbacks.TensorBoard` needs the `tensorboard` package, which
    TensorFlow 2.21 no longer installs. This writes what it writes for
    scalars: `epoch_<metric>` in `log_dir/train` and `log_dir/validation`,
    readable by `tensorboard --logdir=log_dir`.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name="scalars"
            )
        )

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, tag = "train", key
            if key.startswith("val_"):
                split, tag = "validation", key[len("val_") :]
            if split not in self._writers:
                self._writers[split] = tf.summary.create_file_writer(
                    os.path.join(self.log_dir, split)
                )
            with self._writers[split].as_default():
                tf.summary.write(
                    f"epoch_{tag}",
                    tf.constant(float(np.mean(value)), tf.float32),
                    step=epoch,
                    metadata=self._metadata,
                )

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def compress(
    teacher,
    student,
    train,
    test,
    calibration,
    *,
    qat=True,
    prune=False,
    target_sparsity=0.5,
    epochs=5,
    temperature=8.0,
    alpha=0.1,
    learning_rate=1e-4,
    output_path=None,
    verbose=1,
    progress=None,
):
    """Distils `student` while pruning and/or QAT, then exports int8 TFLite.

    Pruning (magnitude, polynomial schedule reaching `target_sparsity` at 70%
    of the steps) then quantization-aware training, each distilled from
    `teacher` with KD; then full-integer int8 TFLite calibrated on
    `calibration`, evaluated with LiteRT on `test`. Pruning needs tf_keras
    (TFMOT); QAT runs in either mode (Keras 3: tfkd's own). Without either:
    post-training int8.
    QAT after pruning retrains every weight, zeros included. `verbose` and
    `progress` as in `fit`, for each training stage.

    Returns:
        `(result, histories)`: `tfkd.export.evaluate_tflite`'s dict plus
        `keras_accuracy` (the model before conversion) and, if `prune`,
        `sparsity` (of the pruned student, before QAT); and the histories of
        the training stages.
    """
    import tfkd.export
    import tfkd.quantization

    histories = {}
    kd = dict(temperature=temperature, alpha=alpha, learning_rate=learning_rate)
    if prune:
        steps = epochs * int(train.cardinality())
        end_step = max(1, int(0.7 * steps))
        student = tfkd.quantization.prune(
            student,
            target_sparsity,
            end_step=end_step,
            frequency=max(1, end_step // 10),
        )
        distiller = make_distiller(teacher, student, "kd", **kd)
        histories["prune"] = fit(
            distiller,
            train,
            test,
            epochs=epochs,
            verbose=verbose,
            progress=progress,
            callbacks=tfkd.quantization.pruning_callbacks(distiller),
        )
        student = tfkd.quantization.strip(student)
        sparsity = tfkd.quantization.sparsity(student)
    if qat:
        student = tfkd.quantization.quantize_aware(student)
        distiller = make_distiller(teacher, student, "kd", **kd)
        histories["qat"] = fit(
            distiller,
            train,
            test,
            epochs=epochs,
            verbose=verbose,
            progress=progress,
        )
    content = tfkd.export.to_tflite(
        student, "int8", calibration, output_path=output_path
    )
    result = tfkd.export.evaluate_tflite(content, test)
    result["keras_accuracy"] = accuracy(student, test)
    if prune:
        result["sparsity"] = sparsity
    return result, histories


def float_tflite(model, test, output_path=None):
    """Size, latency and LiteRT accuracy of the float32 `.tflite` of `model`."""
    import tfkd.export

    content = tfkd.export.to_tflite(model, output_path=output_path)
    return tfkd.export.evaluate_tflite(content, test)


def accuracy(model, data):
    """Top-1 accuracy of a logits model on `(x, y)` batches."""
    correct = total = 0
    for x, y in data:
        predicted = np.argmax(model(x, training=False), axis=-1)
        correct += int(np.sum(predicted == y.numpy()))
        total += len(predicted)
    return correct / total


def save_model(model, path, spec):
    """Saves `path` (`.keras`), its `.weights.h5` and a `.json` spec.

    The `.keras` file holds the whole model for this Keras. Keras 3 and
    tf_keras cannot read each other's `.keras` files, but both read these
    weights files: `load_model` rebuilds `spec["model"]` from
    `examples.models` and loads them, in either mode.

    Args:
        model: the Keras model.
        path: a path ending in `.keras`.
        spec: `{"model": name in examples.models.MODELS, "input_shape":
            ..., "num_classes": ...}` and any other facts to keep.
    """
    prefix = _prefix(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    model.save_weights(prefix + ".weights.h5")
    with open(prefix + ".json", "w") as f:
        json.dump({**spec, "keras": tfkd.KERAS_NAME}, f, indent=2)


def load_model(path):
    """Loads a model saved by `save_model` (either Keras), or any `.keras`.

    Call it inside `strategy.scope()` to place the variables.
    """
    prefix = _prefix(path)
    if os.path.exists(prefix + ".json"):
        with open(prefix + ".json") as f:
            spec = json.load(f)
        model = models.build_model(
            spec["model"], spec["input_shape"], spec["num_classes"]
        )
        model.load_weights(prefix + ".weights.h5")
        return model
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No model at {path!r}: run `python -m examples.train_teacher` "
            "(teacher) or `python -m examples.distill` (student) first, or "
            "pass a `.keras` file."
        )
    return keras.models.load_model(path, compile=False)


def _prefix(path):
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"Model paths end in `.keras`. Received: path={path!r}"
        )
    return path[: -len(".keras")]
