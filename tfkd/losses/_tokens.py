"""Token-level divergences of language-model distillation, pure TensorFlow.

Every function takes the teacher first and the student second, computes in
float32 from log-softmaxes whatever the inputs' dtype, and compares, at
each position, the teacher's next-token distribution `p` with the
student's `q`:

```
forward KL (KD)             KL(p || q)          = sum_v p (log p - log q)
reverse KL (MiniLLM)        KL(q || p)
generalized JSD (GKD)       beta KL(p || m) + (1 - beta) KL(q || m),
                            m = beta p + (1 - beta) q
skew KL (DistiLLM)          KL(p || alpha p + (1 - alpha) q)
skew reverse KL (DistiLLM)  KL(q || (1 - alpha) p + alpha q)
total variation (TVD)       1/2 sum_v |p - q|
```

Logits are `(batch, seq, vocab)` (any `(batch, ..., vocab)` works). The
public functions return the mean over the real tokens (a `mask` of shape
`(batch, seq)`, 1 for real tokens and 0 for padding), per token as the
papers average (TRL's GKD, DistiLLM, MiniLLM: the sum over real tokens
divided by their number, not a mean of per-sequence means). The wrapper
classes return the per-position values, `(batch, seq)`, which
`tfkd.Distiller` weighs by the padding mask that keras-hub's preprocessors
give as sample weights.

The teacher may also be a top-k teacher cache entry: a dict with
`"top_k_values"` (the `k` largest logits), `"top_k_indices"` (their token
ids) and `"log_normalizer"` (`logsumexp` of all the teacher's logits, at
temperature 1); see `tfkd.cache_teacher_outputs(..., top_k=k)`. The
divergences are then computed over `k + 1` buckets: the teacher's top-k
tokens, with their exact probabilities, and one bucket for the rest of the
vocabulary, holding the teacher's remaining mass `1 - sum_topk p` and the
student's `1 - sum_topk q` (its probabilities at the teacher's top-k ids).
This is exact for the top-k tokens and merges the tail into one outcome,
which can only lower a divergence (the data-processing inequality): the
tail's own shape is not learnt. At a temperature `T != 1` the teacher's
tempered tail mass is estimated by spreading its tail mass evenly over the
`vocab - k` other tokens (the stored normaliser is at `T = 1`). A cache
made with `tail_samples=m` also holds `"tail_ids"`, ids drawn from the
teacher's tail: the forward KL at `T = 1` then takes an unbiased estimate
of its full gradient from them (`tfkd.losses._token_top_k`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfkd.losses import _checks
from tfkd.losses._common import float32 as _float32
from tfkd.losses._token_top_k import TAIL_IDS_KEY
from tfkd.losses._token_top_k import _is_top_k
from tfkd.losses._token_top_k import _kl
from tfkd.losses._token_top_k import _tail_sampled_kl
from tfkd.losses._token_top_k import _top_k_log_probs


def _log_probs(function, teacher, student, temperature):
    """`(log p, log q)`, float32, over the last axis (vocab or buckets)."""
    temperature = tf.cast(temperature, tf.float32)
    if _is_top_k(teacher):
        return _top_k_log_probs(teacher, student, temperature)
    teacher, student = _float32(teacher, student)
    _checks.check_logits(function, teacher, student)
    return (
        tf.nn.log_softmax(teacher / temperature),
        tf.nn.log_softmax(student / temperature),
    )


def _log_mixture(log_a, log_b, weight_a):
    """`log(w a + (1 - w) b)` for `0 < w < 1`, stable in log space."""
    x = log_a + math.log(weight_a)
    y = log_b + math.log1p(-weight_a)
    high = tf.maximum(x, y)
    return high + tf.math.log1p(tf.exp(-tf.abs(x - y)))


def check_fraction(name, value, *, open_low=False):
    """Validates a float in `[0, 1]` (or `(0, 1]`); returns it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a number in "
            f"[0, 1]. Received: {name}={value!r}"
        ) from None
    low_ok = number > 0 if open_low else number >= 0
    if not (low_ok and number <= 1):
        low = "(0" if open_low else "[0"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a number in "
            f"{low}, 1]. Received: {name}={value!r}"
        )
    return number


# Per-token values, shape `logits.shape[:-1]`.


