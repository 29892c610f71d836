"""The TFMOT back end: quantization-aware training and pruning in tf_keras.

TFMOT (TensorFlow Model Optimization) only knows tf_keras models: this module
needs `TF_USE_LEGACY_KERAS=1`, set before TensorFlow is imported (Keras 3
quantization-aware training is `_rewrite.py`'s). TFMOT is imported lazily, in
tf_keras mode only: importing it sets `TF_USE_LEGACY_KERAS=1` for the whole
process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tfkd import _keras
from tfkd._keras import keras
from tfkd.quantization._common import check_model
from tfkd.quantization._common import has_layer
from tfkd.quantization._common import is_pruned
from tfkd.quantization._common import iter_layers
from tfkd.quantization._common import select_layers

# TFMOT classes, recognised by name so that no check imports TFMOT.
_QUANTIZE_ANNOTATIONS = ("QuantizeAnnotate",)
_PRUNE_STEP_CALLBACK = "UpdatePruningStep"
# Weights that TFMOT prunes in its built-in layers.
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")
_SCHEDULES = ("polynomial", "constant")


def _tfmot(feature):
    """Imports TFMOT, in tf_keras mode only."""
    if not _keras.IS_LEGACY:
        raise RuntimeError(
            f"{feature} needs TF_USE_LEGACY_KERAS=1, set in the environment "
            "before TensorFlow is imported (e.g. `TF_USE_LEGACY_KERAS=1 python "
            "train.py`): the TensorFlow Model Optimization Toolkit (TFMOT) "
            "only knows tf_keras models. (Keras 3 has quantization-aware "
            "training through `tfkd.quantization.quantize_aware`.)"
        )
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as error:
        raise ImportError(
            f"{feature} needs the TensorFlow Model Optimization Toolkit. "
            "Install it with `pip install tfkd[qat]`."
        ) from error
    return tfmot


def _check_flat_graph_model(model, feature):
    """TFMOT wraps the layers of one flat Sequential or Functional model."""
    if not _keras.is_graph_network(model):
        raise ValueError(
            f"{feature} cannot wrap {model.name!r}, a subclassed "
            f"{type(model).__name__}: TFMOT only handles Sequential and "
            "Functional models. Rebuild the student as a Functional model "
            "(`keras.Model(inputs, outputs)`) with the same layers, and copy "
            "the weights with `set_weights` if it is trained."
        )
    nested = [
        layer.name for layer in model.layers if isinstance(layer, keras.Model)
    ]
    if nested:
        raise ValueError(
            f"{feature} cannot wrap {model.name!r}: it contains the nested "
            f"model(s) {nested}, and TFMOT cannot quantize or prune a model "
            "inside another. Rebuild the student as one flat Functional model "
            "(call the inner model's layers on the outer model's tensors)."
        )


def _select(model, layers):
    """Resolves `layers` (names and/or classes) to a set of layer names."""
    return {x.name for x in select_layers(model, layers, model.layers)}


def _custom_objects(model, custom_objects):
    """Custom classes TFMOT needs to clone the model, keyed by class name."""
    objects = {
        type(layer).__name__: type(layer)
        for layer in iter_layers(model)
        if not type(layer).__module__.startswith(("tf_keras", "keras"))
    }
    objects.update(custom_objects or {})
    return objects


def quantize_aware(model, *, layers=None, custom_objects=None):
    """TFMOT: `quantize_model` (or annotate + `quantize_apply`)."""
    tfmot = _tfmot("Quantization-aware training")
    check_model(model)
    _check_flat_graph_model(model, "quantize_aware")
    quantize = tfmot.quantization.keras
    selected = None if layers is None else _select(model, layers)
    try:
        with quantize.quantize_scope(_custom_objects(model, custom_objects)):
            if selected is not None:
                annotated = _clone(
                    model, selected, quantize.quantize_annotate_layer
                )
                return quantize.quantize_apply(annotated)
            if has_layer(model, _QUANTIZE_ANNOTATIONS):
                return quantize.quantize_apply(model)
            return quantize.quantize_model(model)
    except (ValueError, TypeError, RuntimeError) as error:
        match = re.search(r"Layer (\S+?):<class", str(error))
        culprit = f"layer {match.group(1)!r} of " if match else ""
        raise ValueError(
            f"TFMOT could not make {culprit}{model.name!r} quantization-aware "
            f"({error}). Leave a layer float by listing only the others in "
            "`layers=` (e.g. `layers=[keras.layers.Dense]`), or annotate it "
            "with a custom `QuantizeConfig` via `tfmot.quantization.keras."
            "quantize_annotate_layer` and pass the classes in `custom_objects`."
        ) from error


def prune(
    model: keras.Model,
    target_sparsity: float,
    *,
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    schedule: str = "polynomial",
    layers: str | type | Sequence[str | type] | None = None,
) -> keras.Model:
    """A copy of a student whose kernels are magnitude-pruned while it trains.

    Wraps the prunable layers (Dense, Conv, Embedding kernels) with
    `tfmot.sparsity.keras.prune_low_magnitude`: every `frequency` steps the
    smallest-magnitude weights are masked to zero, up to `target_sparsity`.
    The step counter must be set by TFMOT's `UpdatePruningStep` callback:
    pass `callbacks=tfkd.quantization.pruning_callbacks(model)` to `fit`.
    Export with `tfkd.export.to_tflite`, which strips the wrappers.

    ```
    polynomial: s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0))^3
    constant:   s(t) = s_f for t_0 <= t (<= t_1 if end_step is set)
    ```

    Args:
        model: a tf_keras Sequential or Functional model with no nested model.
        target_sparsity: final fraction of zero weights per kernel, in [0, 1).
        begin_step: optimizer step at which pruning starts. Defaults to `0`.
        end_step: step at which `target_sparsity` is reached (polynomial) or
            pruning stops (constant). Required for `"polynomial"`: e.g.
            `epochs * steps_per_epoch`, or less to fine-tune after. Defaults
            to `None` (constant: never stops).
        frequency: steps between mask updates. Defaults to `100`.
        initial_sparsity: sparsity at `begin_step` (polynomial only).
            Defaults to `0.0`.
        schedule: `"polynomial"` (`PolynomialDecay`, power 3) or `"constant"`
            (`ConstantSparsity`). Defaults to `"polynomial"`.
        layers: names and/or classes of the layers to prune. Defaults to
            `None`: every prunable layer.

    Returns:
        A new tf_keras model with TFMOT pruning wrappers.

    Raises:
        RuntimeError: in Keras 3 mode (set `TF_USE_LEGACY_KERAS=1`).
        TypeError: if `model` is not a tf_keras model.
        ValueError: for a bad value, or a model TFMOT cannot prune.

    Example:
        >>> student = tfkd.quantization.prune(student, 0.75, end_step=500)
        >>> distiller = tfkd.Distiller(teacher, student)
        >>> distiller.compile("adam", "sparse_categorical_crossentropy")
        >>> distiller.fit(data, epochs=5, callbacks=(
        ...     tfkd.quantization.pruning_callbacks(distiller)))
        >>> sparse_student = tfkd.quantization.strip(distiller.student)

    References:
        Zhu, Gupta. "To prune, or not to prune: exploring the efficacy of
        pruning for model compression", 2017. arXiv:1710.01878.
    """
    tfmot = _tfmot("Pruning")
    check_model(model)
    _check_flat_graph_model(model, "prune")
    sparsity_api = tfmot.sparsity.keras
    if not 0 <= initial_sparsity <= target_sparsity < 1:
        raise ValueError(
            "Sparsities must satisfy 0 <= initial_sparsity <= target_sparsity "
            f"< 1. Received: initial_sparsity={initial_sparsity!r}, "
            f"target_sparsity={target_sparsity!r}"
        )
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(
            "`frequency` must be a positive int (steps). Received: "
            f"frequency={frequency!r}"
        )
    if schedule not in _SCHEDULES:
        raise ValueError(
            f"Invalid value for argument `schedule`. Expected one of "
            f"{list(_SCHEDULES)}. Received: schedule={schedule!r}"
        )
    if schedule == "polynomial" and (
        end_step is None or end_step <= begin_step
    ):
        raise ValueError(
            "The polynomial schedule needs `end_step` > `begin_step`: the step "
            "at which it reaches `target_sparsity` (e.g. `epochs * "
            f"steps_per_epoch`). Received: end_step={end_step!r}, "
            f"begin_step={begin_step!r}"
        )
    if schedule == "polynomial":
        pruning_schedule = sparsity_api.PolynomialDecay(
            initial_sparsity=initial_sparsity,
            final_sparsity=target_sparsity,
            begin_step=begin_step,
            end_step=end_step,
            frequency=frequency,
        )
    else:
        pruning_schedule = sparsity_api.ConstantSparsity(
            target_sparsity,
            begin_step=begin_step,
            end_step=-1 if end_step is None else end_step,
            frequency=frequency,
        )
    selected = None if layers is None else _select(model, layers)
    try:
        with tfmot.quantization.keras.quantize_scope(
            _custom_objects(model, None)
        ):
            return _clone(
                model,
                selected,
                lambda layer: sparsity_api.prune_low_magnitude(
                    layer, pruning_schedule=pruning_schedule
                ),
            )
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"TFMOT could not prune {model.name!r} ({error}). Prune only the "
            "supported layers with `layers=` (e.g. "
            "`layers=[keras.layers.Dense, keras.layers.Conv2D]`)."
        ) from error


def _clone(model, selected, wrap):
    """A copy of `model` (same weights) with `wrap` around selected layers.

    `selected` is a set of layer names, or `None` for every layer. The copy
    shares no variable with `model`.
    """

    def clone_function(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer):
            return clone
        if selected is None or layer.name in selected:
            return wrap(clone)
        return clone

    copy = keras.models.clone_model(model, clone_function=clone_function)
    for source, target in zip(model.layers, copy.layers):
        if source.weights:
            getattr(target, "layer", target).set_weights(source.get_weights())
    return copy


def pruning_callbacks(
    model: keras.Model,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    *,
    log_dir: str | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks that training a `prune`d model needs, added to `callbacks`.

    TFMOT's pruning wrappers count optimizer steps in a variable that its
    `UpdatePruningStep` callback initialises; training without it fails with
    "Prune() wrapper requires the UpdatePruningStep callback". This adds it
    when `model` (a student, or a `tfkd.Distiller`) holds pruning wrappers and
    `callbacks` does not have one yet; otherwise it returns `callbacks`
    unchanged, so it is safe to use on any model.

    Args:
        model: the model `fit` trains: a pruned student, or a
            `tfkd.Distiller` whose student is pruned.
        callbacks: the callbacks already meant for `fit`. Defaults to `None`.
        log_dir: if set, also adds TFMOT's `PruningSummaries` (sparsity in
            TensorBoard) writing there. Defaults to `None`.

    Returns:
        A new list of callbacks.

    Example:
        >>> distiller.fit(data, epochs=5, callbacks=(
        ...     tfkd.quantization.pruning_callbacks(distiller, [early_stop])))
    """
    callbacks = list(callbacks or [])
    student = getattr(model, "student", model)
    if not is_pruned(student):
        return callbacks
    sparsity_api = _tfmot("Pruning").sparsity.keras
    names = {type(callback).__name__ for callback in callbacks}
    if _PRUNE_STEP_CALLBACK not in names:
        callbacks.append(sparsity_api.UpdatePruningStep())
    if log_dir is not None:
        callbacks.append(sparsity_api.PruningSummaries(log_dir=log_dir))
    return callbacks


