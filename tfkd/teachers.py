"""Teachers paid once: cached teacher outputs, and teacher ensembles.

The cache (`cache_teacher_outputs` and its format: `INPUTS_KEY`,
`TEACHER_OUTPUTS_KEY`, `split_inputs`) is implemented in `tfkd._cache`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfkd import _keras
from tfkd import _self_teacher
from tfkd._cache import INPUTS_KEY
from tfkd._cache import TEACHER_OUTPUTS_KEY
from tfkd._cache import cache_teacher_outputs
from tfkd._cache import split_inputs
from tfkd._keras import keras

__all__ = [
    "INPUTS_KEY",
    "TEACHER_OUTPUTS_KEY",
    "cache_teacher_outputs",
    "ensemble",
    "moving_average",
    "moving_average_decay",
    "snapshot",
    "split_inputs",
]


def ensemble(
    teachers: Sequence[keras.Model | tuple[keras.Model, float]]
    | dict[keras.Model, float],
    name: str = "teacher_ensemble",
) -> keras.Model:
    """One frozen teacher whose logits average several teachers' logits.

    ```
    t(x) = sum_k w_k * t_k(x),   w_k = weight_k / sum_j weight_j
    ```

    Weights are normalised to sum to 1, so `{a: 2, b: 1}` and
    `{a: 0.5, b: 0.25}` are the same ensemble. The models are set
    `trainable = False` and called with `training=False`, once each per call.

    Args:
        teachers: a list of Keras models that output logits (equal weights),
            a `{model: weight}` dict, or a list of `(model, weight)` pairs
            (for models that cannot be dict keys). All teachers take the
            first teacher's inputs and output logits of one shape.
        name: name of the returned model. Defaults to `"teacher_ensemble"`.

    Returns:
        A Functional `keras.Model` on the first teacher's inputs whose output
        is the weighted mean of the teachers' logits, in float32.

    Raises:
        TypeError: an entry is not a Keras model.
        ValueError: no teacher, a negative, non-finite or all-zero weight,
            a teacher without known inputs, or outputs of different shapes
            (both teachers named).

    Example:
        >>> teacher = tfkd.teachers.ensemble({teacher_a: 2.0, teacher_b: 1.0})
        >>> distiller = tfkd.Distiller([teacher_a, teacher_b], student)

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural
        Network", 2015 (distilling an ensemble into one model).
    """
    if isinstance(teachers, dict):
        pairs = list(teachers.items())
    else:
        pairs = [
            entry if isinstance(entry, tuple) else (entry, 1.0)
            for entry in teachers
        ]
    if not pairs:
        raise ValueError(
            "`teachers` is empty. Received: teachers=[]. Pass at least one "
            "model."
        )
    for model, _ in pairs:
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Each teacher must be a `{_keras.KERAS_NAME}.Model`. "
                f"Received: {model!r} of type {type(model).__name__}"
            )
    weights = np.array([float(weight) for _, weight in pairs])
    if np.any(weights < 0) or not np.isfinite(weights).all():
        raise ValueError(
            "Teacher weights must be finite and >= 0. Received: weights="
            f"{weights.tolist()}"
        )
    if weights.sum() == 0:
        raise ValueError(
            "Teacher weights are all zero. Received: weights="
            f"{weights.tolist()}. Give at least one teacher a weight > 0."
        )
    weights = weights / weights.sum()
    models = [model for model, _ in pairs]
    first = models[0]
    inputs = getattr(first, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Teacher {first.name!r} has no known inputs (subclassed or not "
            "built): build it on a `keras.Input`."
        )
    inputs = inputs[0] if len(inputs) == 1 else inputs
    expected = tuple(first.outputs[0].shape[1:])
    outputs = []
    for model in models:
        model.trainable = False
        logits = model(inputs, training=False)
        if tuple(logits.shape[1:]) != expected:
            raise ValueError(
                f"Teacher {model.name!r} outputs shape {tuple(logits.shape)} "
                f"but teacher {first.name!r} outputs "
                f"{tuple(first.outputs[0].shape)}: an ensemble averages "
                "logits class by class, so all teachers need one shape."
            )
        outputs.append(logits)
    # float32 layers: under a mixed precision policy the mean stays float32.
    scaled = [
        keras.layers.Rescaling(float(w), name=f"weight_{i}", dtype="float32")(
            logits
        )
        for i, (w, logits) in enumerate(zip(weights, outputs))
    ]
    if len(scaled) > 1:
        mean = keras.layers.Add(name="mean_logits", dtype="float32")(scaled)
    else:
        mean = scaled[0]
    model = keras.Model(inputs, mean, name=name)
    model.trainable = False
    return model


def moving_average(
    student: keras.Model, decay: float = 0.999, name: str | None = None
) -> keras.Model:
    """A teacher that is the moving average of the student's weights.

    A frozen clone of `student` (mean teacher, Tarvainen & Valpola 2017;
    the EMA teachers of self-distillation). A `tfkd.Distiller` of this
    teacher and this student updates every teacher weight after each
    optimizer step, inside `train_step` (so `steps_per_execution` and
    `tf.distribute` see every step):

    ```
    w_teacher <- decay * w_teacher + (1 - decay) * w_student
    ```

    BatchNorm statistics are averaged too. The decay is a float32
    variable (`moving_average_decay(teacher)`) that
    `tfkd.callbacks.HyperparameterSchedule` can drive. It costs one more
    forward pass per step (the teacher's, in inference mode) and a copy of
    the weights.

    Args:
        student: the student, a built Keras model; pass this very student
            to the Distiller.
        decay: in [0, 1]. Defaults to `0.999`.
        name: the teacher's name. Defaults to `"<student>_moving_average"`.

    Returns:
        A frozen Keras model with the student's architecture and weights.

    Raises:
        TypeError: `student` is not a Keras model.
        ValueError: `decay` outside [0, 1], or an unbuilt student.

    Example:
        >>> teacher = tfkd.teachers.moving_average(student, decay=0.999)
        >>> distiller = tfkd.Distiller(
        ...     teacher, student, tfkd.losses.KD(temperature=4.0))

    References:
        Tarvainen, Valpola. "Mean teachers are better role models", NeurIPS
        2017. arXiv:1703.01780.
    """
    return _self_teacher.moving_average(student, decay, name)


def moving_average_decay(teacher: keras.Model):
    """The decay variable of a `moving_average` teacher, to schedule it.

    Example:
        >>> tfkd.callbacks.HyperparameterSchedule(
        ...     lambda d: tfkd.teachers.moving_average_decay(d.teacher),
        ...     lambda epoch: min(0.999, 0.99 + 0.003 * epoch))

    Raises:
        ValueError: `teacher` is not made by `moving_average`.
    """
    found = _self_teacher.state(teacher)
    if found is None or found.decay is None:
        raise ValueError(
            "Invalid value for argument `teacher`: expected a teacher made "
            "by `tfkd.teachers.moving_average(student)`. Received: "
            f"teacher={getattr(teacher, 'name', teacher)!r}"
        )
    return found.decay


def snapshot(student: keras.Model, name: str | None = None) -> keras.Model:
    """A teacher that is the student as it was at the end of the last epoch.

    A frozen clone of `student`; `tfkd.Distiller.fit` copies the student's
    weights into it before each epoch, so during epoch `e` it predicts as
    the student did after epoch `e - 1` (PS-KD's past predictions, Kim et
    al. 2021: use it with `tfkd.losses.PSKD`). Compared with a store of
    each training example's past prediction, it costs one more forward
    pass per step (inference mode) and one copy of the weights, instead of
    `examples x classes` floats and an example index in the data; and it
    predicts on the current (augmented) view, in inference mode.

    Args:
        student: the student, a built Keras model.
        name: the teacher's name. Defaults to `"<student>_snapshot"`.

    Returns:
        A frozen Keras model with the student's architecture and weights.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     tfkd.teachers.snapshot(student), student,
        ...     tfkd.losses.PSKD(alpha=0.8), alpha=0.0)
    """
    return _self_teacher.snapshot(student, name)
