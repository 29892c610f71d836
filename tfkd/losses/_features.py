"""Feature distillation losses as pure TensorFlow functions.

Same conventions as `_logits.py`. Feature maps are NHWC.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd.losses import _checks
from tfkd.losses._common import float32 as _float32
from tfkd.losses._common import norm as _norm


def _flatten(features):
    return tf.reshape(features, [tf.shape(features)[0], -1])


def hint_loss_per_example(teacher_features, student_features):
    """Per-example mean squared error; see `hint_loss`."""
    teacher, student = _float32(teacher_features, student_features)
    _checks.check_features("hint_loss", teacher, student, same_shape=True)
    return tf.reduce_mean(tf.square(_flatten(student - teacher)), axis=-1)


def hint_loss(
    teacher_features: tf.Tensor, student_features: tf.Tensor
) -> tf.Tensor:
    """FitNets hint: mean squared error between feature maps.

    ```
    loss = mean((f_s - f_t)^2)          over batch and all feature elements
    ```

    Shapes must match: `tfkd.Distiller` inserts a learnable 1x1-conv (or
    dense) regressor on the student's side when the widths differ. On logits,
    it is logit matching (Ba & Caruana 2014).

    Args:
        teacher_features: `(batch, ...)` teacher features, e.g. NHWC maps.
        student_features: student features of the same shape.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: the shapes differ.

    Example:
        >>> tfkd.losses.hint_loss(teacher_maps, student_maps)

    References:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for
        Thin Deep Nets", ICLR 2015.
    """
    return tf.reduce_mean(
        hint_loss_per_example(teacher_features, student_features)
    )


def _adaptive_pool_matrix(source, target):
    """`(target, source)` weights of PyTorch's `adaptive_avg_pool` on one axis.

    Output cell `i` averages inputs `floor(i * source / target)` up to
    `ceil((i + 1) * source / target)` (exclusive); the bins overlap when the
    sizes do not divide.
    """
    weights = np.zeros((target, source), np.float32)
    for i in range(target):
        begin = (i * source) // target
        end = -((-(i + 1) * source) // target)
        weights[i, begin:end] = 1.0 / (end - begin)
    return tf.constant(weights)


def _adaptive_avg_pool(maps, size):
    """PyTorch's `F.adaptive_avg_pool2d` on NHWC `maps`, to `size=(H, W)`."""
    rows = _adaptive_pool_matrix(maps.shape[1], size[0])
    columns = _adaptive_pool_matrix(maps.shape[2], size[1])
    return tf.einsum("nhwc,ih,jw->nijc", maps, rows, columns)


def _match_spatial(teacher, student):
    """Average-pools the map with the larger height to the other's size.

    As RepDistiller's `at_loss`, which compares heights and pools with
    `adaptive_avg_pool2d` (it pools to a square `(H, H)`; here to the other
    map's `(H, W)`, the same for square maps).
    """
    t_shape, s_shape = teacher.shape[1:3], student.shape[1:3]
    if None in t_shape or None in s_shape or t_shape == s_shape:
        return teacher, student
    if tuple(t_shape) > tuple(s_shape):
        return _adaptive_avg_pool(teacher, s_shape), student
    return teacher, _adaptive_avg_pool(student, t_shape)


def _check_maps(teacher, student):
    function = "attention_transfer_loss"
    _checks.check_features(function, teacher, student, same_shape=False)
    t_shape, s_shape = teacher.shape, student.shape
    if t_shape.rank is None or s_shape.rank is None:
        return
    if t_shape.rank != 4 or s_shape.rank != 4:
        reason = "needs NHWC feature maps `(batch, height, width, channels)`"
    elif None in t_shape[1:3] + s_shape[1:3] and t_shape[1:3] != s_shape[1:3]:
        reason = "needs static spatial sizes to pool the larger map"
    else:
        return
    raise ValueError(
        f"{function} {reason}. Received: teacher_features.shape="
        f"{tuple(t_shape)}, student_features.shape={tuple(s_shape)}. Tap "
        "convolutional layers with fixed input sizes."
    )


def _attention_map(features, p):
    """`normalize(mean_c(f^p))` over flattened positions, as RepDistiller."""
    maps = tf.reduce_mean(tf.pow(features, p), axis=-1)
    maps = tf.reshape(maps, [tf.shape(maps)[0], -1])
    return tf.math.l2_normalize(maps, axis=-1, epsilon=1e-24)