def strip(model: keras.Model) -> keras.Model:
    """Removes the training-only TFMOT wrappers before export.

    Pruning wrappers (`prune`) are stripped with
    `tfmot.sparsity.keras.strip_pruning`: the result has the original layers
    with the sparse kernels. Quantize wrappers (`quantize_aware`) are kept:
    they hold the learned ranges that the TFLite converter turns into the
    int8 model. Other models (every Keras 3 model) are returned as they are.
    `tfkd.export.to_tflite` calls `strip` itself.

    Args:
        model: a Keras model, pruned or not.

    Returns:
        The model without pruning wrappers (a new model if it had some).

    Example:
        >>> sparse_student = tfkd.quantization.strip(distiller.student)
    """
    check_model(model)
    if not is_pruned(model):
        return model
    return _tfmot("Stripping pruning wrappers").sparsity.keras.strip_pruning(
        model
    )


def _kernels(model):
    for layer in iter_layers(model):
        yield from _keras.tfmot_quantized_weights(layer)
        if isinstance(layer, keras.Model) or hasattr(layer, "pruning_vars"):
            continue  # Their kernels are reached through their layers.
        for attribute in _KERNELS:
            weight = getattr(layer, attribute, None)
            if hasattr(weight, "assign"):  # a variable, not a QAT tensor
                yield weight


def sparsity(model: keras.Model) -> float:
    """The fraction of zero weights in the model's prunable kernels.

    Counts the kernels of Dense, Conv (also depthwise and separable) and
    Embedding layers, inside pruning wrappers too; not biases.

    ```
    sparsity = #{w = 0} / #{w}   over all prunable kernels
    ```

    Args:
        model: a Keras model (pruned, quantization-aware, stripped or
            plain).

    Returns:
        A float in `[0, 1]`.

    Raises:
        ValueError: if the model has no prunable kernel.

    Example:
        >>> tfkd.quantization.sparsity(tfkd.quantization.strip(student))
        0.75
    """
    check_model(model)
    kernels = {id(kernel): kernel.numpy() for kernel in _kernels(model)}
    zeros = sum(int((k == 0).sum()) for k in kernels.values())
    total = sum(k.size for k in kernels.values())
    if not total:
        raise ValueError(
            f"{model.name!r} has no prunable kernel (Dense, Conv or Embedding) "
            "to measure sparsity on."
        )
    return zeros / total
