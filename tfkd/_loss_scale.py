"""Dynamic loss scaling that agrees across replicas (mixed float16).

A dynamic `LossScaleOptimizer` skips a step and halves its loss scale when a
gradient is not finite: with float16 activations an overflow is an ordinary
event, which this absorbs. Under `tf.distribute`, every replica must take the
same decision, since one gradient overflow poisons the summed update.
tf_keras 2.x checks the gradients after summing them over the replicas; Keras
3 (3.15 at least, on its merge-call path: CPUs, or whenever XLA is off) checks
each replica's own gradients before the sum and reads replica 0's answer, so
an overflow on any other replica is summed into every weight (which become
inf or NaN) and the scale is not lowered. Plain `keras.Model.fit` has it too.

`agree_on_finite` makes the decision common before the optimizer sees the
gradients: one all-reduced count of non-finite gradients; where any replica
has one, every replica's gradients are made non-finite, so that all of them
skip the step and the scale halves, as on one device. On one replica, or
without dynamic loss scaling, the gradients are returned untouched.
"""

import tensorflow as tf

from tfkd._keras import keras


def has_dynamic_loss_scale(optimizer) -> bool:
    """Whether `optimizer` scales the loss dynamically (skips non-finite
    steps): a `LossScaleOptimizer` of Keras 3, or a dynamic one of tf_keras."""
    if not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return False
    # Keras 3's is always dynamic; tf_keras' may hold a fixed scale.
    return bool(getattr(optimizer, "dynamic", True))


def _values(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.values
    return gradient


def _scaled(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            gradient.values * tf.cast(factor, gradient.values.dtype),
            gradient.indices,
            gradient.dense_shape,
        )
    return gradient * tf.cast(factor, gradient.dtype)


def agree_on_finite(optimizer, gradients):
    """Returns `gradients`, all made non-finite on every replica where any
    replica's gradients are not finite (see the module docstring).

    Called in the replica context of a train step, before
    `optimizer.apply_gradients`. Costs one all-reduce of a scalar per step,
    only with dynamic loss scaling on several replicas.
    """
    gradients = list(gradients)
    context = tf.distribute.get_replica_context()
    if (
        context is None
        or context.num_replicas_in_sync == 1
        or not has_dynamic_loss_scale(optimizer)
    ):
        return gradients
    present = [i for i, g in enumerate(gradients) if g is not None]
    if not present:
        return gradients
    local = tf.add_n(
        [
            tf.cast(
                tf.logical_not(
                    tf.reduce_all(tf.math.is_finite(_values(gradients[i])))
                ),
                tf.float32,
            )
            for i in present
        ]
    )
    anywhere = context.all_reduce(tf.distribute.ReduceOp.SUM, local) > 0
    # Multiplying by 1 leaves a finite step bit for bit as it was; NaN in
    # one gradient is enough for the optimizer to skip the whole step.
    factor = tf.where(anywhere, float("nan"), 1.0)
    first = present[0]
    gradients[first] = _scaled(gradients[first], factor)
    return gradients
