"""Distillation losses as pure TensorFlow functions.

Every function takes the teacher's tensor first and the student's second
(Keras' `y_true, y_pred` order), computes in float32 whatever the inputs'
dtype, and returns a scalar: the mean over the batch. The `_per_example`
variants return one value per example, shape `(batch,)`, so that
`tfkd.Distiller` can apply sample weights and scale by the global batch under
`tf.distribute`.
"""

import tensorflow as tf


def _float32(*tensors):
    return [tf.cast(tf.convert_to_tensor(t), tf.float32) for t in tensors]


def _standardize(logits, eps=1e-7):
    """z-scores logits along the class axis, with the unbiased std."""
    mean = tf.reduce_mean(logits, axis=-1, keepdims=True)
    centered = logits - mean
    classes = tf.cast(tf.shape(logits)[-1], logits.dtype)
    variance = tf.reduce_sum(tf.square(centered), axis=-1, keepdims=True) / (
        classes - 1.0
    )
    return centered / (tf.sqrt(variance) + eps)


def kd_loss_per_example(
    teacher_logits, student_logits, *, temperature=4.0, standardize=False
):
    """Per-example `T^2 * KL(softmax(t/T) || softmax(s/T))`; see `kd_loss`."""
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    temperature = tf.cast(temperature, tf.float32)
    if standardize:
        teacher_logits = _standardize(teacher_logits)
        student_logits = _standardize(student_logits)
    teacher_log_probs = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(
        tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
        axis=-1,
    )
    return kl * tf.square(temperature)


def kd_loss(
    teacher_logits, student_logits, *, temperature=4.0, standardize=False
):
    """Hinton knowledge distillation: temperature-softened KL divergence.

    ```
    p_t = softmax(t / T),  p_s = softmax(s / T)
    loss = T^2 * sum_c p_t[c] * (log p_t[c] - log p_s[c])      (mean over batch)
    ```

    Computed from log-softmax, so it stays finite for large logits and high
    temperatures. With `standardize=True`, both logit vectors are first
    z-scored along the class axis (`(z - mean(z)) / (std(z) + 1e-7)`, unbiased
    std), as in logit standardization (Sun et al. 2024); there `temperature` is
    the paper's base temperature.

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.
        temperature: softening temperature `T > 0`. Defaults to `4.0`.
        standardize: z-score logits before softening. Defaults to `False`.

    Returns:
        Scalar float32 loss, the mean over the batch.

    Example:
        >>> tfkd.losses.kd_loss(teacher_logits, student_logits, temperature=4.0)

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
        )
    )
