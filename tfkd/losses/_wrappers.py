"""Keras wrappers of the loss functions, usable in `tfkd.Distiller`.

Each class declares its float hyper-parameters once, in `_hyperparameters`
(see `tfkd.losses.DistillationLoss`): that list drives their validation,
their schedulable variables and `get_config`.
"""

from __future__ import annotations

from typing import Any

from tfkd._keras import register_serializable
from tfkd.losses import _checks
from tfkd.losses import _features
from tfkd.losses import _logits
from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import check_positive


@register_serializable
class KD(DistillationLoss):
    """Hinton KD on logits: `T^2 * KL(softmax(t/T) || softmax(s/T))`.

    See `tfkd.losses.kd_loss` for the formulas. `temperature` is a variable:
    `tfkd.callbacks` schedules can change it during `fit` without retracing.
    `activation` is a plain string read when the step is traced; it can be
    reassigned (to `"sigmoid"` for a binary or multi-label head) before
    training.

    Args:
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        standardize: logit standardization (Sun et al. 2024), softmax only.
            Defaults to `False`.
        activation: `"softmax"` (one class per example) or `"sigmoid"`
            (one-logit binary heads, multi-label heads: a tempered Bernoulli
            KL per logit). Defaults to `"softmax"`.
        name: name of the loss. Defaults to `"kd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: invalid `temperature` or `activation`, or `standardize`
            with `"sigmoid"`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     teacher, student,
        ...     distillation_loss=tfkd.losses.KD(temperature=4))
        >>> tfkd.losses.KD(activation="sigmoid")  # binary_crossentropy heads
    """

    _hyperparameters = ("temperature",)

    def __init__(
        self,
        temperature: float = 4.0,
        standardize: bool = False,
        activation: str = "softmax",
        name: str = "kd",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self._set_hyperparameters(temperature=temperature)
        self.standardize = bool(standardize)
        self.activation = activation
        if self.standardize and self.activation == "sigmoid":
            raise ValueError(
                "KD: `standardize=True` (logit standardization) applies to the "
                'softmax only. Received: standardize=True, activation="sigmoid"'
            )

    @property
    def needs_all_logits(self):
        """Whether this KD reads every teacher logit: logit standardization
        z-scores them and a sigmoid KD reads each one; a softmax KD reads the
        teacher's softmax only (see `DistillationLoss`)."""
        return self.standardize or self.activation == "sigmoid"

    @property
    def reads_class_logits(self):
        """A softmax KD reads a softmax over classes; a sigmoid KD does not
        (see `DistillationLoss`)."""
        return self.activation == "softmax"

    @property
    def activation(self):
        """`"softmax"` or `"sigmoid"`; read when the step is traced."""
        return self._activation

    @activation.setter
    def activation(self, value):
        self._activation = _checks.check_activation(value)

    def compute(self, teacher, student, labels=None):
        return _logits.kd_loss_per_example(
            teacher,
            student,
            temperature=self.temperature,
            standardize=self.standardize,
            activation=self.activation,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "standardize": self.standardize,
            "activation": self.activation,
        }


@register_serializable
class DKD(DistillationLoss):
    """Decoupled KD: `T^2 * (alpha * TCKD + beta * NCKD)`; needs labels.

    See `tfkd.losses.dkd_loss`: sparse and one-hot labels both work.
    mdistiller warms DKD up linearly over its first 20 epochs: use
    `tfkd.callbacks.LinearWarmup(20)`.

    Args:
        alpha: TCKD weight. Defaults to `1.0`.
        beta: NCKD weight. Defaults to `8.0`.
        temperature: softening temperature. Defaults to `4.0`.
        name: name of the loss. Defaults to `"dkd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     teacher, student, distillation_loss=tfkd.losses.DKD(beta=8.0))
    """

    requires_labels = True
    reads_class_logits = True
    needs_all_logits = False
    _hyperparameters = ("alpha", "beta", "temperature")
    _may_be_zero = ("alpha", "beta")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        name: str = "dkd",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self._set_hyperparameters(
            alpha=alpha, beta=beta, temperature=temperature
        )

    def compute(self, teacher, student, labels=None):
        return _logits.dkd_loss_per_example(
            teacher,
            student,
            labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )


@register_serializable
class DIST(DistillationLoss):
    """DIST inter- and intra-class Pearson relations; batch-relational.

    See `tfkd.losses.dist_loss`. Sample weights (and padding masks given as
    sample weights) weigh both terms; under `tf.distribute` the relations
    span the global batch. The default method of `tfkd.Distiller`.

    Args:
        beta: inter-class weight. Defaults to `1.0`.
        gamma: intra-class weight. Defaults to `1.0`.
        temperature: softening temperature. Defaults to `1.0`.
        name: name of the loss. Defaults to `"dist"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.Distiller(
        ...     teacher, student, distillation_loss=tfkd.losses.DIST())
    """

    batch_relational = True
    accepts_sample_weight = True
    reads_class_logits = True
    needs_all_logits = False
    _hyperparameters = ("beta", "gamma", "temperature")
    _may_be_zero = ("beta", "gamma")

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        name: str = "dist",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self._set_hyperparameters(
            beta=beta, gamma=gamma, temperature=temperature
        )

    def compute(self, teacher, student, labels=None, sample_weight=None):
        return _logits.dist_loss(
            teacher,
            student,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
            sample_weight=sample_weight,
        )


@register_serializable
class FitNets(DistillationLoss):
    """FitNets hint: MSE between teacher and student outputs.

    See `tfkd.losses.hint_loss`. With layer names, it compares the outputs of
    a teacher layer (the hint) and a student layer (the guided layer); when
    their widths differ, `tfkd.Distiller` trains a 1x1-conv (maps) or dense
    (vectors) regressor on the student's side, which is not part of the
    exported student. Without layer names, it compares the models' final
    outputs, the logits: logit matching (Ba & Caruana 2014), as Keras'
    `FeatureDistillation` without layer names.

    Args:
        teacher_layer: name of the teacher layer (the hint); `None` (with
            `student_layer=None`) for the logits. Defaults to `None`.
        student_layer: name of the student layer (the guided layer); `None`
            for the logits. Defaults to `None`.
        name: name of the loss. Defaults to `"fitnets"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: only one of the two layer names is given.

    Example:
        >>> tfkd.losses.FitNets("teacher_block3", "student_block2")
        >>> tfkd.losses.FitNets()  # logit matching

    References:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for
        Thin Deep Nets", ICLR 2015.
        Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
    """

    requires_matching_width = True

    def __init__(
        self,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        name: str = "fitnets",
        **kwargs: Any,
    ):
        super().__init__(
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )

    def compute(self, teacher, student, labels=None):
        return _features.hint_loss_per_example(teacher, student)


class _FeatureLoss(DistillationLoss):
    """A method on the outputs of a named teacher layer and student layer."""

    def __init__(self, teacher_layer, student_layer, name=None, **kwargs):
        if not teacher_layer or not student_layer:
            raise ValueError(
                f"{type(self).__name__} needs the names of the teacher layer "
                "and the student layer to compare. Received: "
                f"teacher_layer={teacher_layer!r}, "
                f"student_layer={student_layer!r}"
            )
        super().__init__(
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )


@register_serializable
class AttentionTransfer(_FeatureLoss):
    """Attention transfer between two NHWC layers (any channel counts).

    See `tfkd.losses.attention_transfer_loss`. The paper and RepDistiller
    weigh it by 1000 against cross-entropy: use a `(method, 1000.0)` tuple.

    Args:
        teacher_layer: name of the teacher layer (NHWC output).
        student_layer: name of the student layer (NHWC output).
        p: power of the activations, fixed when the step is traced (not a
            schedulable variable). Defaults to `2`.
        name: name of the loss. Defaults to `"attention_transfer"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.losses.AttentionTransfer("teacher_block", "student_block")
    """

    feature_rank = 4

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        p: float = 2,
        name: str = "attention_transfer",
        **kwargs: Any,
    ):
        super().__init__(teacher_layer, student_layer, name=name, **kwargs)
        self.p = check_positive("p", p)

    def compute(self, teacher, student, labels=None):
        return _features.attention_transfer_loss_per_example(
            teacher, student, p=self.p
        )

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@register_serializable
class SimilarityPreserving(_FeatureLoss):
    """Similarity-preserving KD on two layers; batch-relational.

    See `tfkd.losses.similarity_preserving_loss`. The paper weighs it by
    3000: use a `(method, 3000.0)` tuple.

    Args:
        teacher_layer: name of the teacher layer.
        student_layer: name of the student layer (any width).
        name: name of the loss. Defaults to `"similarity_preserving"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.losses.SimilarityPreserving("teacher_block", "student_block")
    """

    batch_relational = True

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        name: str = "similarity_preserving",
        **kwargs: Any,
    ):
        super().__init__(teacher_layer, student_layer, name=name, **kwargs)

    def compute(self, teacher, student, labels=None):
        return _features.similarity_preserving_loss(teacher, student)


