"""Keras wrappers of the token-level divergences (`tfkd.losses._tokens`).

They return per-position values `(batch, seq)`, which `tfkd.Distiller`
weighs by the padding mask (keras-hub's preprocessors give it as sample
weights) and sums over the real tokens.
"""

from __future__ import annotations

from tfkd._keras import register_serializable
from tfkd.losses._base import DistillationLoss
from tfkd.losses._tokens import check_fraction
from tfkd.losses._tokens import forward_kl_per_token
from tfkd.losses._tokens import generalized_jsd_per_token
from tfkd.losses._tokens import reverse_kl_per_token
from tfkd.losses._tokens import skew_kl_per_token
from tfkd.losses._tokens import skew_reverse_kl_per_token
from tfkd.losses._tokens import tvd_per_token


class _TokenDivergence(DistillationLoss):
    """A token-level divergence: `compute` returns `(batch, seq)` values.

    The `tfkd.Distiller` weighs them by the per-position sample weights
    (keras-hub's `padding_mask`), so padded positions count for nothing,
    and divides the sum by the number of positions of the batch (Keras'
    `"sum_over_batch_size"`): every real token weighs the same, whatever
    the length of its sequence. The functions (`forward_kl_loss`, ...)
    divide by the number of real tokens instead, as the papers do.
    """

    needs_all_logits = False
    reads_class_logits = True
    # From a top-k cache (`tfkd.cache_teacher_outputs(..., top_k=k)`), the
    # Distiller passes the top-k dict (values, ids, log-normalizer): k + 1
    # buckets, the teacher's tail mass as one.
    accepts_top_k = True
    _fractions = ()

    def _set_fractions(self, **values):
        for name, value in values.items():
            setattr(self, name, check_fraction(name, value))

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._fractions})
        return config


@register_serializable
class ForwardKL(_TokenDivergence):
    """Token-level forward KL (KD); see `tfkd.losses.forward_kl_loss`.

    Args:
        temperature: `T > 0`; the loss is `T^2 * KL(p_T || q_T)`. Defaults
            to `1.0`. A variable that schedules may change.
        name: Defaults to `"forward_kl"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Example:
        >>> tfkd.Distiller(teacher_lm, student_lm,
        ...                distillation_loss=tfkd.losses.ForwardKL())
    """

    _hyperparameters = ("temperature",)

    def __init__(self, temperature=1.0, name="forward_kl", **kwargs):
        super().__init__(name=name, **kwargs)
        self._set_hyperparameters(temperature=temperature)

    def compute(self, teacher, student, labels=None):
        return forward_kl_per_token(
            teacher, student, temperature=self.temperature
        )


@register_serializable
class ReverseKL(_TokenDivergence):
    """Token-level reverse KL (MiniLLM); see `tfkd.losses.reverse_kl_loss`.

    Args:
        name: Defaults to `"reverse_kl"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.
    """

    def __init__(self, name="reverse_kl", **kwargs):
        super().__init__(name=name, **kwargs)

    def compute(self, teacher, student, labels=None):
        return reverse_kl_per_token(teacher, student)


@register_serializable
class GeneralizedJSD(_TokenDivergence):
    """GKD's generalized JSD; see `tfkd.losses.generalized_jsd_loss`.

    Args:
        beta: mixture weight in `[0, 1]`: 0 is the forward KL, 1 the
            reverse KL (TRL's convention). Defaults to `0.5`.
        temperature: `T > 0` (no `T^2` factor). Defaults to `1.0`.
        name: Defaults to `"generalized_jsd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.

    Raises:
        ValueError: `beta` outside `[0, 1]`, or `temperature <= 0`.
    """

    _hyperparameters = ("temperature",)
    _fractions = ("beta",)

    def __init__(
        self, beta=0.5, temperature=1.0, name="generalized_jsd", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self._set_fractions(beta=beta)
        self._set_hyperparameters(temperature=temperature)

    def compute(self, teacher, student, labels=None):
        return generalized_jsd_per_token(
            teacher, student, beta=self.beta, temperature=self.temperature
        )


@register_serializable
class SkewKL(_TokenDivergence):
    """DistiLLM's skew KL; see `tfkd.losses.skew_kl_loss`.

    Args:
        alpha: skew in `[0, 1]`. Defaults to `0.1`.
        name: Defaults to `"skew_kl"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.
    """

    _fractions = ("alpha",)

    def __init__(self, alpha=0.1, name="skew_kl", **kwargs):
        super().__init__(name=name, **kwargs)
        self._set_fractions(alpha=alpha)

    def compute(self, teacher, student, labels=None):
        return skew_kl_per_token(teacher, student, alpha=self.alpha)


@register_serializable
class SkewReverseKL(_TokenDivergence):
    """DistiLLM's skew reverse KL; see `tfkd.losses.skew_reverse_kl_loss`.

    Args:
        alpha: skew in `[0, 1]`. Defaults to `0.1`.
        name: Defaults to `"skew_reverse_kl"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.
    """

    _fractions = ("alpha",)

    def __init__(self, alpha=0.1, name="skew_reverse_kl", **kwargs):
        super().__init__(name=name, **kwargs)
        self._set_fractions(alpha=alpha)

    def compute(self, teacher, student, labels=None):
        return skew_reverse_kl_per_token(teacher, student, alpha=self.alpha)


@register_serializable
class TVD(_TokenDivergence):
    """Token-level total variation distance; see `tfkd.losses.tvd_loss`.

    Args:
        name: Defaults to `"tvd"`.
        **kwargs: forwarded to `tfkd.losses.DistillationLoss`.
    """

    def __init__(self, name="tvd", **kwargs):
        super().__init__(name=name, **kwargs)

    def compute(self, teacher, student, labels=None):
        return tvd_per_token(teacher, student)
