"""What both quantization back ends share: model checks and layer walks."""

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


def is_quantization_aware(model) -> bool:
    """Whether `model` holds fake-quantization layers (either back end)."""
    return has_layer(model, TFMOT_QUANTIZE_LAYERS + NATIVE_QUANTIZE_LAYERS)


def is_pruned(model) -> bool:
    """Whether `model` holds TFMOT pruning wrappers."""
    return has_layer(model, PRUNE_WRAPPERS)
