"""Argument resolution and validation for `tfkd.Distiller`."""

import functools

import tensorflow as tf

from tfkd import _keras
from tfkd._keras import keras
from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import check_positive
from tfkd.losses._wrappers import DIST
from tfkd.losses._wrappers import DKD
from tfkd.losses._wrappers import KD

STUDENT_LOSSES = {
    "sparse_categorical_crossentropy": lambda: (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ),
    "categorical_crossentropy": lambda: keras.losses.CategoricalCrossentropy(
        from_logits=True
    ),
    "binary_crossentropy": lambda: keras.losses.BinaryCrossentropy(
        from_logits=True
    ),
}

# Keras' loss functions whose `from_logits` defaults to False: passed bare,
# they would read the student's logits as probabilities.
_PROBABILITY_LOSS_FUNCTIONS = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
)
_BINARY_LOSSES = ("BinaryCrossentropy", "BinaryFocalCrossentropy")


def _function_name(loss):
    if isinstance(loss, functools.partial):
        return _function_name(loss.func)
    return getattr(loss, "__name__", None)


def _resolve_one_student_loss(loss):
    """Returns a per-example callable `(y_true, logits) -> (batch, ...)`."""
    if loss is None:
        return None
    if isinstance(loss, str):
        if loss not in STUDENT_LOSSES:
            raise ValueError(
                f"Unknown student loss {loss!r}. The student outputs logits; "
                f"pass one of {sorted(STUDENT_LOSSES)} (each with "
                "from_logits=True) or a `keras.losses.Loss` instance. "
                f"Received: loss={loss!r}"
            )
        loss = STUDENT_LOSSES[loss]()
    if isinstance(loss, keras.losses.Loss):
        if _keras.loss_from_logits(loss) is False:
            raise ValueError(
                f"The student loss {type(loss).__name__} has "
                "from_logits=False, but the Distiller's student outputs "
                "logits. Pass "
                f"`keras.losses.{type(loss).__name__}(from_logits=True)`."
            )
        if _keras.loss_setting(loss, "ignore_class") is not None:
            raise ValueError(
                f"The student loss {type(loss).__name__} has ignore_class set; "
                "the Distiller does not apply it yet (it would average over "
                "the ignored entries). Pass a per-position `sample_weight` "
                "that is 0 on them instead, and a loss without ignore_class."
            )
        return loss.call
    if callable(loss):
        name = _function_name(loss)
        keywords = getattr(loss, "keywords", None) or {}
        if (
            name in _PROBABILITY_LOSS_FUNCTIONS
            and getattr(keras.losses, name, None) is not None
            and not keywords.get("from_logits", False)
        ):
            raise ValueError(
                f"`keras.losses.{name}` takes probabilities "
                "(from_logits=False) by default, but the Distiller's student "
                "outputs logits, so it would train on a wrong loss. Pass "
                f"loss={name!r} (taken from logits), a `keras.losses` class "
                "with from_logits=True, or "
                f"`functools.partial(keras.losses.{name}, from_logits=True)`."
            )
        return loss
    raise TypeError(
        "`loss` must be a `keras.losses.Loss`, a callable "
        f"`(y_true, y_pred) -> per-example loss` or one of "
        f"{sorted(STUDENT_LOSSES)}. Received: loss={loss!r}"
    )


def is_binary_loss(loss):
    """Whether `loss` is a sigmoid (binary / multi-label) cross-entropy."""
    if isinstance(loss, str):
        return loss.startswith("binary_")
    if type(loss).__name__ in _BINARY_LOSSES:
        return True
    return (_function_name(loss) or "").startswith("binary_")


def per_output(value, output_names, what):
    """One entry per output from a single value, a list or a dict."""
    count = len(output_names)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(output_names))
        if unknown:
            raise ValueError(
                f"{what} names outputs {unknown} that the models do not have. "
                f"Their outputs are: {output_names}."
            )
        return [value.get(name) for name in output_names]
    if count > 1 and isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"{what} is a list of {len(value)} entries for models with "
                f"{count} outputs {output_names}: give one entry per output "
                "(None to skip one), or a dict keyed by output name."
            )
        return list(value)
    return [value] * count


def resolve_student_losses(loss, output_names):
    """One per-example hard-label loss (or None) per output."""
    if (
        len(output_names) == 1
        and isinstance(loss, (list, tuple))
        and len(loss) == 1
    ):
        loss = loss[0]
    losses = per_output(loss, output_names, "`loss`")
    return [_resolve_one_student_loss(entry) for entry in losses]


def _is_weighted_pair(entry):
    return (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], DistillationLoss)
        and not isinstance(entry[1], (DistillationLoss, tuple, list))
    )


