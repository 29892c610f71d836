"""The teacher's validation loss and metrics in `Distiller.fit`'s logs.

A distilled student rarely beats its teacher; when it does, or comes close,
the teacher is the bottleneck. `Distiller.fit(validation_data=...)` adds
the teacher's validation loss and compiled metrics to the logs as
`val_teacher_loss`, `val_teacher_accuracy`, ...: computed once per `fit`
call (the teacher is frozen, so they cannot change), with a Keras
`evaluate` of a small compiled model that returns the teacher's outputs,
and logged with every epoch that logs `val_*`, so that `History`'s lists
line up with the `val_*` ones.

The keys start with `val_` because Keras' loggers sort logs by that prefix:
`keras.callbacks.TensorBoard` (both Keras) writes `val_*` to its
`validation` run without the prefix (so `teacher_accuracy` there, next to
the student's `accuracy`) and everything else to `train`; `CSVLogger`
reads it to know whether an epoch validated.
"""

import tensorflow as tf

from tfkd import _cache_format
from tfkd import _keras
from tfkd import _validation
from tfkd._keras import keras

PREFIX = "val_teacher_"


class _TeacherOutputs(_keras.MultiWorkerSafe, keras.Model):
    """The teacher's outputs (or cached ones), as a model to `evaluate`.

    `losses` is empty: `val_teacher_loss` is the hard-label loss alone,
    without the teacher's regularization losses, like `val_student_loss`.
    """

    def __init__(self, teacher, has_loss, arrange=None, **kwargs):
        super().__init__(**kwargs)
        self.teacher = teacher
        self._has_loss = has_loss
        # Multi-output: the teacher's outputs as a list in the student's
        # order (`OutputPairing.teacher_flat`: paired by name).
        self._arrange = arrange

    def call(self, inputs, training=False):
        cached = _cache_format.cached_logits(inputs)
        if cached is not None:
            outputs = list(cached) if isinstance(cached, tuple) else cached
        else:
            inputs, _ = _cache_format.split_inputs(inputs)
            outputs = self.teacher(inputs, training=False)
        return self._arrange(outputs) if self._arrange else outputs

    @property
    def losses(self):
        return []

    def test_step(self, data):
        return self._step_logs(super().test_step(data))

    def compute_loss(self, *args, **kwargs):
        # Keras 3 refuses to evaluate without a loss: 0 stands for it (and
        # is left out of the logs).
        if not self._has_loss:
            return tf.zeros([])
        return super().compute_loss(*args, **kwargs)


def _logits_losses(loss):
    """`compile`'s `loss` with its string names taken from logits."""
    if isinstance(loss, str):
        return _validation.STUDENT_LOSSES[loss]()
    if isinstance(loss, dict):
        return {key: _logits_losses(value) for key, value in loss.items()}
    if isinstance(loss, (list, tuple)):
        return [_logits_losses(value) for value in loss]
    return loss


def _evaluate_arguments(fit_kwargs):
    """`(args, kwargs)` of `evaluate` on `fit`'s validation data, or None
    for data that cannot be read twice (a Python generator)."""
    data = fit_kwargs.get("validation_data")
    steps = fit_kwargs.get("validation_steps")
    sequence = getattr(keras.utils, "PyDataset", keras.utils.Sequence)
    if isinstance(data, (tf.data.Dataset, sequence)):
        return (data,), {"steps": steps}
    if isinstance(data, (tuple, list)):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(data))
        batch_size = fit_kwargs.get("validation_batch_size") or fit_kwargs.get(
            "batch_size"
        )
        return (x, y), {
            "sample_weight": sample_weight,
            "batch_size": batch_size,
            "steps": steps,
        }
    return None


class TeacherValidation(keras.callbacks.Callback):
    """Logs the teacher's validation loss and metrics as `val_teacher_*`.

    Added by `tfkd.Distiller.fit` when it gets `validation_data`. The
    evaluation runs at the end of the first epoch that validates, under the
    Distiller's distribution strategy; its results are then added to the
    logs of every epoch that validates.
    """

    def __init__(self, distiller, evaluate_args, evaluate_kwargs):
        super().__init__()
        self._distiller = distiller
        self._evaluate_args = evaluate_args
        self._evaluate_kwargs = evaluate_kwargs
        self._results = None

    @classmethod
    def for_fit(cls, distiller, fit_kwargs):
        """The callback for `fit(**fit_kwargs)`, or None: no validation
        data (or a generator), or an uncompiled Distiller."""
        if distiller._compile_arguments is None:
            return None
        arguments = _evaluate_arguments(fit_kwargs)
        if arguments is None:
            return None
        return cls(distiller, *arguments)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not any(key.startswith("val_") for key in logs):
            return
        if self._results is None:
            self._results = self._evaluate()
        clashes = sorted(set(self._results) & set(logs))
        if clashes:
            # A student metric or output named `teacher...`: never overwrite
            # the student's logs with the teacher's, silently.
            raise ValueError(
                "The teacher's validation logs would overwrite the "
                f"Distiller's own: {clashes}. `fit` logs the teacher's "
                "validation loss and metrics as `val_teacher_<name>`; rename "
                "the compiled metric or the output whose name starts with "
                "`teacher` (e.g. `keras.metrics.SparseCategoricalAccuracy("
                "name=...)`). Received: "
                f"logs={sorted(logs)}, teacher logs={sorted(self._results)}"
            )
        logs.update(self._results)

    def _evaluate(self):
        distiller = self._distiller
        compiled = distiller._compile_arguments
        with distiller.distribute_strategy.scope():
            model = _TeacherOutputs(
                distiller.teacher,
                has_loss=compiled.get("loss") is not None,
                arrange=distiller._pairing.teacher_flat
                if len(distiller._output_names) > 1
                else None,
                name=f"{distiller.teacher.name}_validation",
            )
            if len(distiller._output_names) > 1:
                model.output_names = list(distiller._output_names)
            model.compile(
                loss=_logits_losses(compiled.get("loss")),
                metrics=_validation.copy_metrics(compiled.get("metrics")),
                weighted_metrics=_validation.copy_metrics(
                    compiled.get("weighted_metrics")
                ),
            )
        results = model.evaluate(
            *self._evaluate_args,
            verbose=0,
            return_dict=True,
            **self._evaluate_kwargs,
        )
        if compiled.get("loss") is None:
            results = {
                key: value
                for key, value in results.items()
                if not key.endswith("loss")
            }
        return {PREFIX + key: float(value) for key, value in results.items()}
