"""The base class that makes a distillation term usable by `tfkd.Distiller`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

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
            example. Under `tf.distribute`, the `Distiller` gathers the
            features of all replicas first, so the relations span the global
            batch.
        accepts_sample_weight: a batch-relational `compute` that takes
            `sample_weight=` (one weight per example or position, gathered
            from all replicas like the features); the other batch-relational
            methods ignore sample weights, with a warning.
        requires_labels: `compute` needs the ground-truth labels.
        requires_matching_width: teacher and student features must have the
            same last dimension; the `Distiller` inserts a learnable adapter
            when they differ.
        feature_rank: the rank (batch axis included) that the tapped
            features must have, e.g. 4 for NHWC maps; `None` for any. The
            `Distiller` checks the tapped layers' shapes when it is built.
        reads_class_logits: the method is a softmax over the classes of one
            output (`KD`, `DKD`, `DIST`): the `Distiller` refuses it on an
            output with one logit, whose softmax is constant.
        needs_all_logits: the method reads every teacher logit (their
            values), not only the teacher's softmax. A `top_k` teacher
            cache (`tfkd.cache_teacher_outputs`) keeps the softmax of the
            top-k logits alone, so a Distiller refuses it for such a
            method. Defaults to `True`; softmax methods (`KD`, `DKD`,
            `DIST`) declare `False`.
        accepts_top_k: `compute` also takes, as the teacher, a top-k
            cache's dict (`top_k_values`, `top_k_indices`,
            `log_normalizer`): from a cache with the teacher's
            log-normalizer the `Distiller` passes it that dict instead of
            the rebuilt logits (the token divergences: `k + 1` buckets).
        requires_teacher: `compute` reads the teacher's tensor. `False`
            (teacher-free KD): the `Distiller` accepts `teacher=None` when
            every method declares it.
        _hyperparameters: names of the float hyper-parameters, set by
            `_set_hyperparameters`: each is validated (`> 0`, or `>= 0` if
            also in `_may_be_zero`), becomes a float32 variable attribute
            that schedules can `assign` without retracing, and its value as
            configured goes to `get_config` and `base_value`.
        _may_be_zero: those of `_hyperparameters` that may be 0 (weights).

    Args:
        teacher_layer: name of the teacher layer whose output this term reads;
            `None` for the teacher's logits.
        student_layer: name of the student layer; `None` for the student's
            logits.
        name: name of the loss.
        **kwargs: forwarded to `keras.losses.Loss` (e.g. `reduction`, used
            only when the loss is called standalone). Defaults to
            `reduction="sum_over_batch_size"`.
    """

    batch_relational = False
    accepts_sample_weight = False
    requires_labels = False
    requires_matching_width = False
    feature_rank = None
    reads_class_logits = False
    needs_all_logits = True
    accepts_top_k = False
    requires_teacher = True
    _hyperparameters = ()
    _may_be_zero = ()

    def __init__(
        self,
        *,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **kwargs)
        if (teacher_layer is None) != (student_layer is None):
            raise ValueError(
                f"{type(self).__name__} needs both `teacher_layer` and "
                "`student_layer` (layer names), or neither (logits). "
                f"Received: teacher_layer={teacher_layer!r}, "
                f"student_layer={student_layer!r}"
            )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self._configured = {}

    def _set_hyperparameters(self, **values):
        """Validates and sets the `_hyperparameters`, given by name."""
        if sorted(values) != sorted(self._hyperparameters):
            raise TypeError(
                f"{type(self).__name__} declares the hyper-parameters "
                f"{self._hyperparameters}. Received: {sorted(values)}"
            )
        for name in self._hyperparameters:
            value = check_positive(
                name, values[name], allow_zero=name in self._may_be_zero
            )
            self._configured[name] = value
            setattr(self, name, hyperparameter(name, value))

    def base_value(self, name: str) -> float:
        """The value of hyper-parameter `name` given to the constructor.

        The attribute of the same name is a variable that schedules (e.g.
        `tfkd.callbacks.TemperatureSchedule`) assign during `fit`; this stays
        the configured value, as does `get_config`. A schedule resumed after
        a crash computes from it, not from the value the variable had last.

        Args:
            name: one of the class's hyper-parameters, e.g. `"temperature"`.

        Returns:
            The configured value, a Python float.

        Raises:
            ValueError: the method has no hyper-parameter `name`.

        Example:
            >>> tfkd.losses.KD(temperature=4.0).base_value("temperature")
            4.0
        """
        if name not in self._configured:
            raise ValueError(
                f"{type(self).__name__} has no hyper-parameter {name!r}. "
                f"Expected one of {self._hyperparameters}."
            )
        return self._configured[name]

    def compute(
        self,
        teacher: tf.Tensor,
        student: tf.Tensor,
        labels: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Returns `(batch, ...)` per-example values, or a scalar if
        relational."""
        raise NotImplementedError

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        if self.requires_labels:
            raise ValueError(
                f"{type(self).__name__} needs the labels: use it inside "
                "`tfkd.Distiller`, or call its "
                "`compute(teacher, student, labels)`."
            )
        value = self.compute(y_true, y_pred)
        if self.batch_relational:
            # Keras' reduction would divide by 1 here: keep the batch value.
            return tf.reshape(value, [1])
        return value

    def get_config(self) -> dict:
        config = super().get_config()
        if self.teacher_layer is not None:
            config.update(
                teacher_layer=self.teacher_layer,
                student_layer=self.student_layer,
            )
        # The configuration, not the variables: a schedule may have moved them.
        config.update(self._configured)
        return config

    @classmethod
    def from_config(cls, config: dict) -> DistillationLoss:
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of `tfkd.losses.METHODS`: a method and how it is used.

    Attributes:
        cls: the `DistillationLoss` class.
        function: its pure TensorFlow function.
        reads: what it reads: `"logits"`, `"maps"` (NHWC feature maps) or
            `"features"` (a layer's output of any rank: vectors, maps).
        weight: the weight against the cross-entropy that its paper (and
            RepDistiller, for feature methods) uses: give it as
            `(method, weight)`.
        kwargs: the constructor's arguments of this entry (a variant such
            as `kd_standardized`).
        paper: the reference, `"Authors, venue year"`.
    """

    cls: type
    function: Callable[..., Any]
    reads: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper: str = ""

    def build(
        self,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        **kwargs: Any,
    ) -> DistillationLoss:
        """A new instance: this entry's arguments, then `kwargs`.

        Feature methods take the two layer names; a logits method ignores a
        hyper-parameter that it does not have (e.g. `temperature` for
        `OutputMatching`), so one loop can build every logits method.

        Example:
            >>> tfkd.losses.METHODS["dkd"].build(temperature=2.0)
            >>> tfkd.losses.METHODS["attention"].build("block2", "block2")
        """
        arguments = {**self.kwargs, **kwargs}
        if "temperature" not in self.cls._hyperparameters:
            arguments.pop("temperature", None)
        if teacher_layer is not None or student_layer is not None:
            arguments.update(
                teacher_layer=teacher_layer, student_layer=student_layer
            )
        return self.cls(**arguments)
