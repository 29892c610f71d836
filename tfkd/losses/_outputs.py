"""Output matching: the student's outputs regress on the teacher's.

The distillation of regression outputs, and logit regression (Ba & Caruana
2014): a regression loss between the teacher's and the student's outputs,
the teacher's in the place of the labels. The losses are Keras' regression
losses, computed the same way (mean over the last axis), so that the term
of an output compiled with `loss="mse"` is that loss with the teacher's
outputs for labels.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfkd._keras import register_serializable
from tfkd.losses._base import DistillationLoss
from tfkd.losses._common import float32 as _float32

# Canonical names (Keras' loss function names) and their aliases.
OUTPUT_LOSSES = (
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "log_cosh",
    "mean_squared_logarithmic_error",
)
ALIASES = {
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "huber_loss": "huber",
    "logcosh": "log_cosh",
    "msle": "mean_squared_logarithmic_error",
}
_EPSILON = 1e-7  # keras.backend.epsilon(), as Keras' MSLE clips.


def check_output_loss(loss):
    """The canonical name of a regression loss name or alias."""
    name = ALIASES.get(loss, loss) if isinstance(loss, str) else None
    if name not in OUTPUT_LOSSES:
        raise ValueError(
            "Invalid value for argument `loss`. Expected one of "
            f"{list(OUTPUT_LOSSES)} or {sorted(ALIASES)}. Received: "
            f"loss={loss!r}"
        )
    return name


def _check_shapes(teacher, student):
    if teacher.shape.rank is None or student.shape.rank is None:
        return
    if teacher.shape.rank == 0 or not teacher.shape.is_compatible_with(
        student.shape
    ):
        raise ValueError(
            "output_matching_loss compares the outputs element by element: "
            "they need the same shape `(batch, ...)`. Received: "
            f"teacher_outputs.shape={tuple(teacher.shape)}, "
            f"student_outputs.shape={tuple(student.shape)}. Pass the two "
            "models' outputs for the same inputs."
        )


def _elementwise(loss, error, teacher, student, delta):
    if loss == "mean_squared_error":
        return tf.square(error)
    if loss == "mean_absolute_error":
        return tf.abs(error)
    if loss == "huber":
        delta = tf.cast(delta, tf.float32)
        absolute = tf.abs(error)
        return tf.where(
            absolute <= delta,
            0.5 * tf.square(error),
            delta * absolute - 0.5 * tf.square(delta),
        )
    if loss == "log_cosh":
        return error + tf.nn.softplus(-2.0 * error) - tf.math.log(2.0)
    # mean_squared_logarithmic_error
    student_log = tf.math.log(tf.maximum(student, _EPSILON) + 1.0)
    teacher_log = tf.math.log(tf.maximum(teacher, _EPSILON) + 1.0)
    return tf.square(student_log - teacher_log)


def output_matching_loss_per_example(
    teacher_outputs, student_outputs, *, loss="mean_squared_error", delta=1.0
):
    """Per-example values, shape `outputs.shape[:-1]` (`(batch,)` for
    `(batch,)` outputs); see `output_matching_loss`."""
    loss = check_output_loss(loss)
    teacher, student = _float32(teacher_outputs, student_outputs)
    _check_shapes(teacher, student)
    values = _elementwise(loss, student - teacher, teacher, student, delta)
    if values.shape.rank is not None and values.shape.rank <= 1:
        return values  # One output per example: nothing to average.
    return tf.reduce_mean(values, axis=-1)


def output_matching_loss(
    teacher_outputs: tf.Tensor,
    student_outputs: tf.Tensor,
    *,
    loss: str = "mean_squared_error",
    delta: float | tf.Variable = 1.0,
) -> tf.Tensor:
    """Output matching: a regression loss from the teacher's outputs.

    ```
    e = s - t                                         element by element
    mean_squared_error:  mean_k e^2
    mean_absolute_error: mean_k |e|
    huber:               mean_k (e^2 / 2 if |e| <= delta
                                 else delta * |e| - delta^2 / 2)
    log_cosh:            mean_k log(cosh(e))
    mean_squared_logarithmic_error:
                         mean_k (log(1 + max(s, eps)) - log(1 + max(t, eps)))^2
    ```

    averaged over the last axis as Keras' regression losses are, then over
    the batch: the loss of the same name with the teacher's outputs for
    labels (`y_true = t`, `y_pred = s`). The distillation of regression
    outputs (a regressor's prediction, a box), and logit regression on
    classifiers (Ba & Caruana 2014: `mean_squared_error` on logits).

    Args:
        teacher_outputs: `(batch, ...)` teacher outputs.
        student_outputs: student outputs of the same shape.
        loss: one of `"mean_squared_error"` (`"mse"`),
            `"mean_absolute_error"` (`"mae"`), `"huber"`, `"log_cosh"`,
            `"mean_squared_logarithmic_error"` (`"msle"`). Defaults to
            `"mean_squared_error"`.
        delta: Huber's threshold `> 0` (`loss="huber"` only). Defaults to
            `1.0`.

    Returns:
        Scalar float32 loss, the mean over the batch.

    Raises:
        ValueError: the shapes differ, or `loss` is unknown.

    Example:
        >>> tfkd.losses.output_matching_loss(t_outputs, s_outputs)
        >>> tfkd.losses.output_matching_loss(t, s, loss="huber", delta=2.0)

    References:
        Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
    """
    return tf.reduce_mean(
        output_matching_loss_per_example(
            teacher_outputs, student_outputs, loss=loss, delta=delta
        )
    )


@register_serializable
class OutputMatching(DistillationLoss):
    """Output matching: a regression loss from the teacher's outputs.

    See `tfkd.losses.output_matching_loss`. `tfkd.Distiller`'s default
    method on a regression output (one compiled with a regression loss,
    `"mse"`, `keras.losses.Huber(delta=2.0)`, ...) is this method with that
    loss (and Huber's delta). With `loss="mean_squared_error"` on logits it
    is logit matching, as `tfkd.losses.FitNets()` without layer names.

    Args:
        loss: the regression loss, one of `"mean_squared_error"` (`"mse"`),
            `"mean_absolute_error"` (`"mae"`), `"huber"`, `"log_cosh"`,
            `"mean_squared_logarithmic_error"` (`"msle"`). Defaults to
            `"mean_squared_error"`.
        delta: Huber's threshold `> 0`, used with `loss="huber"`; a variable
            that schedules can assign. Defaults to `1.0`.
        name: name of the loss. Defaults to `"output_matching"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: an unknown `loss`, or an invalid `delta`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     teacher, student,
        ...     distillation_loss=tfkd.losses.OutputMatching("huber"))

    References:
        Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
    """

    _hyperparameters = ("delta",)

    def __init__(
        self,
        loss: str = "mean_squared_error",
        delta: float = 1.0,
        name: str = "output_matching",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.loss = check_output_loss(loss)
        self._set_hyperparameters(delta=delta)

    def compute(self, teacher, student, labels=None):
        return output_matching_loss_per_example(
            teacher, student, loss=self.loss, delta=self.delta
        )

    def get_config(self):
        return {**super().get_config(), "loss": self.loss}
