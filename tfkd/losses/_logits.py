"""Logit distillation losses as pure TensorFlow functions.

Every function takes the teacher's tensor first and the student's second
(Keras' `y_true, y_pred` order), computes in float32 whatever the inputs'
dtype, and returns a scalar: the mean over the batch. Logits are
`(batch, classes)`, or `(batch, ..., classes)` such as `(batch, time, vocab)`
for sequences. The `_per_example` variants return one value per example and
position, shape `logits.shape[:-1]`, so that `tfkd.Distiller` can apply
sample weights and scale by the global batch under `tf.distribute`.
"""

from __future__ import annotations

import tensorflow as tf

from tfkd.losses import _checks
from tfkd.losses import _kl
from tfkd.losses._common import float32 as _float32
from tfkd.losses._common import norm as _norm
from tfkd.losses._common import safe_sqrt as _safe_sqrt


def _standardize(logits, eps=1e-7):
    """z-scores logits along the class axis, with the unbiased std."""
    mean = tf.reduce_mean(logits, axis=-1, keepdims=True)
    centered = logits - mean
    classes = tf.cast(tf.shape(logits)[-1], logits.dtype)
    variance = tf.reduce_sum(tf.square(centered), axis=-1, keepdims=True) / (
        classes - 1.0
    )
    std = _safe_sqrt(variance)
    # A row of (nearly) equal logits has no scale: its z-scores are 0. Divided
    # by eps instead, its gradient would be ~1/eps and wreck the student in
    # one step (a zero input through a zero-bias head).
    scale = 1.0 + tf.reduce_max(tf.abs(logits), axis=-1, keepdims=True)
    flat = std <= 1e-6 * scale
    return tf.where(flat, 0.0, centered / (tf.where(flat, 1.0, std) + eps))


def kd_loss_per_example(
    teacher_logits,
    student_logits,
    *,
    temperature=4.0,
    standardize=False,
    activation="softmax",
):
    """Per-example KD, shape `logits.shape[:-1]`; see `kd_loss`."""
    _checks.check_activation(activation)
    if standardize and activation == "sigmoid":
        raise ValueError(
            "kd_loss: `standardize=True` (logit standardization) z-scores "
            "the logits of one softmax; it does not apply to independent "
            'sigmoids. Use activation="softmax", or standardize=False.'
        )
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    _checks.check_logits(
        "kd_loss",
        teacher_logits,
        student_logits,
        softmax=activation == "softmax",
    )
    temperature = tf.cast(temperature, tf.float32)
    if activation == "sigmoid":
        per_logit = _kl.sigmoid_kl(teacher_logits, student_logits, temperature)
        return tf.reduce_mean(per_logit, axis=-1)
    if standardize:
        teacher_logits = _standardize(teacher_logits)
        student_logits = _standardize(student_logits)
    return _kl.softmax_kl(teacher_logits, student_logits, temperature)


def kd_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    *,
    temperature: float | tf.Variable = 4.0,
    standardize: bool = False,
    activation: str = "softmax",
) -> tf.Tensor:
    """Hinton knowledge distillation: temperature-softened KL divergence.

    With `activation="softmax"` (one class per example):

    ```
    p_t = softmax(t / T),  p_s = softmax(s / T)
    loss = T^2 * sum_c p_t[c] * (log p_t[c] - log p_s[c])      (mean over batch)
    ```

    With `activation="sigmoid"` (binary heads with one logit, multi-label
    heads with one independent logit per label), the tempered Bernoulli KL
    of each logit, averaged over the logits:

    ```
    p = sigmoid(t / T),  q = sigmoid(s / T)                      per logit
    loss = T^2 * mean_k [p log(p / q) + (1 - p) log((1 - p) / (1 - q))]
    ```

    The softmax of a single logit is constant, so a one-logit head needs
    `"sigmoid"`; a softmax on a last axis of size 1 raises a `ValueError`.

    Accurate to float32 rounding at any temperature: where the two
    distributions are close (high `T`, or a student that has learned), the
    KL is computed without the cancellation of its large terms (see
    `tfkd.losses._kl`), so it is never negative; where they are far apart,
    from max-shifted sums in log space (`log_sigmoid` for sigmoids), finite
    for any finite logits. With `standardize=True`, both logit vectors are
    first z-scored along the class axis (`(z - mean(z)) / (std(z) + 1e-7)`,
    unbiased std), as in logit standardization (Sun et al. 2024); there
    `temperature` is the paper's base temperature.

    Args:
        teacher_logits: `(batch, classes)` teacher logits, or
            `(batch, ..., classes)` such as `(batch, time, vocab)`.
        student_logits: student logits of the same shape.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        standardize: z-score logits before softening (softmax only).
            Defaults to `False`.
        activation: `"softmax"` or `"sigmoid"`. Defaults to `"softmax"`.

    Returns:
        Scalar float32 loss: the mean over the batch (and any axes between
        the batch and the classes).

    Raises:
        ValueError: the shapes differ, `activation` is unknown, or a softmax
            would act on a last axis of size 1.

    Example:
        >>> tfkd.losses.kd_loss(teacher_logits, student_logits, temperature=4.0)
        >>> tfkd.losses.kd_loss(t_binary, s_binary, activation="sigmoid")

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network",
        2015. arXiv:1503.02531.
        Sun, Ren, Li, Wang, Cao. "Logit Standardization in Knowledge
        Distillation", CVPR 2024.
    """
    return tf.reduce_mean(
        kd_loss_per_example(
            teacher_logits,
            student_logits,
            temperature=temperature,
            standardize=standardize,
            activation=activation,
        )
    )


