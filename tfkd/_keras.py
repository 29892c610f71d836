"""The one place that decides which Keras tfkd uses.

`TF_USE_LEGACY_KERAS=1` (set before TensorFlow is imported) selects tf_keras,
the Keras 2 line that TFMOT's quantization-aware training requires; otherwise
tfkd uses Keras 3. Every other tfkd module imports `keras` from here, so one
implementation of every class serves both. This mirrors TFMOT's
`python/core/keras/compat.py`.
"""

import os

import tensorflow as tf


def _legacy_requested() -> bool:
    value = os.environ.get("TF_USE_LEGACY_KERAS", "0")
    return value.strip().lower() in ("1", "true", "yes")


IS_LEGACY = _legacy_requested()

if IS_LEGACY:
    try:
        import tf_keras as keras  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "TF_USE_LEGACY_KERAS=1 asks for tf_keras, which is not installed. "
            "Install it with `pip install tfkd[qat]` (or "
            "`pip install tf-keras`), or unset TF_USE_LEGACY_KERAS to use "
            "Keras 3."
        ) from error
else:
    import keras  # noqa: F401

    if not keras.__version__.startswith("3."):  # pragma: no cover
        raise ImportError(
            f"tfkd needs Keras 3 (or tf_keras with TF_USE_LEGACY_KERAS=1); "
            f"found keras {keras.__version__}. Run `pip install -U keras`."
        )
    if keras.config.backend() != "tensorflow":
        raise ImportError(
            "tfkd is a TensorFlow library and needs the Keras 3 TensorFlow "
            f"backend; KERAS_BACKEND is {keras.config.backend()!r}. Set "
            "KERAS_BACKEND=tensorflow before importing keras."
        )

KERAS_NAME = "tf_keras" if IS_LEGACY else "keras"


def unpack_x_y_sample_weight(data):
    return keras.utils.unpack_x_y_sample_weight(data)


def register_serializable(cls):
    """Registers `cls` under the package name "tfkd" in the Keras in use."""
    return keras.utils.register_keras_serializable(package="tfkd")(cls)


def scale_loss_for_optimizer(optimizer, loss):
    """Applies the optimizer's loss scaling (mixed float16), if it has one."""
    if IS_LEGACY:
        if hasattr(optimizer, "get_scaled_loss"):
            return optimizer.get_scaled_loss(loss)
        return loss
    return optimizer.scale_loss(loss)


def unscale_gradients(optimizer, gradients):
    """Undoes `scale_loss_for_optimizer` on gradients (tf_keras only).

    Keras 3's `LossScaleOptimizer.apply_gradients` unscales by itself.
    """
    if IS_LEGACY and hasattr(optimizer, "get_unscaled_gradients"):
        return optimizer.get_unscaled_gradients(gradients)
    return gradients


def num_replicas_in_sync() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


# Framework internals. Every use of a private Keras / TensorFlow attribute
# lives below, so that an upgrade that renames one breaks here, loudly
# (tests/test_keras_compat.py pins each).


