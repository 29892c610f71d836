"""The Distiller's objective, as functions of tensors and settings.

Each term is computed on one replica's batch and returned twice: its *share*
of the global mean, to differentiate, and the replica's *local mean*, for the
loss trackers. Per-example (or per-position) terms are summed and divided by
the global number of entries (the `tf.nn.compute_average_loss` convention),
so that summing gradients over replicas, as Keras optimizers do, gives
exactly the single-device gradient. Batch-relational methods (SP, RKD, PKT,
DIST) see the global batch: every replica's tensors are gathered first.

Weighting follows Keras' `"sum_over_batch_size"`: a loss of shape
`(batch, d1, ..., dk)` (tokens, pixels) with sample weights `w` broadcast to
it is `sum(w * loss) / (batch * d1 * ... * dk)`; weights of shape `(batch,)`
weigh every position of their example.
"""

import collections
import warnings

import tensorflow as tf

from tfkd import _augment
from tfkd import _cache_format
from tfkd import _data_checks
from tfkd import _keras
from tfkd import _validation

Term = collections.namedtuple("Term", ["share", "mean"])
Term.__doc__ = """`share`: this replica's share of the global mean, to
differentiate; `mean`: the replica's local mean, for the loss trackers."""

Scale = collections.namedtuple(
    "Scale", ["replicas", "local_batch", "global_batch"]
)
Scale.__doc__ = """The replica count and the local and global batch sizes
(float32) that every term of one step is scaled by."""


def zero():
    """A `Term` of 0. (Built on call: tensors made when tfkd is imported
    would initialise TensorFlow's devices before users can configure them.)"""
    return Term(tf.zeros([]), tf.zeros([]))


def batch_scale(batch_size):
    """The `Scale` of a step whose local batch has `batch_size` examples."""
    replicas = _keras.num_replicas_in_sync()
    global_batch = batch_size
    if replicas > 1:
        global_batch = tf.distribute.get_replica_context().all_reduce(
            "sum", batch_size
        )
    return Scale(
        replicas,
        tf.cast(batch_size, tf.float32),
        tf.cast(global_batch, tf.float32),
    )


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


def broadcast_weights(sample_weight, values):
    """`sample_weight` broadcast to the shape of a loss `values`.

    `(batch,)` weights reach every position of a `(batch, d1, ...)` loss;
    `(batch, d1)` weights (a padding mask) weigh `(batch, d1)` losses
    position by position. Weights of a higher rank than the loss (a
    per-position mask on a method that returns one value per example) are
    averaged over the extra axes, so each example weighs the mean of its
    positions' weights.
    """
    weights = tf.cast(sample_weight, tf.float32)
    rank, weight_rank = values.shape.rank, weights.shape.rank
    if rank is None or weight_rank is None:
        raise ValueError(
            "Sample weights and losses need a known rank. Received weights "
            f"of shape {weights.shape} for a loss of shape {values.shape}."
        )
    while weight_rank > rank and weights.shape[-1] == 1:
        weights = tf.squeeze(weights, axis=-1)
        weight_rank -= 1
    if weight_rank > rank:
        weights = tf.reduce_mean(weights, axis=list(range(rank, weight_rank)))
    for _ in range(rank - weight_rank):
        weights = weights[..., None]
    try:
        return tf.broadcast_to(weights, tf.shape(values))
    except (ValueError, tf.errors.InvalidArgumentError):
        raise ValueError(
            f"Sample weights of shape {sample_weight.shape} do not fit a loss "
            f"of shape {values.shape}: pass one weight per example "
            "`(batch,)` or one per position, shaped like the labels."
        ) from None


def weighted_average(values, sample_weight, scale):
    """The `Term` of a per-example (or per-position) loss `values`."""
    values = tf.cast(values, tf.float32)
    if values.shape.rank == 0:
        raise ValueError(
            "A per-example loss returned a scalar; it must return one value "
            "per example, shape `(batch,)` or `(batch, ...)`."
        )
    if sample_weight is not None:
        values = values * broadcast_weights(sample_weight, values)
    total = tf.reduce_sum(values)
    entries = tf.cast(tf.size(values), tf.float32) / tf.maximum(
        scale.local_batch, 1.0
    )
    return Term(
        total / (scale.global_batch * entries),
        total / (scale.local_batch * entries),
    )


