"""Keras wrappers of the self-distillation losses, for `tfkd.Distiller`.

`requires_teacher = False` marks a method that reads no teacher output:
`tfkd.Distiller(teacher=None, ...)` accepts it (see `tfkd._self_teacher`).
"""

from __future__ import annotations

from typing import Any

from tfkd._keras import register_serializable
from tfkd.losses import _self
from tfkd.losses._base import DistillationLoss


@register_serializable
class TeacherFreeKD(DistillationLoss):
    """Teacher-free KD (Tf-KD_reg): a virtual teacher made from the labels.

    See `tfkd.losses.teacher_free_loss` for the formula. It needs no
    teacher model: `tfkd.Distiller(None, student, TeacherFreeKD())`. The
    authors weigh it by `reg_alpha` against cross-entropy: that is
    `tfkd.Distiller(alpha=1 - reg_alpha)`. `temperature` and `multiplier`
    are variables that `tfkd.callbacks` schedules can drive.

    Args:
        correct_prob: the virtual teacher's probability of the true class,
            in (0, 1). Defaults to `0.99` (the authors').
        temperature: `T > 0`. Defaults to `20.0`.
        multiplier: scale of the term, `>= 0`. Defaults to `1.0`.
        name: name of the loss. Defaults to `"teacher_free_kd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: `correct_prob` outside (0, 1), a `temperature` that is
            not `> 0`, a negative `multiplier`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     None, student,
        ...     tfkd.losses.TeacherFreeKD(temperature=20.0, multiplier=10.0),
        ...     alpha=0.1)
    """

    requires_teacher = False
    requires_labels = True
    needs_all_logits = False
    _hyperparameters = ("correct_prob", "temperature", "multiplier")
    _may_be_zero = ("multiplier",)

    def __init__(
        self,
        correct_prob: float = 0.99,
        temperature: float = 20.0,
        multiplier: float = 1.0,
        name: str = "teacher_free_kd",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        _self._check_probability("correct_prob", correct_prob)
        self._set_hyperparameters(
            correct_prob=correct_prob,
            temperature=temperature,
            multiplier=multiplier,
        )

    def compute(self, teacher, student, labels=None):
        return _self.teacher_free_loss_per_example(
            labels,
            student,
            correct_prob=self.correct_prob,
            temperature=self.temperature,
            multiplier=self.multiplier,
        )


@register_serializable
class PSKD(DistillationLoss):
    """Progressive self-knowledge distillation (Kim et al. 2021).

    See `tfkd.losses.pskd_loss`. The teacher is the model's own past:
    `tfkd.teachers.snapshot(student)`, the student's weights at the end of
    the previous epoch, copied before each epoch by `fit`. The
    soft-target cross-entropy replaces the hard-label loss: use
    `alpha=0.0` in the Distiller. `alpha` here is `alpha_T`, the final
    weight of the past predictions; `tfkd.callbacks.PSKDSchedule` grows the
    variable `alpha` linearly to it, as the paper.

    Args:
        alpha: weight of the past predictions in the targets, in [0, 1]
            (`alpha_T`). Defaults to `0.8` (the paper's).
        name: name of the loss. Defaults to `"pskd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: `alpha` outside [0, 1].

    Example:
        >>> student = make_student()
        >>> distiller = tfkd.Distiller(
        ...     tfkd.teachers.snapshot(student), student,
        ...     tfkd.losses.PSKD(alpha=0.8), alpha=0.0)
        >>> distiller.fit(data, epochs=30,
        ...               callbacks=[tfkd.callbacks.PSKDSchedule(30)])
    """

    requires_labels = True
    needs_all_logits = False
    _hyperparameters = ("alpha",)
    _may_be_zero = ("alpha",)

    def __init__(self, alpha: float = 0.8, name: str = "pskd", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self._set_hyperparameters(alpha=alpha)
        if self.base_value("alpha") > 1:
            raise ValueError(
                "Invalid value for argument `alpha`. Expected a weight in "
                f"[0, 1]. Received: alpha={alpha!r}"
            )

    def compute(self, teacher, student, labels=None):
        return _self.pskd_loss_per_example(
            teacher, student, labels, alpha=self.alpha
        )
