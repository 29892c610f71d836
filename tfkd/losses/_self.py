"""Self-distillation losses as pure TensorFlow functions.

Teacher-free KD (Yuan et al. 2020), progressive self-knowledge
distillation (PS-KD, Kim et al. 2021) and the terms of Be Your Own Teacher
(BYOT, Zhang et al. 2019). As the other losses: the target (or the teacher)
first, the student second, float32 whatever the inputs' dtype,
log-softmax throughout; the `_per_example` variants return one value per
example, the others the batch mean.
"""

from __future__ import annotations

import tensorflow as tf

from tfkd.losses import _checks
from tfkd.losses._common import float32 as _float32


def _check_probability(name, value):
    """`value` in (0, 1), as a Python float (a tensor is taken as given)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value
    number = float(value)
    if not 0.0 < number < 1.0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a probability in "
            f"(0, 1). Received: {name}={value!r}"
        )
    return number


def virtual_teacher_log_probs(labels, logits, correct_prob, temperature):
    """Log-probabilities of Tf-KD's virtual teacher, the logits' shape.

    `u[c] = a` on the true class and `(1 - a) / (K - 1)` on the others,
    then `log softmax(u / T)`, as the official code (which applies the
    softmax to these probabilities, not to logits).
    """
    target = _checks.target_one_hot("teacher_free_loss", labels, logits)
    classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    correct_prob = tf.cast(correct_prob, tf.float32)
    other = (1.0 - correct_prob) / (classes - 1.0)
    u = target * correct_prob + (1.0 - target) * other
    return tf.nn.log_softmax(u / tf.cast(temperature, tf.float32), axis=-1)


def teacher_free_loss_per_example(
    labels,
    student_logits,
    *,
    correct_prob=0.99,
    temperature=20.0,
    multiplier=1.0,
):
    """Per-example Tf-KD regularizer, shape `logits.shape[:-1]`; see
    `teacher_free_loss`."""
    (student_logits,) = _float32(student_logits)
    _checks.check_logits("teacher_free_loss", student_logits, student_logits)
    _check_probability("correct_prob", correct_prob)
    log_q = virtual_teacher_log_probs(
        labels, student_logits, correct_prob, temperature
    )
    log_p = tf.nn.log_softmax(student_logits, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_q) * (log_q - log_p), axis=-1)
    classes = tf.cast(tf.shape(student_logits)[-1], tf.float32)
    return tf.cast(multiplier, tf.float32) * kl / classes


def teacher_free_loss(
    labels: tf.Tensor,
    student_logits: tf.Tensor,
    *,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    multiplier: float = 1.0,
) -> tf.Tensor:
    """Teacher-free KD's "virtual teacher" regularizer (Tf-KD_reg).

    A hand-made teacher puts probability `a` on the true class and spreads
    `1 - a` uniformly over the `K - 1` others; its distribution is softened
    at temperature `T`, and the student's (untempered) log-softmax is
    pulled towards it:

    ```
    u[c] = a if c == y else (1 - a) / (K - 1)
    q = softmax(u / T),  log p = log_softmax(s)
    loss = multiplier * KL(q || p) / K                      (mean over batch)
    ```

    As the authors' `loss_kd_regularization`: `nn.KLDivLoss()` averages
    over batch and classes, hence the `/ K`, and the softmax is taken of
    the probabilities `u` themselves. Their settings: `a = 0.99`,
    `T = 20` to `40`, `multiplier` 1 to 100, weighed against cross-entropy
    by `reg_alpha` 0.1 to 0.95 (`tfkd.Distiller(alpha=1 - reg_alpha)`).

    Args:
        labels: sparse class indices `(batch,)` or `(batch, 1)`, or one-hot
            labels `(batch, classes)` (their argmax is the true class).
        student_logits: `(batch, classes)` student logits.
        correct_prob: `a`, the virtual teacher's probability of the true
            class, in (0, 1). Defaults to `0.99`.
        temperature: `T > 0`. Defaults to `20.0`.
        multiplier: scale of the term. Defaults to `1.0`.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: `correct_prob` outside (0, 1), or labels whose shape
            fits neither sparse nor one-hot labels.

    Example:
        >>> tfkd.losses.teacher_free_loss(labels, logits, temperature=20.0)

    References:
        Yuan, Tay, Li, Wang, Feng. "Revisiting Knowledge Distillation via
        Label Smoothing Regularization", CVPR 2020. arXiv:1909.11723.
    """
    return tf.reduce_mean(
        teacher_free_loss_per_example(
            labels,
            student_logits,
            correct_prob=correct_prob,
            temperature=temperature,
            multiplier=multiplier,
        )
    )


def pskd_loss_per_example(teacher_logits, student_logits, labels, *, alpha):
    """Per-example PS-KD cross-entropy, shape `logits.shape[:-1]`; see
    `pskd_loss`."""
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    _checks.check_logits("pskd_loss", teacher_logits, student_logits)
    target = _checks.target_one_hot("pskd_loss", labels, student_logits)
    alpha = tf.cast(alpha, tf.float32)
    soft = (1.0 - alpha) * target + alpha * tf.nn.softmax(teacher_logits)
    log_p = tf.nn.log_softmax(student_logits, axis=-1)
    return -tf.reduce_sum(tf.stop_gradient(soft) * log_p, axis=-1)


def pskd_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    labels: tf.Tensor,
    *,
    alpha: float = 0.8,
) -> tf.Tensor:
    """Progressive self-knowledge distillation's soft-target cross-entropy.

    The targets mix the labels with the model's own past predictions
    `softmax(t)` (PS-KD: the previous epoch's), by a weight `alpha_t`
    that grows over training (`tfkd.callbacks.PSKDSchedule`):

    ```
    target = (1 - alpha_t) * onehot(y) + alpha_t * softmax(t)
    loss = -sum_c target[c] * log_softmax(s)[c]             (mean over batch)
    ```

    As the authors' `Custom_CrossEntropy_PSKD`. The target is constant
    (no gradient flows into `t`). It replaces the hard-label
    cross-entropy: in `tfkd.Distiller`, use `alpha=0.0`.

    Args:
        teacher_logits: `(batch, classes)` past logits of the model.
        student_logits: `(batch, classes)` current logits.
        labels: sparse class indices `(batch,)` or `(batch, 1)`, or one-hot
            labels `(batch, classes)`.
        alpha: `alpha_t`, the weight of the past predictions, in [0, 1].
            Defaults to `0.8` (the paper's `alpha_T`).

    Returns:
        A float32 scalar.

    Example:
        >>> tfkd.losses.pskd_loss(past_logits, logits, labels, alpha=0.4)

    References:
        Kim, Ji, Yoon, Hwang. "Self-Knowledge Distillation with Progressive
        Refinement of Targets", ICCV 2021. arXiv:2006.12000.
    """
    return tf.reduce_mean(
        pskd_loss_per_example(
            teacher_logits, student_logits, labels, alpha=alpha
        )
    )


def byot_kd_loss_per_example(deep_logits, shallow_logits, *, temperature):
    """Per-example BYOT KD term, shape `logits.shape[:-1]`; see
    `byot_kd_loss`."""
    deep_logits, shallow_logits = _float32(deep_logits, shallow_logits)
    _checks.check_logits("byot_kd_loss", deep_logits, shallow_logits)
    temperature = tf.cast(temperature, tf.float32)
    target = tf.stop_gradient(tf.nn.softmax(deep_logits / temperature))
    log_p = tf.nn.log_softmax(shallow_logits / temperature, axis=-1)
    return -tf.square(temperature) * tf.reduce_sum(target * log_p, axis=-1)


def byot_kd_loss(
    deep_logits: tf.Tensor,
    shallow_logits: tf.Tensor,
    *,
    temperature: float = 3.0,
) -> tf.Tensor:
    """Be Your Own Teacher's KD term: the deepest head teaches a shallow one.

    ```
    loss = -T^2 * sum_c softmax(d / T)[c] * log_softmax(s / T)[c]
    ```

    (mean over batch), the cross-entropy of the authors'
    `kd_loss_function`: it differs from KD's KL by the deep head's entropy,
    a constant for the shallow head. No gradient flows into `d`.

    Args:
        deep_logits: `(batch, classes)` logits of the deepest head.
        shallow_logits: `(batch, classes)` logits of a shallow head.
        temperature: `T > 0`. Defaults to `3.0` (the authors').

    Returns:
        A float32 scalar.

    References:
        Zhang, Song, Gao, Chen, Bao, Ma. "Be Your Own Teacher: Improve the
        Performance of Convolutional Neural Networks via Self
        Distillation", ICCV 2019. arXiv:1905.08094.
    """
    return tf.reduce_mean(
        byot_kd_loss_per_example(
            deep_logits, shallow_logits, temperature=temperature
        )
    )


def byot_feature_loss_per_example(deep_features, shallow_features):
    """Per-example BYOT feature hint, shape `(batch,)`; see
    `byot_feature_loss`."""
    deep, shallow = _float32(deep_features, shallow_features)
    _checks.check_features("byot_feature_loss", deep, shallow, same_shape=True)
    deep = tf.stop_gradient(deep)
    mask = tf.cast(tf.logical_or(shallow > 0, deep > 0), tf.float32)
    squared = tf.square(shallow - deep) * mask
    rank = squared.shape.rank
    return tf.reduce_sum(squared, axis=list(range(1, rank)))


def byot_feature_loss(
    deep_features: tf.Tensor, shallow_features: tf.Tensor
) -> tf.Tensor:
    """Be Your Own Teacher's feature hint between two heads' features.

    ```
    loss = sum_i (f_s[i] - f_d[i])^2 * [f_s[i] > 0 or f_d[i] > 0]
    ```

    summed over the features of each example, then averaged over the
    batch (the authors' `feature_loss_function` sums over the batch too,
    with `beta = 1e-6`: here multiply by the batch size to match). Only
    elements where either feature is positive count (ReLU features).
    No gradient flows into `f_d`.

    Args:
        deep_features: `(batch, ...)` features of the deepest head.
        shallow_features: a shallow head's features, the same shape.

    Returns:
        A float32 scalar.
    """
    return tf.reduce_mean(
        byot_feature_loss_per_example(deep_features, shallow_features)
    )