def hard_label_term(loss_fn, y, logits, sample_weight, scale):
    """The student's hard-label loss `loss_fn(y, logits)`, weighted.

    Labels `(batch,)` for outputs `(batch, 1)` (a binary head, a regressor)
    take the outputs' rank first, as both Keras do before a loss (else a
    loss that averages the last axis would average the batch).
    """
    y = tf.cast(y, tf.float32)
    logits = tf.cast(logits, tf.float32)
    if y.shape.rank == 1 and logits.shape.rank == 2 and logits.shape[-1] == 1:
        y = y[:, None]
    return weighted_average(loss_fn(y, logits), sample_weight, scale)


def method_term(method, teacher, student, labels, sample_weight, scale):
    """One distillation method's `Term` on teacher and student tensors."""
    if not isinstance(teacher, dict):  # A top-k teacher keeps its int ids.
        teacher = tf.cast(teacher, tf.float32)
    student = tf.cast(student, tf.float32)
    if not method.batch_relational:
        return weighted_average(
            method.compute(teacher, student, labels), sample_weight, scale
        )
    weights, kwargs = None, {}
    if sample_weight is not None:
        if method.accepts_sample_weight:
            # One weight per example (or position of sequence logits).
            weights = broadcast_weights(sample_weight, teacher[..., 0])
        else:
            warnings.warn(
                f"{type(method).__name__} relates the examples of a batch to "
                "each other and ignores sample weights.",
                stacklevel=2,
            )
    if scale.replicas > 1:
        teacher = gather_replicas(teacher)
        student = gather_replicas(student)
        if labels is not None:
            labels = gather_replicas(labels)
        if weights is not None:
            weights = gather_replicas(weights)
    if weights is not None:
        kwargs["sample_weight"] = weights
    value = method.compute(teacher, student, labels, **kwargs)
    value = tf.cast(value, tf.float32)
    return Term(value / scale.replicas, value)


def label_losses(output_names, loss_fns, y, labels, alpha):
    """The hard-label losses to apply, one per output: None where labels are
    absent and `alpha` (a variable) is 0 (unlabelled data).

    Raises:
        ValueError: labels are missing for an output with a loss, or the data
            has no labels while `alpha > 0` (checked again at run time, for
            alpha schedules).
    """
    with tf.init_scope():
        alpha_now = float(alpha.numpy())
    losses = []
    for name, loss_fn, y_i in zip(output_names, loss_fns, labels):
        if loss_fn is not None and y_i is None:
            if y is not None:
                raise ValueError(
                    f"The labels have no entry for output {name!r}, which "
                    "has a hard-label loss. Pass its labels, or set its "
                    "loss to None."
                )
            if alpha_now > 0:
                raise ValueError(
                    "The data has no labels, but `compile(loss=...)` set a "
                    f"hard-label student loss and alpha={alpha_now:g} weighs "
                    "it. Pass `(x, y)` data, or use alpha=0 for pure "
                    "distillation on unlabelled data."
                )
            tf.debugging.assert_equal(
                alpha,
                0.0,
                message="The data has no labels, but alpha > 0 weighs the "
                "hard-label student loss set by `compile(loss=...)`. Pass "
                "`(x, y)` data, or keep alpha=0 on unlabelled data.",
            )
            loss_fn = None
        losses.append(loss_fn)
    return losses


def hard_label_terms(entries, scale):
    """The sum of `(loss_fn, labels, logits, sample_weight)` entries' terms
    (one per output; entries with no `loss_fn` are skipped)."""
    terms = [
        hard_label_term(loss_fn, y, logits, weights, scale)
        for loss_fn, y, logits, weights in entries
        if loss_fn is not None
    ]
    return add(*terms) if terms else zero()


