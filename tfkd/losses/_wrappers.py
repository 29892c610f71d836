"""Keras wrappers of the loss functions, usable in `tfkd.Distiller`."""

from tfkd._keras import register_serializable
from tfkd.losses import _features
from tfkd.losses import _logits
from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import check_positive
from tfkd.losses._base import hyperparameter


@register_serializable
class KD(DistillationLoss):
    """Hinton KD on logits: `T^2 * KL(softmax(t/T) || softmax(s/T))`.

    See `tfkd.losses.kd_loss` for the formula. `temperature` is a variable:
    `tfkd.callbacks` schedules can change it during `fit` without retracing.

    Args:
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        standardize: logit standardization (Sun et al. 2024). Defaults to
            `False`.
        name: name of the loss. Defaults to `"kd"`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     teacher, student, distillation_loss=tfkd.losses.KD(temperature=4))
    """

    def __init__(self, temperature=4.0, standardize=False, name="kd"):
        super().__init__(name=name)
        self.temperature = hyperparameter(
            "temperature", check_positive("temperature", temperature)
        )
        self.standardize = bool(standardize)

    def compute(self, teacher, student, labels=None):
        return _logits.kd_loss_per_example(
            teacher,
            student,
            temperature=self.temperature,
            standardize=self.standardize,
        )

    def get_config(self):
        return {
            "temperature": float(self.temperature.numpy()),
            "standardize": self.standardize,
            "name": self.name,
        }


def _hyperparameters(loss, **values):
    """Sets each value as a validated, schedulable float32 variable."""
    for name, value in values.items():
        setattr(loss, name, hyperparameter(name, check_positive(name, value)))


def _value(variable):
    return float(variable.numpy())


