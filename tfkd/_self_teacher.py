"""Teachers made from the student itself, for `tfkd.Distiller`.

Three kinds, all marked on the teacher model they produce:

- no teacher (`Distiller(teacher=None, ...)`): a stand-in model that
  outputs zeros of the student's output shapes, for methods that declare
  `requires_teacher = False` (they read the labels, not a teacher);
- a moving average of the student (`tfkd.teachers.moving_average`): a
  frozen clone whose weights follow `w_t <- d * w_t + (1 - d) * w_s`, updated
  inside `train_step` right after the optimizer's step, so that
  `steps_per_execution` and `tf.distribute` see every step;
- a snapshot of the student (`tfkd.teachers.snapshot`): a frozen clone that
  `fit` overwrites with the student's weights before each epoch (PS-KD's
  "previous epoch").
"""

from __future__ import annotations

import tensorflow as tf

from tfkd import _keras
from tfkd._keras import keras
from tfkd.losses._base import check_positive

NONE = "none"
MOVING_AVERAGE = "moving_average"
SNAPSHOT = "snapshot"
_ATTRIBUTE = "_tfkd_self_teacher"


class _State:
    """What a self-teacher is: its kind, the student it follows and, for a
    moving average, the decay (a float32 variable) and its configured
    value. A plain object: Keras does not track it as weights."""

    def __init__(self, kind, source, decay=None):
        self.kind = kind
        self.source = source
        self.base_decay = decay
        self.decay = (
            None
            if decay is None
            else tf.Variable(
                float(decay), trainable=False, dtype=tf.float32, name="decay"
            )
        )


def state(teacher):
    """The `_State` of a teacher made here, or None."""
    return getattr(teacher, _ATTRIBUTE, None)


def _mark(model, kind, source, decay=None):
    object.__setattr__(model, _ATTRIBUTE, _State(kind, source, decay))
    return model


@_keras.register_serializable
class _Zeros(keras.layers.Layer):
    """Outputs float32 zeros of shape `(batch,) + shape` for any input."""

    def __init__(self, shape, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)

    def call(self, inputs):
        batch = tf.shape(tf.nest.flatten(inputs)[0])[0]
        return tf.zeros(tf.concat([[batch], self.shape], 0), tf.float32)

    def compute_output_shape(self, input_shape):
        first = tf.nest.flatten(input_shape)[0] if input_shape else None
        return (first,) + self.shape

    def get_config(self):
        return {**super().get_config(), "shape": list(self.shape)}


def _methods(distillation_loss):
    """The method objects of a `distillation_loss` argument, flattened."""
    if distillation_loss is None:
        return []
    if isinstance(distillation_loss, dict):
        entries = list(distillation_loss.values())
    elif isinstance(distillation_loss, (list, tuple)):
        entries = list(distillation_loss)
    else:
        entries = [distillation_loss]
    methods = []
    for entry in entries:
        if isinstance(entry, (list, tuple, dict)):
            methods.extend(_methods(entry))
        else:
            methods.append(entry)
    return methods


def no_teacher(student, distillation_loss):
    """The stand-in teacher of `Distiller(teacher=None, ...)`.

    Raises:
        ValueError: no method, or a method that reads a teacher
            (`requires_teacher` is not False), or a student without known
            inputs and outputs.
    """
    methods = _methods(distillation_loss)
    needing = [
        type(m).__name__
        for m in methods
        if getattr(m, "requires_teacher", True)
    ]
    if not methods or needing:
        raise ValueError(
            "Invalid value for argument `teacher`: `teacher=None` needs "
            "distillation methods that read no teacher (such as "
            "`tfkd.losses.TeacherFreeKD()`). Received: teacher=None, "
            f"distillation_loss={distillation_loss!r}"
            + (f" ({', '.join(needing)} need a teacher)" if needing else "")
            + ". Pass a teacher model, `tfkd.teachers.moving_average("
            "student)` or `tfkd.teachers.snapshot(student)`."
        )
    inputs = getattr(student, "inputs", None)
    outputs = getattr(student, "outputs", None)
    if not inputs or not outputs:
        raise ValueError(
            "`teacher=None` needs a student with known inputs and outputs "
            f"(a Functional or Sequential model built on `keras.Input`). "
            f"Received: student={student.name!r} of type "
            f"{type(student).__name__}."
        )
    fresh = [
        keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=f"no_teacher_{i}")
        for i, t in enumerate(inputs)
    ]
    zeros = [
        _Zeros(tuple(o.shape[1:]), name=f"zeros_{i}")(fresh)
        for i, o in enumerate(outputs)
    ]
    model = keras.Model(
        fresh if len(fresh) > 1 else fresh[0],
        zeros if len(zeros) > 1 else zeros[0],
        name="no_teacher",
    )
    model.trainable = False
    return _mark(model, NONE, student)