def dkd_loss_per_example(
    teacher_logits,
    student_logits,
    labels,
    *,
    alpha=1.0,
    beta=8.0,
    temperature=4.0,
):
    """Per-example `alpha * TCKD + beta * NCKD`; see `dkd_loss`."""
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    _checks.check_logits("dkd_loss", teacher_logits, student_logits)
    target = _checks.target_one_hot("dkd_loss", labels, student_logits)
    temperature = tf.cast(temperature, tf.float32)
    tckd, nckd = _kl.decoupled_kl(
        teacher_logits, student_logits, target, temperature
    )
    return tf.cast(alpha, tf.float32) * tckd + tf.cast(beta, tf.float32) * nckd


def dkd_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    labels: tf.Tensor,
    *,
    alpha: float | tf.Variable = 1.0,
    beta: float | tf.Variable = 8.0,
    temperature: float | tf.Variable = 4.0,
) -> tf.Tensor:
    """Decoupled knowledge distillation: target and non-target KD.

    ```
    b = [p(target), 1 - p(target)]          binary split of softmax(z / T)
    p^ = softmax over the non-target classes of z / T
    TCKD = KL(b_t || b_s),  NCKD = KL(p^_t || p^_s)
    loss = T^2 * (alpha * TCKD + beta * NCKD)            (mean over batch)
    ```

    Matches mdistiller's `dkd_loss` (KL summed, divided by the batch size;
    the non-target distribution built by subtracting 1000 from the target
    logit), with `kd_loss`'s accuracy at any temperature: both KLs are
    computed without cancellation, so they are never negative.

    Args:
        teacher_logits: `(batch, classes)` teacher logits, or
            `(batch, ..., classes)`.
        student_logits: student logits of the same shape.
        labels: sparse class indices `(batch,)` or `(batch, 1)`, or one-hot
            (or probability) labels `(batch, classes)`, whose target is the
            argmax; for `(batch, time, classes)` logits, `(batch, time)` or
            `(batch, time, classes)`. Told apart by their static rank.
        alpha: TCKD weight. Defaults to `1.0`.
        beta: NCKD weight. Defaults to `8.0`.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.

    Returns:
        Scalar float32 loss, the mean over the batch.

    Raises:
        ValueError: the logits' shapes differ or have one class, or the
            labels' shape fits neither sparse nor one-hot labels.

    Example:
        >>> tfkd.losses.dkd_loss(t_logits, s_logits, labels, beta=8.0)

    References:
        Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation",
        CVPR 2022.
    """
    return tf.reduce_mean(
        dkd_loss_per_example(
            teacher_logits,
            student_logits,
            labels,
            alpha=alpha,
            beta=beta,
            temperature=temperature,
        )
    )


def _pearson(a, b, axis, eps=1e-8):
    """Pearson correlation along `axis`, as DIST's `pearson_correlation`."""
    a = a - tf.reduce_mean(a, axis=axis, keepdims=True)
    b = b - tf.reduce_mean(b, axis=axis, keepdims=True)
    return _cosine(a, b, axis, eps)


def _cosine(a, b, axis, eps=1e-8):
    """`a . b / (|a| |b| + eps)` along `axis`; 0 where a norm is ~0."""
    dot = tf.reduce_sum(a * b, axis=axis)
    norms = _norm(a, axis=axis) * _norm(b, axis=axis)
    # A constant vector has no correlation: 0, with a 0 gradient, rather than
    # a gradient of ~1/eps that wrecks the student in one step.
    flat = norms <= 1e-12
    return tf.where(flat, 0.0, dot / (tf.where(flat, 1.0, norms) + eps))