def attention_transfer_loss_per_example(
    teacher_features, student_features, *, p=2
):
    """Per-example attention-transfer loss; see `attention_transfer_loss`."""
    teacher, student = _float32(teacher_features, student_features)
    _check_maps(teacher, student)
    teacher, student = _match_spatial(teacher, student)
    difference = _attention_map(student, p) - _attention_map(teacher, p)
    return tf.reduce_mean(tf.square(difference), axis=-1)


def attention_transfer_loss(
    teacher_features: tf.Tensor,
    student_features: tf.Tensor,
    *,
    p: float = 2,
) -> tf.Tensor:
    """Attention transfer between NHWC feature maps.

    ```
    a(f) = normalize(mean_c f^p)     flattened over H*W, L2-normalised
    loss = mean((a(f_s) - a(f_t))^2)           over batch and positions
    ```

    Channel counts may differ. Spatial sizes may differ too (they must be
    known statically): the map with the larger height is average-pooled to
    the other's size exactly as PyTorch's `adaptive_avg_pool2d` does, with
    overlapping bins when the sizes do not divide. Matches RepDistiller's
    `Attention.at_loss` for NHWC inputs.

    Args:
        teacher_features: `(batch, H, W, C_t)` teacher feature maps.
        student_features: `(batch, H', W', C_s)` student feature maps.
        p: power of the activations. Defaults to `2`.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: the inputs are not NHWC maps with the same batch axis.

    Example:
        >>> tfkd.losses.attention_transfer_loss(teacher_maps, student_maps)

    References:
        Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving
        the Performance of Convolutional Neural Networks via Attention
        Transfer", ICLR 2017.
    """
    return tf.reduce_mean(
        attention_transfer_loss_per_example(
            teacher_features, student_features, p=p
        )
    )


def similarity_preserving_loss(
    teacher_features: tf.Tensor, student_features: tf.Tensor
) -> tf.Tensor:
    """Similarity-preserving KD: match the batch's normalised Gram matrices.

    ```
    G = normalize_rows(F F^T)        F: (batch, features) flattened
    loss = ||G_t - G_s||_F^2 / batch^2
    ```

    Batch-relational. Matches RepDistiller's `Similarity`, including its
    batch-size-dependent normaliser `1 / batch^2` (`bsz * bsz`): the rows of
    `G` have unit norm, so the value shrinks roughly as `1 / batch` and the
    paper's weight (3000) assumes batches of 64-128. A batch of one has
    `G = [[1]]` for both networks (or 0 for all-zero features): the loss is
    0 there.

    Args:
        teacher_features: `(batch, ...)` teacher features.
        student_features: `(batch, ...)` student features (any width).

    Returns:
        Scalar float32 loss for the batch.

    Raises:
        ValueError: the batch axes differ.

    Example:
        >>> tfkd.losses.similarity_preserving_loss(teacher_maps, student_maps)

    References:
        Tung, Mori. "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """
    teacher, student = _float32(teacher_features, student_features)
    _checks.check_features(
        "similarity_preserving_loss", teacher, student, same_shape=False
    )
    teacher, student = _flatten(teacher), _flatten(student)

    def gram(f):
        return tf.math.l2_normalize(
            tf.matmul(f, f, transpose_b=True), axis=1, epsilon=1e-24
        )

    batch = tf.cast(tf.shape(teacher)[0], tf.float32)
    difference = gram(teacher) - gram(student)
    return tf.reduce_sum(tf.square(difference)) / (batch * batch)


def _pairwise_distances(e, eps=1e-12):
    squared = tf.reduce_sum(tf.square(e), axis=1)
    product = tf.matmul(e, e, transpose_b=True)
    distances = squared[:, None] + squared[None, :] - 2.0 * product
    distances = tf.sqrt(tf.maximum(distances, eps))
    return distances * (1.0 - tf.eye(tf.shape(e)[0]))


def _smooth_l1(x):
    """PyTorch's `smooth_l1_loss` with beta 1, before the mean."""
    absolute = tf.abs(x)
    return tf.where(absolute < 1.0, 0.5 * tf.square(x), absolute - 0.5)


