"""Argument resolution and validation for `tfkd.Distiller`."""

from tfkd._keras import keras
from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import check_positive
from tfkd.losses._wrappers import KD

STUDENT_LOSSES = {
    "sparse_categorical_crossentropy": lambda: keras.losses.SparseCategoricalCrossentropy(
        from_logits=True
    ),
    "categorical_crossentropy": lambda: keras.losses.CategoricalCrossentropy(
        from_logits=True
    ),
    "binary_crossentropy": lambda: keras.losses.BinaryCrossentropy(
        from_logits=True
    ),
}


def resolve_student_loss(loss):
    """Returns a per-example callable `(y_true, logits) -> (batch, ...)`."""
    if loss is None:
        return None
    if isinstance(loss, str):
        if loss not in STUDENT_LOSSES:
            raise ValueError(
                f"Unknown student loss {loss!r}. The student outputs logits; pass "
                f"one of {sorted(STUDENT_LOSSES)} (each with from_logits=True) or "
                f"a `keras.losses.Loss` instance. Received: loss={loss!r}"
            )
        loss = STUDENT_LOSSES[loss]()
    if isinstance(loss, keras.losses.Loss):
        from_logits = getattr(loss, "_fn_kwargs", {}).get(
            "from_logits", getattr(loss, "from_logits", None)
        )
        if from_logits is False:
            raise ValueError(
                f"The student loss {type(loss).__name__} has from_logits=False, but "
                "the Distiller's student outputs logits. Pass "
                f"`keras.losses.{type(loss).__name__}(from_logits=True)`."
            )
        return loss.call
    if callable(loss):
        return loss
    raise TypeError(
        "`loss` must be a `keras.losses.Loss`, a callable "
        f"`(y_true, y_pred) -> per-example loss` or one of "
        f"{sorted(STUDENT_LOSSES)}. Received: loss={loss!r}"
    )


def resolve_distillation_losses(distillation_loss, temperature):
    """Returns `[(DistillationLoss, weight), ...]`."""
    if distillation_loss is None:
        return [
            (KD(temperature=4.0 if temperature is None else temperature), 1.0)
        ]
    if temperature is not None:
        raise ValueError(
            "`temperature` configures the default KD loss only. With "
            "`distillation_loss=...`, set the temperature on the method itself, "
            "e.g. `tfkd.losses.KD(temperature=4.0)`. Received: "
            f"temperature={temperature!r}"
        )
    entries = (
        distillation_loss
        if isinstance(distillation_loss, (list, tuple))
        else [distillation_loss]
    )
    if not entries:
        raise ValueError(
            "`distillation_loss` is an empty list: pass at least one "
            "`tfkd.losses` method, or None for Hinton KD."
        )
    resolved = []
    for entry in entries:
        loss, weight = entry if isinstance(entry, tuple) else (entry, 1.0)
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                "Each `distillation_loss` entry must be a `tfkd.losses` method "
                "(e.g. `tfkd.losses.KD()`) or a `(method, weight)` tuple. "
                f"Received: {entry!r}"
            )
        resolved.append(
            (loss, check_positive("loss weight", weight, allow_zero=True))
        )
    return resolved


def copy_metric(metric):
    if isinstance(metric, str) or not hasattr(metric, "get_config"):
        return metric
    return type(metric).from_config(metric.get_config())


def _is_softmax(layer):
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def check_outputs_logits(model, role):
    layers = getattr(model, "layers", None)
    if layers and _is_softmax(layers[-1]):
        raise ValueError(
            f"The {role} model {model.name!r} ends in a softmax, so it outputs "
            "probabilities, but distillation needs logits (the temperature "
            f"divides logits). Rebuild the {role} with `activation=None` on its "
            "last layer (keep the softmax for inference with "
            "`keras.Sequential([model, keras.layers.Softmax()])`)."
        )