def _method_entries(entry):
    """`[(method, weight), ...]` of one output's `distillation_loss` entry."""
    if entry is None:
        return []
    if _is_weighted_pair(entry) or not isinstance(entry, (list, tuple)):
        entries = [entry]
    else:
        entries = list(entry)
    resolved = []
    for item in entries:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(
                    "A weighted `distillation_loss` entry is a `(method, "
                    f"weight)` pair; received a tuple of {len(item)}: {item!r}."
                )
            method, weight = item
        else:
            method, weight = item, 1.0
        if not isinstance(method, DistillationLoss):
            raise TypeError(
                "Each `distillation_loss` entry must be a `tfkd.losses` method "
                "(e.g. `tfkd.losses.KD()`) or a `(method, weight)` tuple. "
                f"Received: {item!r}"
            )
        resolved.append(
            (method, check_positive("loss weight", weight, allow_zero=True))
        )
    return resolved


# The defaults, chosen by benchmarks/defaults.py (docs/benchmarks.md).
BINARY_DEFAULT_TEMPERATURE = 4.0


def default_distillation_loss(temperature=None):
    """`Distiller`'s method when none is given: DIST (Huang et al. 2022);
    with a `temperature`, Hinton KD at that temperature, `KD(temperature)`
    (the keras.io recipe's meaning of `temperature`)."""
    if temperature is None:
        return DIST()
    return KD(temperature=temperature)


def binary_default(method):
    """The default `method` for a binary or multi-label head: a sigmoid
    (Bernoulli) KD, at T=4 as in tfkd 0.1 unless the Distiller got a
    `temperature` (then `method` is that KD, switched to sigmoids)."""
    if not isinstance(method, KD):
        method = KD(temperature=BINARY_DEFAULT_TEMPERATURE)
    method.activation = "sigmoid"
    return method


def resolve_distillation_losses(distillation_loss, temperature, output_names):
    """Returns `[(method, weight, output_index), ...]` and whether it is the
    default (Hinton KD on every output).

    `output_index` is the output whose logits a logits method reads; `None`
    for feature methods, which read named layers.
    """
    if temperature is not None and distillation_loss is not None:
        raise ValueError(
            "`temperature` selects Hinton KD instead of the default "
            "method. With `distillation_loss=...`, set the temperature "
            "on the method itself, e.g. `tfkd.losses.KD(temperature=4.0)`. "
            f"Received: temperature={temperature!r}"
        )
    if distillation_loss is None:
        return [
            (default_distillation_loss(temperature), 1.0, index)
            for index in range(len(output_names))
        ], True
    if isinstance(distillation_loss, (list, tuple)) and not distillation_loss:
        raise ValueError(
            "`distillation_loss` is an empty list: pass at least one "
            "`tfkd.losses` method, or None for Hinton KD."
        )
    if len(output_names) == 1 and not isinstance(distillation_loss, dict):
        entries = [distillation_loss]
    elif _is_weighted_pair(distillation_loss):
        entries = [distillation_loss] * len(output_names)
    else:
        entries = per_output(
            distillation_loss, output_names, "`distillation_loss`"
        )
    terms = []
    seen_features = set()
    for index, entry in enumerate(entries):
        for method, weight in _method_entries(entry):
            if method.teacher_layer is not None:
                # Feature methods read layers, not an output: once only.
                if id(method) in seen_features:
                    continue
                seen_features.add(id(method))
                terms.append((method, weight, None))
            else:
                terms.append((method, weight, index))
    if not terms:
        raise ValueError(
            "`distillation_loss` selects no method for any output "
            f"{output_names}. Give at least one output a `tfkd.losses` method "
            "(None skips an output)."
        )
    return terms, False


def distillation_loss_from_terms(terms, count):
    """`distillation_loss` for a model of `count` outputs, from the
    `(method, weight, output_index)` terms that `get_config` stores."""
    if count == 1:
        return [(method, weight) for method, weight, *_ in terms]
    per_output = [[] for _ in range(count)]
    for method, weight, *index in terms:
        # Feature terms (no output) may sit with any output: the first.
        position = index[0] if index and index[0] is not None else 0
        per_output[position].append((method, weight))
    return [entries or None for entries in per_output]


def output_names(model):
    """The names of `model`'s outputs, in `tf.nest.flatten` order."""
    try:
        structure = model.output
    except (AttributeError, ValueError):
        return ["output"]  # Subclassed and not built: one output assumed.
    if isinstance(structure, dict):
        return sorted(structure)
    if isinstance(structure, (list, tuple)) and len(structure) > 1:
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(structure) or len(set(names)) != len(names):
            names = [f"output_{i}" for i in range(len(structure))]
        return names
    return ["output"]