@register_serializable
class DKD(DistillationLoss):
    """Decoupled KD: `T^2 * (alpha * TCKD + beta * NCKD)`; needs labels.

    See `tfkd.losses.dkd_loss`. mdistiller warms DKD up linearly over its
    first 20 epochs: use `tfkd.callbacks.LinearWarmup(20)`.

    Args:
        alpha: TCKD weight. Defaults to `1.0`.
        beta: NCKD weight. Defaults to `8.0`.
        temperature: softening temperature. Defaults to `4.0`.
        name: name of the loss. Defaults to `"dkd"`.

    Example:
        >>> distiller = tfkd.Distiller(
        ...     teacher, student, distillation_loss=tfkd.losses.DKD(beta=8.0))
    """

    requires_labels = True

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, name="dkd"):
        super().__init__(name=name)
        check_positive("temperature", temperature)
        _hyperparameters(self, temperature=temperature)
        for key, value in (("alpha", alpha), ("beta", beta)):
            setattr(
                self,
                key,
                hyperparameter(
                    key, check_positive(key, value, allow_zero=True)
                ),
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

    def get_config(self):
        return {
            "alpha": _value(self.alpha),
            "beta": _value(self.beta),
            "temperature": _value(self.temperature),
            "name": self.name,
        }


@register_serializable
class DIST(DistillationLoss):
    """DIST inter- and intra-class Pearson relations; batch-relational.

    See `tfkd.losses.dist_loss`.

    Args:
        beta: inter-class weight. Defaults to `1.0`.
        gamma: intra-class weight. Defaults to `1.0`.
        temperature: softening temperature. Defaults to `1.0`.
        name: name of the loss. Defaults to `"dist"`.

    Example:
        >>> tfkd.Distiller(teacher, student, distillation_loss=tfkd.losses.DIST())
    """

    batch_relational = True

    def __init__(self, beta=1.0, gamma=1.0, temperature=1.0, name="dist"):
        super().__init__(name=name)
        _hyperparameters(self, temperature=temperature)
        for key, value in (("beta", beta), ("gamma", gamma)):
            setattr(
                self,
                key,
                hyperparameter(
                    key, check_positive(key, value, allow_zero=True)
                ),
            )

    def compute(self, teacher, student, labels=None):
        return _logits.dist_loss(
            teacher,
            student,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
        )

    def get_config(self):
        return {
            "beta": _value(self.beta),
            "gamma": _value(self.gamma),
            "temperature": _value(self.temperature),
            "name": self.name,
        }


class _FeatureLoss(DistillationLoss):
    """A method on the outputs of a named teacher layer and student layer."""

    def __init__(self, teacher_layer, student_layer, name=None):
        if not teacher_layer or not student_layer:
            raise ValueError(
                f"{type(self).__name__} needs the names of the teacher layer "
                "and the student layer to compare. Received: "
                f"teacher_layer={teacher_layer!r}, "
                f"student_layer={student_layer!r}"
            )
        super().__init__(
            teacher_layer=teacher_layer, student_layer=student_layer, name=name
        )


@register_serializable
class FitNets(_FeatureLoss):
    """FitNets hint: MSE between a teacher and a student layer's outputs.

    See `tfkd.losses.hint_loss`. When the widths differ, `tfkd.Distiller`
    trains a 1x1-conv (maps) or dense (vectors) regressor on the student's
    side; it is not part of the exported student.

    Args:
        teacher_layer: name of the teacher layer (the hint).
        student_layer: name of the student layer (the guided layer).
        name: name of the loss. Defaults to `"fitnets"`.

    Example:
        >>> tfkd.losses.FitNets("teacher_block3", "student_block2")
    """

    requires_matching_width = True

    def __init__(self, teacher_layer, student_layer, name="fitnets"):
        super().__init__(teacher_layer, student_layer, name=name)

    def compute(self, teacher, student, labels=None):
        return _features.hint_loss_per_example(teacher, student)


@register_serializable
class AttentionTransfer(_FeatureLoss):
    """Attention transfer between two NHWC layers (any channel counts).

    See `tfkd.losses.attention_transfer_loss`. The paper and RepDistiller
    weigh it by 1000 against cross-entropy: use a `(method, 1000.0)` tuple.

    Args:
        teacher_layer: name of the teacher layer (NHWC output).
        student_layer: name of the student layer (NHWC output).
        p: power of the activations. Defaults to `2`.
        name: name of the loss. Defaults to `"attention_transfer"`.

    Example:
        >>> tfkd.losses.AttentionTransfer("teacher_block", "student_block")
    """

    def __init__(
        self, teacher_layer, student_layer, p=2, name="attention_transfer"
    ):
        super().__init__(teacher_layer, student_layer, name=name)
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

    Example:
        >>> tfkd.losses.SimilarityPreserving("teacher_block", "student_block")
    """

    batch_relational = True

    def __init__(
        self, teacher_layer, student_layer, name="similarity_preserving"
    ):
        super().__init__(teacher_layer, student_layer, name=name)

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

    Example:
        >>> tfkd.losses.RKD("teacher_embedding", "student_embedding")
    """

    batch_relational = True

    def __init__(
        self,
        teacher_layer,
        student_layer,
        distance_weight=25.0,
        angle_weight=50.0,
        name="rkd",
    ):
        super().__init__(teacher_layer, student_layer, name=name)
        for key, value in (
            ("distance_weight", distance_weight),
            ("angle_weight", angle_weight),
        ):
            setattr(
                self,
                key,
                hyperparameter(
                    key, check_positive(key, value, allow_zero=True)
                ),
            )

    def compute(self, teacher, student, labels=None):
        return _features.rkd_loss(
            teacher,
            student,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "distance_weight": _value(self.distance_weight),
            "angle_weight": _value(self.angle_weight),
        }


@register_serializable
class PKT(_FeatureLoss):
    """Probabilistic knowledge transfer on two layers; batch-relational.

    See `tfkd.losses.pkt_loss`.

    Args:
        teacher_layer: name of the teacher layer (an embedding).
        student_layer: name of the student layer (any width).
        name: name of the loss. Defaults to `"pkt"`.

    Example:
        >>> tfkd.losses.PKT("teacher_embedding", "student_embedding")
    """

    batch_relational = True

    def __init__(self, teacher_layer, student_layer, name="pkt"):
        super().__init__(teacher_layer, student_layer, name=name)

    def compute(self, teacher, student, labels=None):
        return _features.pkt_loss(teacher, student)
