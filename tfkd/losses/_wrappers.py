"""Keras wrappers of the loss functions, usable in `tfkd.Distiller`."""

from tfkd._keras import register_serializable
from tfkd.losses import _functional as F
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
        return F.kd_loss_per_example(
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