def _weighted_dist_terms(y_s, y_t, sample_weight):
    """DIST's `(inter, intra)` terms with one weight per row of `y_s`."""
    weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    if weights.shape[0] is not None and y_s.shape[0] is not None:
        if weights.shape[0] != y_s.shape[0]:
            raise ValueError(
                f"dist_loss: {weights.shape[0]} sample weights for "
                f"{y_s.shape[0]} examples (or positions). Pass one weight "
                "per example, or per position of sequence logits."
            )
    count = tf.cast(tf.shape(y_s)[0], tf.float32)
    inter = tf.reduce_sum(weights * (1.0 - _pearson(y_s, y_t, axis=1)))
    inter = inter / tf.maximum(count, 1.0)
    # A weighted Pearson correlation is the cosine of sqrt(w)-scaled
    # deviations from the weighted means.
    total = tf.reduce_sum(weights)
    safe_total = tf.where(total > 0.0, total, 1.0)
    root = tf.sqrt(tf.maximum(weights, 0.0))[:, None]

    def deviations(y):
        mean = tf.reduce_sum(weights[:, None] * y, axis=0) / safe_total
        return root * (y - mean)

    correlation = _cosine(deviations(y_s), deviations(y_t), axis=0)
    intra = (total / tf.maximum(count, 1.0)) * (
        1.0 - tf.reduce_mean(correlation)
    )
    weighted = tf.math.count_nonzero(weights > 0.0)
    intra = tf.where(weighted > 1, intra, 0.0)
    return inter, intra


def dist_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    *,
    beta: float | tf.Variable = 1.0,
    gamma: float | tf.Variable = 1.0,
    temperature: float | tf.Variable = 1.0,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """DIST: inter-class and intra-class Pearson relations of predictions.

    ```
    y = softmax(z / T)                                 (batch, classes)
    inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :])   each example's classes
    intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])   each class over the batch
    loss = T^2 * (beta * inter + gamma * intra)
    ```

    Batch-relational (the intra-class term spans the batch). Matches the
    official `DIST` module (Pearson with eps 1e-8). Sequence logits
    `(batch, ..., classes)` count every position as an example. With a batch
    of one, a correlation over the batch is undefined: the intra-class term
    is 0 there (and the loss is finite, with finite gradients).

    With `sample_weight` `w` (one per example or position, `n` of them),
    Keras' "sum over batch size" convention: `inter = sum_i w_i (1 -
    pearson_i) / n`, and `intra = (sum_i w_i / n) * (1 - mean_c
    pearson_w(c))`, the Pearson correlation over the batch weighted by `w`.
    Weights of 1 give the unweighted loss; an example of weight 0 (padding)
    takes no part in either term.

    Args:
        teacher_logits: `(batch, classes)` teacher logits, or
            `(batch, ..., classes)`.
        student_logits: student logits of the same shape.
        beta: inter-class weight. Defaults to `1.0`.
        gamma: intra-class weight. Defaults to `1.0`.
        temperature: softening temperature `T > 0`. Defaults to `1.0`.
        sample_weight: weights `(batch,)` or `(batch, ...)` (one per
            position of sequence logits), or `None`. Defaults to `None`.

    Returns:
        Scalar float32 loss for the batch.

    Raises:
        ValueError: the logits' shapes differ or have one class.

    Example:
        >>> tfkd.losses.dist_loss(t_logits, s_logits, temperature=4.0)

    References:
        Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger
        Teacher", NeurIPS 2022.
    """
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    _checks.check_logits("dist_loss", teacher_logits, student_logits)
    temperature = tf.cast(temperature, tf.float32)
    classes = tf.shape(student_logits)[-1]
    y_t = tf.reshape(tf.nn.softmax(teacher_logits / temperature), [-1, classes])
    y_s = tf.reshape(tf.nn.softmax(student_logits / temperature), [-1, classes])
    if sample_weight is None:
        inter = 1.0 - tf.reduce_mean(_pearson(y_s, y_t, axis=1))
        intra = 1.0 - tf.reduce_mean(_pearson(y_s, y_t, axis=0))
        intra = tf.where(tf.shape(y_s)[0] > 1, intra, 0.0)
    else:
        inter, intra = _weighted_dist_terms(y_s, y_t, sample_weight)
    square = tf.square(temperature)
    return square * (
        tf.cast(beta, tf.float32) * inter + tf.cast(gamma, tf.float32) * intra
    )