@tf.custom_gradient
def _fused_forward_kl(teacher, student, temperature):
    """`T^2 KL(softmax(t/T) || softmax(s/T))` over the last axis, float32,
    with its gradients written out: `T (q - p)` for the student and
    `T p ((log p - log q) - KL)` for the teacher (pruned from a graph that
    does not use it). Autodiff through the log-softmaxes keeps more
    `(..., vocab)` intermediates and makes several more passes over them:
    at a vocabulary of 8,192 it took ~1.7x this step under XLA, ~1.15x
    without (`benchmarks/lm.py --step_cost_vocabulary`)."""
    log_p = tf.nn.log_softmax(teacher / temperature)
    log_q = tf.nn.log_softmax(student / temperature)
    p = tf.exp(log_p)
    gap = log_p - log_q
    kl = tf.reduce_sum(p * gap, axis=-1)
    value = tf.square(temperature) * kl

    def gradient(upstream):
        scale = upstream[..., None] * temperature
        d_student = scale * (tf.exp(log_q) - p)
        d_teacher = scale * p * (gap - kl[..., None])
        return d_teacher, d_student, None

    return value, gradient


def forward_kl_per_token(teacher, student, *, temperature=1.0):
    """`T^2 * KL(p_T || q_T)` per position; see `forward_kl_loss`."""
    temperature = tf.cast(temperature, tf.float32)
    if not _is_top_k(teacher):
        teacher, student = _float32(teacher, student)
        _checks.check_logits("forward_kl_loss", teacher, student)
        return _fused_forward_kl(teacher, student, temperature)

    def buckets():
        log_p, log_q = _log_probs(
            "forward_kl_loss", teacher, student, temperature
        )
        return tf.square(temperature) * _kl(log_p, log_q)

    if TAIL_IDS_KEY not in teacher:
        return buckets()
    # Tail samples are drawn at temperature 1: used there only.
    (sampled_student,) = _float32(student)
    return tf.cond(
        tf.equal(temperature, 1.0),
        lambda: _tail_sampled_kl(
            tf.cast(teacher["top_k_values"], tf.float32),
            tf.cast(teacher["top_k_indices"], tf.int32),
            tf.cast(teacher["log_normalizer"], tf.float32),
            tf.cast(teacher[TAIL_IDS_KEY], tf.int32),
            sampled_student,
        ),
        buckets,
    )


def reverse_kl_per_token(teacher, student):
    """`KL(q || p)` per position; see `reverse_kl_loss`."""
    log_p, log_q = _log_probs("reverse_kl_loss", teacher, student, 1.0)
    return _kl(log_q, log_p)


