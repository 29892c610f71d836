"""The base class that makes a distillation term usable by `tfkd.Distiller`."""

import math

import tensorflow as tf

from tfkd._keras import keras


def check_positive(name, value, *, allow_zero=False):
    """Validates a finite positive hyper-parameter; returns it as a float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r}"
        ) from None
    if (
        not math.isfinite(number)
        or number < 0
        or (number == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"`{name}` must be finite and {bound}. Received: {name}={value!r}"
        )
    return number


def hyperparameter(name, value):
    """A float32 non-trainable variable that schedules can `assign` to.

    Losses read it inside the compiled step, so changing it never retraces.
    """
    return tf.Variable(
        float(value), trainable=False, dtype=tf.float32, name=name
    )


class DistillationLoss(keras.losses.Loss):
    """A distillation term: what the teacher's outputs teach the student's.

    Subclasses implement `compute(teacher, student, labels=None)` and set the
    class attributes below; the Keras `Loss` interface (`loss(t, s)`, teacher
    as `y_true`, student as `y_pred`) then works for standalone use.

    Class attributes:
        batch_relational: `compute` returns one scalar for the whole batch (the
            method relates examples to each other) instead of one value per
            example. Under `tf.distribute`, the `Distiller` gathers the features of
            all replicas first, so the relations span the global batch.
        requires_labels: `compute` needs the ground-truth labels.
        requires_matching_width: teacher and student features must have the same
            last dimension; the `Distiller` inserts a learnable adapter when they
            differ.

    Args:
        teacher_layer: name of the teacher layer whose output this term reads;
            `None` for the teacher's logits.
        student_layer: name of the student layer; `None` for the student's logits.
        name: name of the loss.
    """

    batch_relational = False
    requires_labels = False
    requires_matching_width = False

    def __init__(self, *, teacher_layer=None, student_layer=None, name=None):
        super().__init__(name=name, reduction="sum_over_batch_size")
        if (teacher_layer is None) != (student_layer is None):
            raise ValueError(
                f"{type(self).__name__} needs both `teacher_layer` and "
                f"`student_layer` (layer names), or neither (logits). Received: "
                f"teacher_layer={teacher_layer!r}, student_layer={student_layer!r}"
            )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer

    def compute(self, teacher, student, labels=None):
        """Returns `(batch,)` per-example values, or a scalar if relational."""
        raise NotImplementedError

    def call(self, y_true, y_pred):
        if self.requires_labels:
            raise ValueError(
                f"{type(self).__name__} needs the labels: use it inside "
                "`tfkd.Distiller`, or call its `compute(teacher, student, labels)`."
            )
        value = self.compute(y_true, y_pred)
        if self.batch_relational:
            # Keras' reduction would divide by 1 here: keep the batch value.
            return tf.reshape(value, [1])
        return value

    def get_config(self):
        config = {"name": self.name}
        if self.teacher_layer is not None:
            config.update(
                teacher_layer=self.teacher_layer,
                student_layer=self.student_layer,
            )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