@register_serializable
class RKD(_FeatureLoss):
    """Relational KD (distance and angle) on two layers; batch-relational.

    See `tfkd.losses.rkd_loss`.

    Args:
        teacher_layer: name of the teacher layer (an embedding).
        student_layer: name of the student layer (any width).
        distance_weight: weight of the distance term. Defaults to `25.0`.
        angle_weight: weight of the angle term. Defaults to `50.0`.
        name: name of the loss. Defaults to `"rkd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.losses.RKD("teacher_embedding", "student_embedding")
    """

    batch_relational = True
    _hyperparameters = ("distance_weight", "angle_weight")
    _may_be_zero = ("distance_weight", "angle_weight")

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        name: str = "rkd",
        **kwargs: Any,
    ):
        super().__init__(teacher_layer, student_layer, name=name, **kwargs)
        self._set_hyperparameters(
            distance_weight=distance_weight, angle_weight=angle_weight
        )

    def compute(self, teacher, student, labels=None):
        return _features.rkd_loss(
            teacher,
            student,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
        )


@register_serializable
class PKT(_FeatureLoss):
    """Probabilistic knowledge transfer on two layers; batch-relational.

    See `tfkd.losses.pkt_loss`.

    Args:
        teacher_layer: name of the teacher layer (an embedding).
        student_layer: name of the student layer (any width).
        name: name of the loss. Defaults to `"pkt"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.losses.PKT("teacher_embedding", "student_embedding")
    """

    batch_relational = True

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        name: str = "pkt",
        **kwargs: Any,
    ):
        super().__init__(teacher_layer, student_layer, name=name, **kwargs)

    def compute(self, teacher, student, labels=None):
        return _features.pkt_loss(teacher, student)
