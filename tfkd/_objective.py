"""The Distiller's objective: hard-label and distillation terms, scaled for
`tf.distribute`.

Per-example terms are summed and divided by the global batch size (the
`tf.nn.compute_average_loss` convention), so that summing gradients over
replicas, as Keras optimizers do, gives exactly the single-device gradient.
Batch-relational methods (SP, RKD, PKT, DIST) see the global batch: every
replica's tensors are gathered first.
"""

import collections
import warnings

import tensorflow as tf

from tfkd import _keras

Objective = collections.namedtuple(
    "Objective", ["share", "total", "student", "distillation", "batch_size"]
)
Objective.__doc__ = """`share`: this replica's share of the total loss, to
differentiate; `total`, `student`, `distillation`: the local means, for the
loss trackers; `batch_size`: the local batch size (float32), their weight."""


def multi_worker():
    """Whether this runs under a MultiWorkerMirroredStrategy with workers."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return strategy.extended._in_multi_worker_mode()


def gather_replicas(values):
    """Concatenates every replica's `values` along the batch axis.

    An all-reduce (sum) of the values placed in their replica's slot: it has
    a gradient, and it uses the same collective as the optimizer, so it
    orders like the other reductions of the step. Assumes equal per-replica
    batches, as `tf.distribute` gives with a global batch divisible by the
    number of replicas.
    """
    context = tf.distribute.get_replica_context()
    dtype = values.dtype
    values = tf.cast(values, tf.float32)
    slot = tf.one_hot(
        context.replica_id_in_sync_group, context.num_replicas_in_sync
    )
    slot = tf.reshape(slot, [-1] + [1] * values.shape.rank)

    @tf.custom_gradient
    def all_sum(x):
        # The gradient of an all-sum is an all-sum; spelled out because
        # MultiWorkerMirroredStrategy's collective all-reduce has none.
        def gradient(upstream):
            return context.all_reduce("sum", upstream)

        return context.all_reduce("sum", x), gradient

    gathered = all_sum(slot * values[None])
    shape = tf.concat([[-1], tf.shape(values)[1:]], axis=0)
    return tf.cast(tf.reshape(gathered, shape), dtype)


def _flatten_sample_weight(sample_weight):
    if sample_weight is None:
        return None
    return tf.reshape(tf.cast(sample_weight, tf.float32), [-1])


def _per_example(values):
    """Reduces a loss of shape `(batch, ...)` to `(batch,)` by the mean."""
    values = tf.cast(values, tf.float32)
    if values.shape.rank is not None and values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


def objective(
    distiller, y, sample_weight, teacher_outputs, student_outputs, training
):
    """Returns the `Objective` of `distiller` on one replica's batch."""
    t_logits, t_features = teacher_outputs
    s_logits, s_features = student_outputs
    distiller._check_logits_shapes(t_logits.shape, s_logits.shape)
    replicas = _keras.num_replicas_in_sync()
    local_batch = tf.shape(s_logits)[0]
    global_batch = local_batch
    if replicas > 1:
        global_batch = tf.distribute.get_replica_context().all_reduce(
            "sum", local_batch
        )
    local_batch_f = tf.cast(local_batch, tf.float32)
    global_batch_f = tf.cast(global_batch, tf.float32)
    weights = _flatten_sample_weight(sample_weight)

    def average(per_example):
        """(share of the global mean, local mean) of a per-example loss."""
        per_example = _per_example(per_example)
        if weights is not None:
            per_example = per_example * weights
        total = tf.reduce_sum(per_example)
        return total / global_batch_f, total / local_batch_f

    if distiller._student_loss_fn is not None:
        if y is None:
            raise ValueError(
                "The data has no labels, but `compile(loss=...)` set a hard-label "
                "student loss. Pass `(x, y)` data, or compile without `loss` and "
                "with `alpha=0` for pure distillation on unlabelled data."
            )
        student_share, student_mean = average(
            distiller._student_loss_fn(
                tf.cast(y, tf.float32), tf.cast(s_logits, tf.float32)
            )
        )
    else:
        student_share = student_mean = tf.constant(0.0)

    distill_share = distill_mean = tf.constant(0.0)
    for loss, weight, adapter in zip(
        distiller.distillation_losses,
        distiller.loss_weights,
        distiller.adapters,
    ):
        teacher = (
            t_logits
            if loss.teacher_layer is None
            else t_features[loss.teacher_layer]
        )
        student = (
            s_logits
            if loss.student_layer is None
            else s_features[loss.student_layer]
        )
        if adapter is not None:
            student = adapter(student, training=training)
        teacher = tf.cast(teacher, tf.float32)
        student = tf.cast(student, tf.float32)
        labels = None
        if loss.requires_labels:
            if y is None:
                raise ValueError(
                    f"{type(loss).__name__} needs the labels, but the data has "
                    "none. Pass `(x, y)` data."
                )
            labels = y
        if loss.batch_relational:
            if weights is not None:
                warnings.warn(
                    f"{type(loss).__name__} relates the examples of a batch to each "
                    "other and ignores sample weights.",
                    stacklevel=2,
                )
            if replicas > 1:
                teacher = gather_replicas(teacher)
                student = gather_replicas(student)
                if labels is not None:
                    labels = gather_replicas(labels)
            value = tf.cast(loss.compute(teacher, student, labels), tf.float32)
            share, mean = value / replicas, value
        else:
            share, mean = average(loss.compute(teacher, student, labels))
        distill_share += weight * share
        distill_mean += weight * mean

    alpha = distiller.alpha
    total_share = alpha * student_share + (1.0 - alpha) * distill_share
    total_mean = alpha * student_mean + (1.0 - alpha) * distill_mean
    regularization = distiller.student.losses + [
        loss
        for adapter in distiller.adapters
        if adapter is not None
        for loss in adapter.losses
    ]
    if training and regularization:
        reg = tf.add_n([tf.cast(r, tf.float32) for r in regularization])
        total_share += reg / replicas
        total_mean += reg
    return Objective(
        total_share, total_mean, student_mean, distill_mean, local_batch_f
    )