def generalized_jsd_per_token(teacher, student, *, beta=0.5, temperature=1.0):
    """GKD's generalized JSD per position; see `generalized_jsd_loss`."""
    beta = check_fraction("beta", beta)
    log_p, log_q = _log_probs(
        "generalized_jsd_loss", teacher, student, temperature
    )
    if beta == 0.0:
        return _kl(log_p, log_q)
    if beta == 1.0:
        return _kl(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def skew_kl_per_token(teacher, student, *, alpha=0.1):
    """DistiLLM's skew KL per position; see `skew_kl_loss`."""
    alpha = check_fraction("alpha", alpha)
    log_p, log_q = _log_probs("skew_kl_loss", teacher, student, 1.0)
    if alpha == 0.0:
        return _kl(log_p, log_q)
    if alpha == 1.0:
        return tf.zeros_like(log_p[..., 0])
    return _kl(log_p, _log_mixture(log_p, log_q, alpha))


def skew_reverse_kl_per_token(teacher, student, *, alpha=0.1):
    """DistiLLM's skew reverse KL per position; see
    `skew_reverse_kl_loss`."""
    alpha = check_fraction("alpha", alpha)
    log_p, log_q = _log_probs("skew_reverse_kl_loss", teacher, student, 1.0)
    if alpha == 0.0:
        return _kl(log_q, log_p)
    if alpha == 1.0:
        return tf.zeros_like(log_p[..., 0])
    return _kl(log_q, _log_mixture(log_q, log_p, alpha))


def tvd_per_token(teacher, student):
    """Total variation distance per position; see `tvd_loss`."""
    log_p, log_q = _log_probs("tvd_loss", teacher, student, 1.0)
    return 0.5 * tf.reduce_sum(tf.abs(tf.exp(log_p) - tf.exp(log_q)), -1)


def masked_token_mean(values, mask=None):
    """The mean of per-position `values` over the positions where `mask`
    is nonzero (weighted by `mask`); the plain mean without a mask; 0 for
    an all-zero mask."""
    values = tf.cast(values, tf.float32)
    if mask is None:
        return tf.reduce_mean(values)
    mask = tf.cast(mask, tf.float32)
    if mask.shape.rank is not None and mask.shape.rank > values.shape.rank:
        mask = tf.squeeze(mask, axis=-1)
    mask = tf.broadcast_to(mask, tf.shape(values))
    return tf.math.divide_no_nan(
        tf.reduce_sum(values * mask), tf.reduce_sum(mask)
    )


_SHARED_DOC = """
    Computed in float32 from log-softmaxes (finite for any finite logits,
    float16 and bfloat16 inputs included). `teacher_logits` may be a top-k
    cache entry (see `tfkd.losses` module docs: `k + 1` buckets, the
    teacher's tail mass as one bucket).

    Args:
        teacher_logits: `(batch, seq, vocab)` teacher logits (or any
            `(batch, ..., vocab)`), or a top-k dict.
        student_logits: student logits of the same shape.
        mask: `(batch, seq)` weights, 1 for real tokens and 0 for padding
            (keras-hub's `padding_mask`). Defaults to `None` (every
            position).

    Returns:
        Scalar float32: the mean over the real tokens (per token, as the
        papers average; not a mean of per-sequence means).
"""


def forward_kl_loss(
    teacher_logits, student_logits, *, temperature=1.0, mask=None
):
    return masked_token_mean(
        forward_kl_per_token(
            teacher_logits, student_logits, temperature=temperature
        ),
        mask,
    )


forward_kl_loss.__doc__ = (
    """Token-level forward KL (word-level KD): `T^2 * KL(p_T || q_T)`.

    `p_T = softmax(t / T)`, `q_T = softmax(s / T)` at each position; at the
    default `T = 1` the plain KL of the next-token distributions, whose
    gradient is that of the teacher-weighted cross-entropy
    (`-sum p log q`, what DistiLLM's code computes: the values differ by the
    teacher's entropy, a constant). `temperature` multiplies by `T^2` as in
    Hinton et al. 2015.
"""
    + _SHARED_DOC
)


def reverse_kl_loss(teacher_logits, student_logits, *, mask=None):
    return masked_token_mean(
        reverse_kl_per_token(teacher_logits, student_logits), mask
    )


reverse_kl_loss.__doc__ = (
    """Token-level reverse KL `KL(q || p)` (MiniLLM, Gu et al. 2024).

    Mode-seeking: the student puts its mass where the teacher has much,
    instead of spreading over all the teacher's tokens. MiniLLM optimises
    the sequence-level reverse KL with policy gradients on student
    samples; this is its per-token form on the data given (as DistiLLM's
    `reverse_kl`).
"""
    + _SHARED_DOC
)


def generalized_jsd_loss(
    teacher_logits, student_logits, *, beta=0.5, temperature=1.0, mask=None
):
    return masked_token_mean(
        generalized_jsd_per_token(
            teacher_logits, student_logits, beta=beta, temperature=temperature
        ),
        mask,
    )


generalized_jsd_loss.__doc__ = (
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024).

    ```
    m = beta p + (1 - beta) q
    JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m)
    ```

    with `p`, `q` the softmaxes of `t / T`, `s / T` (no `T^2` factor), as
    TRL's `GKDTrainer.generalized_jsd_loss`; like it, `beta = 0` is the
    forward KL `KL(p || q)` and `beta = 1` the reverse KL `KL(q || p)`.
    GKD trains on student-generated sequences as well; this is the
    divergence, applied to whatever sequences the data holds.

    `beta` in `[0, 1]` (default 0.5), `temperature > 0` (default 1).
"""
    + _SHARED_DOC
)


def skew_kl_loss(teacher_logits, student_logits, *, alpha=0.1, mask=None):
    return masked_token_mean(
        skew_kl_per_token(teacher_logits, student_logits, alpha=alpha), mask
    )


skew_kl_loss.__doc__ = (
    """Skew KL of DistiLLM (Ko et al. 2024): `KL(p || alpha p + (1-alpha) q)`.

    The student's distribution is mixed with the teacher's, which bounds
    the divergence and its gradient where `q` is near 0. `alpha` in
    `[0, 1]` (default 0.1, the paper's). DistiLLM's code computes the
    cross-entropy `-sum p log m`; this is the KL (the value differs by the
    teacher's entropy, the gradient is the same).
"""
    + _SHARED_DOC
)


def skew_reverse_kl_loss(
    teacher_logits, student_logits, *, alpha=0.1, mask=None
):
    return masked_token_mean(
        skew_reverse_kl_per_token(teacher_logits, student_logits, alpha=alpha),
        mask,
    )


skew_reverse_kl_loss.__doc__ = (
    """Skew reverse KL of DistiLLM: `KL(q || (1 - alpha) p + alpha q)`.

    As in DistiLLM's `skewed_reverse_kl`. `alpha` in `[0, 1]` (default
    0.1).
"""
    + _SHARED_DOC
)


def tvd_loss(teacher_logits, student_logits, *, mask=None):
    return masked_token_mean(
        tvd_per_token(teacher_logits, student_logits), mask
    )


tvd_loss.__doc__ = (
    """Total variation distance `1/2 sum_v |p - q|`, in `[0, 1]`.

    Bounded, symmetric; used as a token-level distillation objective by
    Wen et al. 2023 (f-divergence minimisation for sequence-level KD).
"""
    + _SHARED_DOC
)