def flatten_outputs(outputs, names, role):
    """The output structure of a model as a list in `names` order."""
    if isinstance(outputs, dict):
        missing = sorted(set(names) - set(outputs))
        if missing:
            raise ValueError(
                f"The {role}'s outputs {sorted(outputs)} lack {missing}: "
                "teacher and student need the same output structure."
            )
        return [outputs[name] for name in names]
    flat = tf.nest.flatten(outputs)
    if len(flat) != len(names):
        raise ValueError(
            f"The {role} returned {len(flat)} output(s), but the Distiller was "
            f"built for {len(names)} ({names}). Give teacher and student the "
            "same output structure (a subclassed model's outputs are only "
            "known once built: build it on a `keras.Input` first)."
        )
    return flat


def labels_per_output(y, names):
    """Labels (or sample weights) as one entry per output, or None."""
    if y is None:
        return [None] * len(names)
    if len(names) == 1:
        if isinstance(y, dict) and set(y) == set(names):
            return [y[names[0]]]
        return [y]
    return per_output(y, names, "The labels")


def copy_metric(metric):
    if isinstance(metric, str) or not hasattr(metric, "get_config"):
        return metric
    return type(metric).from_config(metric.get_config())


def copy_metrics(metrics):
    """Fresh copies of `compile`'s metrics (a list, or a dict per output)."""
    if isinstance(metrics, dict):
        return {key: copy_metrics(value) for key, value in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [copy_metrics(value) for value in metrics]
    return copy_metric(metrics)


_PROBABILITY_OPS = ("softmax", "sigmoid")


def _probability_op(layer):
    """'softmax' or 'sigmoid' if `layer` turns logits into probabilities."""
    name = type(layer).__name__.lower()
    if name in _PROBABILITY_OPS:
        return name  # keras.layers.Softmax, Keras 3 keras.ops ops.
    activation = getattr(layer, "activation", None)
    activation = getattr(activation, "__name__", activation)
    if isinstance(activation, str) and activation in _PROBABILITY_OPS:
        return activation
    if name == "tfoplambda":  # tf_keras: tf.nn.softmax on a KerasTensor.
        symbol = str(getattr(layer, "symbol", layer.name))
        for op in _PROBABILITY_OPS:
            if op in symbol:
                return op
    return None


def _output_probability_op(model, depth=0):
    outputs = getattr(model, "outputs", None) or []
    for tensor in outputs:
        layer = _keras.producing_layer(tensor)
        if layer is None:
            continue
        if isinstance(layer, keras.Model) and depth < 8:
            found = _output_probability_op(layer, depth + 1)
        else:
            found = _probability_op(layer)
        if found:
            return found
    layers = getattr(model, "layers", None)
    if not outputs and layers:
        return _probability_op(layers[-1])
    return None


def check_outputs_logits(model, role):
    found = _output_probability_op(model)
    if found:
        raise ValueError(
            f"The {role} model {model.name!r} ends in a {found}, so it outputs "
            "probabilities, but distillation needs logits (the temperature "
            f"divides logits). Rebuild the {role} with `activation=None` on "
            f"its last layer and no final {found} op (keep the {found} for "
            f"inference with `keras.Sequential([model, keras.layers.Activation("
            f"{found!r})])`)."
        )


def check_single_input(model, x, role):
    """Refuses several input tensors for a model that takes one."""
    inputs = getattr(model, "inputs", None)
    flat = tf.nest.flatten(x)
    if inputs and len(inputs) == 1 and len(flat) > 1:
        raise ValueError(
            f"The {role} {model.name!r} takes one input, but the data gives "
            f"{len(flat)} input tensors. Teacher and student read the same "
            "inputs; to give the teacher its own preprocessing, wrap it, e.g. "
            "`keras.Sequential([keras.layers.Rescaling(255.0), teacher])`."
        )


def softmax_methods_on_one_class(terms, shapes, output_names):
    """Refuses softmax methods on an output with a single logit."""
    for method, _, index in terms:
        if index is None or not isinstance(method, (KD, DKD, DIST)):
            continue
        if getattr(method, "activation", "softmax") != "softmax":
            continue
        shape = shapes[index]
        if shape is not None and shape[-1] == 1:
            raise ValueError(
                f"{type(method).__name__} is a softmax over classes, but "
                f"output {output_names[index]!r} has one logit (shape "
                f"{shape}): the softmax of one logit is constant, so the loss "
                "would be 0. For a binary or multi-label head use "
                "`tfkd.losses.KD(activation='sigmoid')` (the default method "
                "picks it by itself)."
            )


def check_no_masks(output_names, outputs):
    """Refuses student outputs that carry a Keras mask (not applied yet)."""
    masked = [
        name
        for name, output in zip(output_names, outputs)
        if _keras.keras_mask(output) is not None
    ]
    if masked:
        raise ValueError(
            f"The student's output(s) {masked} carry a Keras mask (e.g. "
            "from `Embedding(mask_zero=True)`), which the Distiller does "
            "not apply yet (it would average over padding). Pass the "
            "mask as a per-position `sample_weight` of shape "
            "`(batch, time)` instead, or remove the mask from the student."
        )