def distillation_terms(
    terms, teacher, student, labels, sample_weights, scale, training
):
    """The weighted sum of the distillation terms.

    Args:
        terms: the Distiller's `tfkd._methods.Term`s (method, weight
            variable, output, adapter).
        teacher, student: `(outputs, {layer: features})`, outputs a list in
            output order.
        labels, sample_weights: one entry (or None) per output.
        scale: the step's `Scale`.
        training: passed to the adapters.
    """
    (t_outputs, t_features), (s_outputs, s_features) = teacher, student
    values = []
    for term in terms:
        method = term.method
        position = 0 if term.output is None else term.output
        if method.teacher_layer is None:
            t, s = t_outputs[position], s_outputs[position]
            if isinstance(t, _cache_format.TopKLogits):
                t = t.for_method(method)  # Compact or rebuilt dense.
        else:
            t = t_features[method.teacher_layer]
            s = s_features[method.student_layer]
        if term.adapter is not None:
            s = term.adapter(s, training=training)
        method_labels, inside = None, None
        if method.requires_labels:
            method_labels = labels[position]
            if method_labels is None:
                raise ValueError(
                    f"{type(method).__name__} needs the labels, but the data "
                    "has none. Pass `(x, y)` data."
                )
            method_labels = tf.convert_to_tensor(method_labels)
            if _data_checks.has_sparse_shape(method_labels, s):
                inside = _data_checks.labels_inside(method_labels, s)
                method_labels = _data_checks.check_class_indices(
                    method_labels, s, f"read by {type(method).__name__}"
                )
        value = method_term(
            method, t, s, method_labels, sample_weights[position], scale
        )
        if inside is not None:  # NaN under XLA, which drops the assert.
            value = Term(*(_data_checks.nan_unless(inside, v) for v in value))
        values.append(weigh(term.variable, value))
    return add(*values)


def regularization_term(losses, scale):
    """The models' own regularization losses (already global)."""
    if not losses:
        return zero()
    total = tf.add_n([tf.cast(loss, tf.float32) for loss in losses])
    return Term(total / scale.replicas, total)


def add(*terms):
    return Term(
        tf.add_n([term.share for term in terms]),
        tf.add_n([term.mean for term in terms]),
    )


def weigh(weight, term):
    return Term(weight * term.share, weight * term.mean)


def total(alpha, student, distillation, regularization=None):
    """`alpha * student + (1 - alpha) * distillation + regularization`."""
    return add(
        weigh(alpha, student),
        weigh(1.0 - alpha, distillation),
        regularization or zero(),
    )


def compute(
    terms,
    alpha,
    student_losses,
    pairing,
    data,
    teacher,
    student,
    regularization,
    training,
    mix=None,
):
    """The Distiller's objective on one replica's batch.

    `alpha * hard-label + (1 - alpha) * distillation + regularization`,
    each term a `Term`.

    Args:
        terms: the `tfkd._methods.Term`s.
        alpha: the weight of the hard-label loss (a variable).
        student_losses: the hard-label loss of each output, or None.
        pairing: the `tfkd._pairing.OutputPairing` of the two models.
        data: the step's `(y, sample_weight)`.
        teacher, student: `(outputs, {layer: features})` of each model.
        regularization: the models' own losses (a list of tensors); as in
            Keras they count in `evaluate` too, so that loss and val_loss
            compare.
        training: whether this is a training step (for the adapters).
        mix: mixup's `(lam, permutation)`: the hard-label term is then
            `lam * loss(y, s) + (1 - lam) * loss(y[permutation], s)`, sample
            weights permuted with the labels.

    Returns:
        The `Term`s `(total, hard_label, distillation)`.
    """
    y, sample_weight = data
    names = pairing.names
    t_outputs, t_features = teacher
    s_outputs, s_features = student
    t_flat = pairing.teacher_flat(t_outputs)
    s_flat = pairing.student_flat(s_outputs)
    for name, t, s in zip(names, t_flat, s_flat):
        pairing.check_shapes(t.shape, s.shape, name)
    labels = _validation.labels_per_output(y, names)
    if isinstance(sample_weight, (dict, list, tuple)):
        weights = _validation.labels_per_output(sample_weight, names)
    else:
        weights = [sample_weight] * len(names)
    _data_checks.check_sample_weights(names, weights, s_flat)
    scale = batch_scale(tf.shape(s_flat[0])[0])

    loss_fns = label_losses(names, student_losses, y, labels, alpha)
    hard = hard_label_terms(zip(loss_fns, labels, s_flat, weights), scale)
    if mix is not None:
        lam, permutation = mix
        permuted = hard_label_terms(
            zip(
                loss_fns,
                [_augment.permute(v, permutation) for v in labels],
                s_flat,
                [_augment.permute(v, permutation) for v in weights],
            ),
            scale,
        )
        hard = add(weigh(lam, hard), weigh(1.0 - lam, permuted))
    distillation = distillation_terms(
        terms,
        (t_flat, t_features),
        (s_flat, s_features),
        labels,
        weights,
        scale,
        training,
    )
    regularization = regularization_term(regularization, scale)
    _validation.check_no_masks(names, s_flat)
    return (
        total(alpha, hard, distillation, regularization),
        hard,
        distillation,
    )
