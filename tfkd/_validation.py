"""Hard-label losses, outputs and inputs of `tfkd.Distiller`, checked (its
distillation methods: `tfkd._methods`)."""

import functools

import tensorflow as tf

from tfkd import _data_checks
from tfkd import _keras
from tfkd._keras import keras
from tfkd.losses._base import check_positive

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
# Regression losses by Keras' names and aliases: a regression output is
# distilled by matching outputs (`tfkd.losses.OutputMatching`).
REGRESSION_LOSSES = {
    "mean_squared_error": lambda: keras.losses.MeanSquaredError(),
    "mse": lambda: keras.losses.MeanSquaredError(),
    "mean_absolute_error": lambda: keras.losses.MeanAbsoluteError(),
    "mae": lambda: keras.losses.MeanAbsoluteError(),
    "huber": lambda: keras.losses.Huber(),
    "log_cosh": lambda: keras.losses.LogCosh(),
    "logcosh": lambda: keras.losses.LogCosh(),
    "mean_squared_logarithmic_error": lambda: (
        keras.losses.MeanSquaredLogarithmicError()
    ),
    "msle": lambda: keras.losses.MeanSquaredLogarithmicError(),
}
STUDENT_LOSSES.update(REGRESSION_LOSSES)
_REGRESSION_CLASSES = {
    "MeanSquaredError": "mean_squared_error",
    "MeanAbsoluteError": "mean_absolute_error",
    "Huber": "huber",
    "LogCosh": "log_cosh",
    "MeanSquaredLogarithmicError": "mean_squared_logarithmic_error",
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
            classification = sorted(
                set(STUDENT_LOSSES) - set(REGRESSION_LOSSES)
            )
            raise ValueError(
                f"Unknown student loss {loss!r}. Pass one of {classification} "
                "(taken from logits, from_logits=True), a regression loss "
                f"{sorted(REGRESSION_LOSSES)}, or a `keras.losses.Loss` "
                f"instance. Received: loss={loss!r}"
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


def is_sparse_loss(loss):
    """Whether `loss` is a sparse categorical cross-entropy (it reads
    labels as class indices)."""
    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy"
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    return _function_name(loss) == "sparse_categorical_crossentropy"


def regression_loss(loss):
    """`(name, delta)` of a Keras regression loss (`name` one of
    `tfkd.losses.OutputMatching`'s losses, `delta` Huber's), else None."""
    if isinstance(loss, str):
        if loss not in REGRESSION_LOSSES:
            return None
        loss = REGRESSION_LOSSES[loss]()
    for class_name, name in _REGRESSION_CLASSES.items():
        if isinstance(loss, getattr(keras.losses, class_name)):
            return name, _keras.loss_setting(loss, "delta") or 1.0
    function = _function_name(loss)
    if (
        function in _REGRESSION_CLASSES.values()
        and getattr(keras.losses, function, None) is not None
    ):
        keywords = getattr(loss, "keywords", None) or {}
        return function, keywords.get("delta", 1.0)
    return None


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


def losses_per_output(loss, output_names):
    """`compile`'s `loss` as one entry (or None) per output."""
    if (
        len(output_names) == 1
        and isinstance(loss, (list, tuple))
        and len(loss) == 1
    ):
        loss = loss[0]
    return per_output(loss, output_names, "`loss`")


def _checking_class_indices(loss_fn, where):
    def checked(y_true, y_pred):
        inside = _data_checks.labels_inside(y_true, y_pred)
        y_true = _data_checks.check_class_indices(y_true, y_pred, where)
        # NaN under XLA, which drops the assert.
        return _data_checks.nan_unless(inside, loss_fn(y_true, y_pred))

    return checked


def resolve_student_losses(loss, output_names):
    """One per-example hard-label loss (or None) per output; sparse
    cross-entropies check that the labels are class indices."""
    resolved = []
    for name, entry in zip(output_names, losses_per_output(loss, output_names)):
        loss_fn = _resolve_one_student_loss(entry)
        if loss_fn is not None and is_sparse_loss(entry):
            where = "" if len(output_names) == 1 else f"of output {name!r}"
            loss_fn = _checking_class_indices(loss_fn, where)
        resolved.append(loss_fn)
    return resolved


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


def check_models(teacher, student):
    """Refuses a teacher or student that is not a Keras model of the Keras
    tfkd uses, and a student that is the teacher."""
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            if type(model).__module__.startswith("keras_hub"):
                raise TypeError(
                    f"`{role}` is a keras-hub model "
                    f"({type(model).__name__}): keras-hub models are "
                    f"Keras 3 only, and tfkd uses {_keras.KERAS_NAME}. "
                    "Unset TF_USE_LEGACY_KERAS to distil them."
                )
            raise TypeError(
                f"`{role}` must be a `{_keras.KERAS_NAME}.Model`. "
                f"Received: {role}={model!r} of type "
                f"{type(model).__name__}. (Models built with the other "
                f"Keras cannot be mixed: tfkd uses {_keras.KERAS_NAME}, "
                "see TF_USE_LEGACY_KERAS.)"
            )
    if student is teacher:
        raise ValueError(
            f"The student is the teacher itself ({teacher.name!r}). Pass a "
            "separate, trainable student model."
        )


def check_alpha(alpha):
    """`alpha` as a float in [0, 1]."""
    alpha = check_positive("alpha", alpha, allow_zero=True)
    if alpha > 1:
        raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
    return alpha
