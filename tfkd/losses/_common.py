"""Helpers shared by the loss functions."""

import tensorflow as tf


def float32(*tensors):
    return [tf.cast(tf.convert_to_tensor(t), tf.float32) for t in tensors]