def _clone(student, suffix, name):
    if not isinstance(student, keras.Model):
        raise TypeError(
            f"`student` must be a `{_keras.KERAS_NAME}.Model`. Received: "
            f"student={student!r} of type {type(student).__name__}"
        )
    if not student.built:
        raise ValueError(
            f"The student {student.name!r} is not built: build it (e.g. on "
            "a `keras.Input`) before making its teacher."
        )
    name = name or f"{student.name}_{suffix}"
    teacher = keras.models.clone_model(student)
    if getattr(teacher, "inputs", None) and getattr(teacher, "outputs", None):
        # The same layers as a Functional model of its own name.
        teacher = keras.Model(teacher.inputs, teacher.outputs, name=name)
    teacher.set_weights(student.get_weights())
    teacher.trainable = False
    return teacher


def moving_average(student, decay=0.999, name=None):
    """See `tfkd.teachers.moving_average`."""
    decay = check_positive("decay", decay, allow_zero=True)
    if decay > 1:
        raise ValueError(
            "Invalid value for argument `decay`. Expected a number in "
            f"[0, 1]. Received: decay={decay!r}"
        )
    teacher = _clone(student, "moving_average", name)
    return _mark(teacher, MOVING_AVERAGE, student, decay)


def snapshot(student, name=None):
    """See `tfkd.teachers.snapshot`."""
    teacher = _clone(student, "snapshot", name)
    return _mark(teacher, SNAPSHOT, student)


def _pairs(teacher, student):
    t_weights, s_weights = teacher.weights, student.weights
    if [tuple(w.shape) for w in t_weights] != [
        tuple(w.shape) for w in s_weights
    ]:
        raise ValueError(
            f"The teacher {teacher.name!r} is no copy of the student "
            f"{student.name!r}: their weights differ in number or shape."
        )
    return list(zip(t_weights, s_weights))


def _variable(v):
    """The `tf.Variable` (or distributed variable) behind a weight."""
    return v if _keras.IS_LEGACY else getattr(v, "value", v)


def check(distiller):
    """At construction: a self-teacher follows the Distiller's student."""
    found = state(distiller.teacher)
    if found is None:
        return
    if found.source is not distiller.student:
        raise ValueError(
            f"The teacher {distiller.teacher.name!r} was made from the model "
            f"{found.source.name!r}, not from this Distiller's student "
            f"{distiller.student.name!r}. Pass "
            "`tfkd.teachers.moving_average(student)` (or `snapshot(student)`) "
            "of the very student you distil."
        )
    if found.kind != NONE:
        _pairs(distiller.teacher, distiller.student)


def after_step(distiller):
    """Updates a moving-average teacher after the optimizer's step.

    In replica context (inside `train_step`): the update runs in a
    `merge_call`, once per variable and device, as the optimizers update
    mirrored variables.
    """
    found = state(distiller.teacher)
    if found is None or found.kind != MOVING_AVERAGE:
        return
    pairs = [
        (_variable(t), _variable(s))
        for t, s in _pairs(distiller.teacher, distiller.student)
    ]
    decay = found.decay

    def update(strategy):
        for t, s in pairs:
            if t.dtype.is_floating:

                def average(v, value):
                    d = tf.cast(decay, v.dtype)
                    return v.assign(d * v + (1.0 - d) * value)

                strategy.extended.update(t, average, args=(s,), group=False)
            else:
                strategy.extended.update(
                    t, lambda v, value: v.assign(value), args=(s,), group=False
                )

    context = tf.distribute.get_replica_context()
    if context is None:
        update(tf.distribute.get_strategy())
    else:
        context.merge_call(update)


class _Snapshot(keras.callbacks.Callback):
    """Copies the student's weights into the snapshot teacher before each
    epoch: during epoch `e`, the teacher is the student at the end of
    epoch `e - 1` (at epoch 0, the student as it starts)."""

    def __init__(self, distiller):
        super().__init__()
        self._distiller = distiller

    def on_epoch_begin(self, epoch, logs=None):
        for t, s in _pairs(self._distiller.teacher, self._distiller.student):
            t.assign(s)


def callbacks(distiller, given):
    """`given` plus the callback that a snapshot teacher needs."""
    given = list(given or [])
    found = state(distiller.teacher)
    if found is not None and found.kind == SNAPSHOT:
        given.append(_Snapshot(distiller))
    return given


def get_config(distiller):
    """The self-teacher's entry of the Distiller's config, or None."""
    found = state(distiller.teacher)
    if found is None:
        return None
    return {"kind": found.kind, "decay": found.base_decay}


def from_config(entry, teacher, student):
    """Marks a deserialized `teacher` again as `entry` says; returns it."""
    if entry is None:
        return teacher
    if entry["kind"] == NONE:
        return _mark(teacher, NONE, student)
    if entry["kind"] == MOVING_AVERAGE:
        teacher = _mark(teacher, MOVING_AVERAGE, student, entry["decay"])
        return teacher
    return _mark(teacher, SNAPSHOT, student)