def in_multi_worker_mode() -> bool:
    """Whether this runs under a MultiWorkerMirroredStrategy with workers."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return strategy.extended._in_multi_worker_mode()


def is_compiled(model) -> bool:
    """Whether `compile` was called on `model` (Keras 3 or tf_keras)."""
    if IS_LEGACY:
        return bool(getattr(model, "_is_compiled", False))
    return bool(getattr(model, "compiled", False))


def compiled_metrics(model) -> list:
    """The metric objects that `compile(metrics=...)` gave `model`."""
    if IS_LEGACY:
        compiled = getattr(model, "compiled_metrics", None)
        return compiled.metrics if compiled is not None else []
    compiled = getattr(model, "_compile_metrics", None)
    # Unbuilt until a labelled batch is seen (unlabelled data never builds
    # them, and Keras 3 then fails reading their result).
    if compiled is None or not compiled.built:
        return []
    return [compiled]


def distribute_strategy_of(model):
    """The strategy `model` was built under (Keras 3), or None."""
    return getattr(model, "_distribute_strategy", None)


class MultiWorkerSafe:
    """Mixin for Keras 3 models stepped under `MultiWorkerMirroredStrategy`.

    Keras 3.15 mishandles two things there, which this mixin works around
    (tf_keras needs neither, and never calls `_maybe_symbolic_build`):

    - `_maybe_symbolic_build` (metrics and optimizer built before the first
      step) reduces a distributed batch with `strategy.reduce("MEAN", ...)`:
      "unsupported type PerReplica". Only the shapes matter there, and one
      replica's batch has them.
    - step outputs are reduced across workers with
      `strategy.reduce("MEAN", value, axis=0)`, which rejects the scalars
      that a step returns: `_step_logs` gives them a dimension of 1 (epoch
      logs are recomputed from the synchronised metrics).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = distribute_strategy_of(self)
        if strategy is not None and iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    @staticmethod
    def _step_logs(logs):
        if IS_LEGACY or not in_multi_worker_mode():
            return logs
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}


def loss_setting(loss, name):
    """A setting (`from_logits`, `ignore_class`) of a `keras.losses.Loss`."""
    value = getattr(loss, name, None)
    if value is None:
        # Keras 3 `LossFunctionWrapper`s keep it among their function's
        # keyword arguments.
        value = getattr(loss, "_fn_kwargs", {}).get(name)
    return value


def loss_from_logits(loss):
    """The `from_logits` setting of a `keras.losses.Loss`, or None."""
    return loss_setting(loss, "from_logits")


def keras_mask(tensor):
    """The Keras mask a layer attached to `tensor` (`mask_zero=True`)."""
    return getattr(tensor, "_keras_mask", None)


def producing_layer(tensor):
    """The layer (Keras 3: operation) whose call produced a symbolic tensor."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history[0]


def is_graph_network(model) -> bool:
    """Whether `model` is a Sequential or Functional graph of layers."""
    if IS_LEGACY:
        return bool(getattr(model, "_is_graph_network", False))
    return isinstance(model, keras.Sequential) or (
        type(model).__name__ == "Functional"
    )


def build_optimizer(optimizer, variables):
    """Creates the optimizer's slots for `variables` unless it has them."""
    built = getattr(optimizer, "_built" if IS_LEGACY else "built", False)
    if not built and hasattr(optimizer, "build"):
        optimizer.build(variables)


def tfmot_quantized_weights(layer):
    """The float variables that a TFMOT quantize wrapper fake-quantizes.

    The wrapper swaps its layer's kernel for a fake-quantized tensor when
    called; the variables are in its `_weight_vars`.
    """
    return [weight for weight, _, _ in getattr(layer, "_weight_vars", ())]


def graph_steps(model):
    """A Keras 3 Functional model's layer calls, in execution order.

    Returns a list of `(layer, args, kwargs, outputs)`: the arguments of each
    call hold the model's own symbolic tensors, `outputs` the flat list of
    the tensors it produced. Input layers are left out.
    """
    nodes_by_depth = model._nodes_by_depth
    steps = []
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input:
                continue
            arguments = node.arguments
            steps.append(
                (node.operation, arguments.args, arguments.kwargs, node.outputs)
            )
    return steps


def all_layers(model):
    """`model` and every layer inside it, recursively, including the input
    layers that `Sequential.layers` leaves out."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def litert_ops(interpreter) -> list:
    """The ops of a LiteRT `Interpreter` (`op_name`, `operand_types`,
    `result_types`), from its private `_get_ops_details`; `[]` where this
    LiteRT lacks it, or lists them in another form."""
    try:
        ops = list(interpreter._get_ops_details())
        for op in ops:
            op["op_name"], op["operand_types"], op["result_types"]
    except (AttributeError, KeyError, TypeError):
        return []
    return ops