def rkd_loss(
    teacher_features: tf.Tensor,
    student_features: tf.Tensor,
    *,
    distance_weight: float | tf.Variable = 25.0,
    angle_weight: float | tf.Variable = 50.0,
) -> tf.Tensor:
    """Relational KD: distances and angles between the batch's embeddings.

    ```
    d(i, j) = ||e_i - e_j|| / mean_{d > 0} d            (per network)
    a(i, j, k) = <(e_i - e_j)/||.||, (e_k - e_j)/||.||>
    loss = w_d * smooth_l1(d_s, d_t) + w_a * smooth_l1(a_s, a_t)
    ```

    Batch-relational; smooth L1 with beta 1 and mean reduction over all
    pairs / triplets. Matches RepDistiller's `RKDLoss` (features flattened).
    A batch of one has no pair, and the loss is 0 there, with finite
    gradients (RepDistiller divides 0 by 0). A batch of two has a single
    distance, which normalises to 1, and no angle: the loss is 0 too.

    Args:
        teacher_features: `(batch, ...)` teacher embeddings.
        student_features: `(batch, ...)` student embeddings (any width).
        distance_weight: `w_d`. Defaults to `25.0`.
        angle_weight: `w_a`. Defaults to `50.0`.

    Returns:
        Scalar float32 loss for the batch.

    Raises:
        ValueError: the batch axes differ.

    Example:
        >>> tfkd.losses.rkd_loss(teacher_embeddings, student_embeddings)

    References:
        Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.
    """
    teacher, student = _float32(teacher_features, student_features)
    _checks.check_features("rkd_loss", teacher, student, same_shape=False)
    teacher = tf.stop_gradient(_flatten(teacher))
    student = _flatten(student)

    def distances(e):
        d = _pairwise_distances(e)
        positive = tf.cast(d > 0, tf.float32)
        # No pair (a batch of one): every distance is 0; divide by 1.
        count = tf.maximum(tf.reduce_sum(positive), 1.0)
        mean = tf.reduce_sum(d * positive) / count
        return d / tf.where(mean > 0, mean, 1.0)

    def angles(e):
        differences = e[None, :, :] - e[:, None, :]
        unit = tf.math.l2_normalize(differences, axis=2, epsilon=1e-24)
        return tf.reshape(tf.matmul(unit, unit, transpose_b=True), [-1])

    distance_loss = tf.reduce_mean(
        _smooth_l1(distances(student) - distances(teacher))
    )
    angle_loss = tf.reduce_mean(_smooth_l1(angles(student) - angles(teacher)))
    return (
        tf.cast(distance_weight, tf.float32) * distance_loss
        + tf.cast(angle_weight, tf.float32) * angle_loss
    )


def pkt_loss(
    teacher_features: tf.Tensor,
    student_features: tf.Tensor,
    *,
    eps: float = 1e-7,
) -> tf.Tensor:
    """Probabilistic knowledge transfer: match cosine-kernel distributions.

    ```
    K(i, j) = (cos(f_i, f_j) + 1) / 2,   P = K / row sums     (per network)
    loss = mean_{i,j} P_t(i, j) * log((P_t(i, j) + eps) / (P_s(i, j) + eps))
    ```

    Batch-relational. Matches RepDistiller's `PKT.cosine_similarity_loss`
    (eps 1e-7; features flattened). A batch of one has `P = [[1]]` for both
    networks: the loss is 0 there.

    Args:
        teacher_features: `(batch, ...)` teacher embeddings.
        student_features: `(batch, ...)` student embeddings (any width).
        eps: stabiliser. Defaults to `1e-7`.

    Returns:
        Scalar float32 loss for the batch.

    Raises:
        ValueError: the batch axes differ.

    Example:
        >>> tfkd.losses.pkt_loss(teacher_embeddings, student_embeddings)

    References:
        Passalis, Tefas. "Learning Deep Representations with Probabilistic
        Knowledge Transfer", ECCV 2018.
    """
    teacher, student = _float32(teacher_features, student_features)
    _checks.check_features("pkt_loss", teacher, student, same_shape=False)

    def kernel(f):
        f = _flatten(f)
        f = f / (_norm(f, axis=1, keepdims=True) + eps)
        similarity = (tf.matmul(f, f, transpose_b=True) + 1.0) / 2.0
        return similarity / tf.reduce_sum(similarity, axis=1, keepdims=True)

    p_t, p_s = kernel(teacher), kernel(student)
    return tf.reduce_mean(p_t * tf.math.log((p_t + eps) / (p_s + eps)))
