"""Checks of a step's tensors against the outputs: sample weights that
broadcast to the per-example losses, labels that are class indices. Static
shapes are checked when the step is traced; label values by asserts that
run in graph mode (XLA, under `jit_compile=True`, drops them)."""

import tensorflow as tf


def _per_example_shape(output):
    """The shape of an output's per-example (per-position) loss: the
    output's without its last (class) axis; `(batch,)` for `(batch,)`."""
    shape = output.shape
    if shape.rank is None:
        return None
    return shape[:1] if shape.rank <= 1 else shape[:-1]


def check_sample_weights(output_names, weights, outputs):
    """Refuses sample weights that do not broadcast to an output's
    per-example loss, as Keras refuses them (they were averaged over)."""
    for name, weight, output in zip(output_names, weights, outputs):
        if weight is None:
            continue
        target = _per_example_shape(output)
        shape = tf.TensorShape(getattr(weight, "shape", None))
        if target is None or shape.rank is None:
            continue
        dims = list(shape)
        while len(dims) > target.rank and dims[-1] == 1:
            dims.pop()  # (batch, 1) weights are (batch,) weights.
        if len(dims) <= target.rank and all(
            w is None or t is None or w in (1, t)
            for w, t in zip(dims, list(target))
        ):
            continue
        where = "" if len(output_names) == 1 else f" of output {name!r}"
        positions = ""
        if target.rank > 1:
            positions = f", or one per position, shape {tuple(target)}"
        raise ValueError(
            f"Invalid sample weights{where}: shape {tuple(shape)} does not "
            f"broadcast to the per-example loss, shape {tuple(target)} (the "
            f"output's shape {tuple(output.shape)} without its last axis). "
            f"Pass one weight per example, shape `(batch,)`{positions}. "
            f"Received: sample_weight.shape={tuple(shape)}"
        )


def has_sparse_shape(labels, logits):
    """Whether `labels` are class indices for `logits`, by static rank:
    `logits.shape[:-1]`, or that with a last axis of 1 (as DKD reads)."""
    rank, label_rank = logits.shape.rank, labels.shape.rank
    if rank is None or label_rank is None or logits.shape[-1] == 1:
        return False
    return label_rank == rank - 1 or (
        label_rank == rank and labels.shape[-1] == 1
    )


def labels_inside(labels, logits):
    """Whether every label is a class index of `logits` (a scalar bool)."""
    values = tf.cast(labels, tf.float32)
    classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    return tf.reduce_all(tf.logical_and(values >= 0.0, values < classes))


def nan_unless(condition, value):
    """`value`, or NaN where `condition` is False: what XLA, which drops
    asserts, still reports (through `TerminateOnNaN` and the logs)."""
    return tf.where(condition, value, tf.constant(float("nan"), value.dtype))


def check_class_indices(labels, logits, where):
    """`labels`, after an assert (run in graph mode too) that they are
    class indices of `logits`, in `[0, classes)`: out of range, a sparse
    cross-entropy gives NaN on GPUs and an error on CPUs, and DKD an
    all-zero target, silently."""
    labels = tf.convert_to_tensor(labels)
    values = tf.cast(labels, tf.float32)
    classes = tf.shape(logits)[-1]
    inside = labels_inside(labels, logits)
    check = tf.debugging.Assert(
        inside,
        [
            f"Labels outside the classes{where and ' ' + where}: sparse labels "
            "are class indices in [0, classes). Check the labels (1-based "
            "classes? an ignore value such as -1 or 255? pass it as a "
            "sample weight of 0 and any class instead) or the number of "
            "outputs. Classes, smallest and largest label:",
            classes,
            tf.reduce_min(values),
            tf.reduce_max(values),
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(labels)
