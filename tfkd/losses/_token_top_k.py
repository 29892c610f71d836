"""Top-k teacher caches read by the token divergences (`_tokens`).

A top-k teacher is a dict: `"top_k_values"` (the teacher's `k` largest
logits), `"top_k_indices"` (their token ids), `"log_normalizer"` (its
`logsumexp` over the whole vocabulary, at temperature 1) and, optionally,
`"tail_ids"` (ids drawn from its distribution outside the top-k); see
`tfkd.cache_teacher_outputs(..., top_k=k, tail_samples=m)`.
"""

from __future__ import annotations

import tensorflow as tf

from tfkd.losses._common import float32 as _float32

TOP_K_KEYS = ("top_k_values", "top_k_indices", "log_normalizer")
# Optional: ids drawn from the teacher's tail (`tail_samples`), read by the
# forward KL at temperature 1.
TAIL_IDS_KEY = "tail_ids"
# log of the smallest tail mass kept: a tail below it weighs nothing, and
# its log stays finite (no 0 * inf in the sums).
_LOG_TINY = -69.0


def _is_top_k(teacher):
    return isinstance(teacher, dict)


def _log_diff_exp(total, part):
    """`log(exp(total) - exp(part))` for `part <= total`, floored."""
    gap = tf.minimum(part - total, -1e-30)
    return tf.maximum(total + tf.math.log(-tf.math.expm1(gap)), _LOG_TINY)


def _top_k_log_probs(teacher, student, temperature):
    """`(log p, log q)` over the teacher's top-k tokens and a tail bucket."""
    missing = [key for key in TOP_K_KEYS if key not in teacher]
    if missing:
        raise ValueError(
            "A top-k teacher must be a dict with the keys "
            f"{TOP_K_KEYS}. Received: keys={sorted(teacher)} (missing "
            f"{missing}). Cache the teacher with "
            "`tfkd.cache_teacher_outputs(..., top_k=k)`."
        )
    values = tf.cast(teacher["top_k_values"], tf.float32)
    indices = tf.cast(teacher["top_k_indices"], tf.int32)
    log_z = tf.cast(teacher["log_normalizer"], tf.float32)
    (student,) = _float32(student)
    if values.shape.rank is not None and student.shape.rank is not None:
        if values.shape.rank != student.shape.rank or (
            not values.shape[:-1].is_compatible_with(student.shape[:-1])
        ):
            raise ValueError(
                "The top-k teacher's values `(batch, ..., k)` must match the "
                "student's logits `(batch, ..., vocab)` but for the last "
                f"axis. Received: top_k_values.shape={tuple(values.shape)}, "
                f"student_logits.shape={tuple(student.shape)}."
            )
    if log_z.shape.rank == values.shape.rank:
        log_z = tf.squeeze(log_z, axis=-1)
    log_z = log_z[..., None]
    vocab = tf.cast(tf.shape(student)[-1], tf.float32)
    k = tf.cast(tf.shape(values)[-1], tf.float32)
    # The teacher at temperature 1: exact top-k log-probs and tail mass.
    log_tail = _log_diff_exp(
        tf.zeros_like(log_z), tf.reduce_logsumexp(values, -1, True) - log_z
    )
    # At T: the tail mass spread evenly over the other tokens (exact at 1).
    others = tf.maximum(vocab - k, 1.0)
    tail_logit = log_tail - tf.math.log(others) + log_z
    scaled = values / temperature
    tail_scaled = tail_logit / temperature + tf.math.log(others)
    tail_scaled = tf.where(vocab > k, tail_scaled, _LOG_TINY + scaled[..., :1])
    log_z_t = tf.reduce_logsumexp(
        tf.concat([scaled, tail_scaled], axis=-1), -1, True
    )
    log_p = tf.concat([scaled, tail_scaled], axis=-1) - log_z_t
    log_q_all = tf.nn.log_softmax(student / temperature)
    log_q = tf.gather(log_q_all, indices, batch_dims=indices.shape.rank - 1)
    log_q_tail = _log_diff_exp(
        tf.zeros_like(log_q[..., :1]), tf.reduce_logsumexp(log_q, -1, True)
    )
    return log_p, tf.concat([log_q, log_q_tail], axis=-1)


def _kl(log_p, log_q):
    """`KL(p || q)` along the last axis, from log-probabilities."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _scatter_rows(shape, ids, values):
    """Zeros of `shape` `(..., vocab)` plus `values` added at `ids`
    (`(..., n)` each) along the last axis."""
    vocab = shape[-1]
    n = tf.shape(ids)[-1]
    ids = tf.reshape(ids, [-1, n])
    rows = tf.shape(ids)[0]
    row_ids = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(ids))
    dense = tf.tensor_scatter_nd_add(
        tf.zeros(tf.stack([rows, vocab])),
        tf.stack([row_ids, ids], axis=-1),
        tf.reshape(values, [-1, n]),
    )
    return tf.reshape(dense, shape)


@tf.custom_gradient
def _tail_sampled_kl(values, indices, log_z, tail_ids, student):
    """The `k + 1`-bucket forward KL (T = 1) as the value; as the student's
    gradient `q - p_hat`, `p_hat` the teacher's exact top-k probabilities
    plus its tail mass split evenly over `m` ids drawn from its tail: an
    unbiased estimate of the full forward KL's gradient `q - p`. After the
    random-sampling KD of Anshumann et al., "Sparse Logit Sampling:
    Accelerating Knowledge Distillation in LLMs", ACL 2025 (there over the
    whole vocabulary; here over the tail, the top-k kept exact)."""
    teacher = {
        "top_k_values": values,
        "top_k_indices": indices,
        "log_normalizer": log_z,
    }
    log_p, log_q = _top_k_log_probs(teacher, student, tf.constant(1.0))
    value = _kl(log_p, log_q)

    def gradient(upstream):
        p = tf.exp(log_p)
        samples = tf.cast(tf.shape(tail_ids)[-1], tf.float32)
        tail = tf.broadcast_to(p[..., -1:] / samples, tf.shape(tail_ids))
        target = _scatter_rows(
            tf.shape(student),
            tf.concat([tf.cast(indices, tf.int32), tail_ids], axis=-1),
            tf.concat([p[..., :-1], tail], axis=-1),
        )
        d_student = upstream[..., None] * (tf.nn.softmax(student) - target)
        return None, None, None, None, d_student

    return value, gradient
