"""What both quantization back ends share: model checks and layer walks."""

from __future__ import annotations

from tfkd import _keras
from tfkd._keras import keras

# Classes recognised by name, so that no check imports TFMOT.
PRUNE_WRAPPERS = ("PruneLowMagnitude",)
TFMOT_QUANTIZE_LAYERS = (
    "QuantizeWrapper",
    "QuantizeWrapperV2",
    "QuantizeLayer",
)
NATIVE_QUANTIZE_LAYERS = (
    "FakeQuant",
    "QuantizedDense",
    "QuantizedConv1D",
    "QuantizedConv2D",
    "QuantizedDepthwiseConv2D",
)


def check_model(model, argument="model"):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a `{_keras.KERAS_NAME}.Model`. Received: "
            f"{argument}={model!r} of type {type(model).__name__}. (A Keras 3 "
            "model cannot be used in tf_keras mode: build it with "
            "`from tfkd._keras import keras`.)"
        )
    if _is_distiller(model):
        raise TypeError(
            f"`{argument}` is a `tfkd.Distiller`, which wraps a teacher and a "
            "student: pass its student, e.g. `distiller.student`. Received: "
            f"{argument}={model.name!r} of type {type(model).__name__}"
        )


def _is_distiller(model):
    """Whether `model` is a `tfkd.Distiller` (or a subclass), recognised by
    its class: `tfkd.distiller` imports this package, not the reverse."""
    return any(
        cls.__module__ == "tfkd.distiller" and cls.__name__ == "Distiller"
        for cls in type(model).__mro__
    )


def iter_layers(model):
    """Every layer, entering nested models and TFMOT wrappers."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            yield inner


def has_layer(model, class_names):
    return any(
        type(layer).__name__ in class_names for layer in iter_layers(model)
    )


def is_quantization_aware(model: keras.Model) -> bool:
    """Whether `model` holds fake-quantization layers (either back end)."""
    check_model(model)
    return has_layer(model, TFMOT_QUANTIZE_LAYERS + NATIVE_QUANTIZE_LAYERS)


def is_pruned(model: keras.Model) -> bool:
    """Whether `model` holds TFMOT pruning wrappers."""
    check_model(model)
    return has_layer(model, PRUNE_WRAPPERS)


def select_layers(model, layers, candidates):
    """The layers of `candidates` (layers of `model`) that `layers=` selects.

    Args:
        model: the model, named in errors.
        layers: a layer name or class, or a list of them.
        candidates: the layers to choose from.

    Raises:
        TypeError: an entry is neither a name nor a class.
        ValueError: an entry matches no candidate (the message lists them).
    """
    selected = []
    for entry in [layers] if isinstance(layers, (str, type)) else layers:
        if isinstance(entry, str):
            found = [x for x in candidates if x.name == entry]
        elif isinstance(entry, type):
            found = [x for x in candidates if isinstance(x, entry)]
        else:
            raise TypeError(
                "`layers` must list layer names (str) or layer classes. "
                f"Received: {entry!r} of type {type(entry).__name__}"
            )
        if not found:
            raise ValueError(
                f"`layers` names {getattr(entry, '__name__', entry)!r}, but "
                f"{model.name!r} has no layer of that name or class. Its "
                f"layers are: {[x.name for x in candidates]}"
            )
        selected.extend(found)
    return selected
