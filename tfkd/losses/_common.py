"""Helpers shared by the loss functions."""

import tensorflow as tf


def float32(*tensors):
    return [tf.cast(tf.convert_to_tensor(t), tf.float32) for t in tensors]


def safe_sqrt(x):
    """`sqrt(x)` for `x >= 0` whose gradient at 0 is 0 instead of inf.

    PyTorch's `Tensor.norm` uses the same zero subgradient, so all-equal
    logits or an all-zero embedding row train instead of giving NaN. A NaN
    `x` stays NaN (`x * 0`, not a constant 0): a NaN input must give a NaN
    loss that `keras.callbacks.TerminateOnNaN` and users see, not a finite
    value with NaN gradients.
    """
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, 1.0)), x * 0.0)


def norm(x, axis, keepdims=False):
    """Euclidean norm along `axis`, with `safe_sqrt`'s zero gradient at 0."""
    return safe_sqrt(tf.reduce_sum(tf.square(x), axis=axis, keepdims=keepdims))
