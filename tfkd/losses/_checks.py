"""Static checks of the loss functions' inputs, and the labels they take.

Shapes are checked when a function is traced, from static shapes only: a
mismatch that broadcasting would hide (a list of tensors stacks into a new
first axis; one-hot labels flatten into more labels than examples) raises
a `ValueError` naming the function, both shapes and the fix, instead of
returning a wrong value.
"""

import tensorflow as tf

ACTIVATIONS = ("softmax", "sigmoid")

_LIST_HINT = (
    " (a Python list of tensors is stacked into one tensor with a new "
    "first axis: pass one tensor each)"
)


def check_activation(activation):
    """Returns `activation` if it is one of `ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            "Invalid value for argument `activation`. Expected one of "
            f"{ACTIVATIONS}. Received: activation={activation!r}"
        )
    return activation


def _shape(x):
    return tuple(x.shape) if x.shape.rank is not None else None


def check_logits(function, teacher_logits, student_logits, *, softmax=True):
    """Teacher and student logits: the same `(batch, ..., classes)` shape.

    With `softmax=True`, a last axis of size 1 is an error: the softmax of
    one logit is 1, so the loss would silently be 0.
    """
    t_shape, s_shape = _shape(teacher_logits), _shape(student_logits)
    if t_shape is None or s_shape is None:
        return
    if len(t_shape) < 2 or not teacher_logits.shape.is_compatible_with(
        student_logits.shape
    ):
        raise ValueError(
            f"{function} needs teacher and student logits of the same shape "
            f"`(batch, ..., classes)`. Received: teacher_logits.shape="
            f"{t_shape}, student_logits.shape={s_shape}. Pass the two models' "
            f"logits for the same inputs{_LIST_HINT}."
        )
    if softmax and (t_shape[-1] == 1 or s_shape[-1] == 1):
        raise ValueError(
            f"{function} takes the softmax over the last axis, but it has "
            f"size 1 (logits shape {t_shape}): the softmax of one logit is "
            "always 1, so the loss would be 0. For a binary or multi-label "
            'head, use `tfkd.losses.KD(activation="sigmoid")` (or '
            '`tfkd.losses.kd_loss(..., activation="sigmoid")`).'
        )


def check_features(function, teacher, student, *, same_shape):
    """Teacher and student features: same batch axis, or the same shape.

    Methods that compare the features element by element need
    `same_shape`; the others relate examples within each network and only
    need the same batch axis.
    """
    t_shape, s_shape = _shape(teacher), _shape(student)
    if t_shape is None or s_shape is None:
        return
    if same_shape:
        if not teacher.shape.is_compatible_with(student.shape):
            raise ValueError(
                f"{function} compares the features element by element: they "
                f"need the same shape. Received: teacher_features.shape="
                f"{t_shape}, student_features.shape={s_shape}. In "
                "`tfkd.Distiller`, `tfkd.losses.FitNets` adds a learnable "
                f"adapter when the widths differ{_LIST_HINT}."
            )
    elif (
        not t_shape
        or not s_shape
        or not teacher.shape[:1].is_compatible_with(student.shape[:1])
    ):
        raise ValueError(
            f"{function} needs teacher and student features with the same "
            f"batch axis `(batch, ...)`. Received: teacher_features.shape="
            f"{t_shape}, student_features.shape={s_shape}. Pass the two "
            f"models' features for the same inputs{_LIST_HINT}."
        )


def target_one_hot(function, labels, logits):
    """The labels' target class as a float32 one-hot of the logits' shape.

    Decided by static rank: labels of rank `logits.rank - 1` (`(batch,)`
    for `(batch, classes)` logits) or with a last axis of 1 are sparse
    class indices; labels of the logits' shape are one-hot or probabilities,
    whose target is the argmax.
    """
    labels = tf.convert_to_tensor(labels)
    classes = logits.shape[-1]
    rank, label_rank = logits.shape.rank, labels.shape.rank
    leading = logits.shape[:-1]
    received = _shape(labels)

    def error(reason):
        return ValueError(
            f"{function}: {reason}. Received: labels.shape="
            f"{received}, logits.shape={_shape(logits)}. Pass sparse "
            f"class indices `{tuple(leading)}` (or with a last axis of 1), or "
            f"one-hot labels `{_shape(logits)}`."
        )

    if rank is None or label_rank is None:
        raise error("the labels' and logits' ranks must be known statically")
    if label_rank == rank and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
        label_rank -= 1
    if label_rank == rank - 1:
        if not labels.shape.is_compatible_with(leading):
            raise error("the labels do not match the logits' leading axes")
        return tf.one_hot(
            tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=tf.float32
        )
    if label_rank == rank and classes is not None:
        if not labels.shape.is_compatible_with(logits.shape):
            raise error("one-hot labels need the logits' shape")
        target = tf.argmax(labels, axis=-1, output_type=tf.int32)
        return tf.one_hot(target, classes, dtype=tf.float32)
    raise error("cannot tell sparse from one-hot labels")
