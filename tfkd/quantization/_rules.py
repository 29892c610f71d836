"""The per-layer rules of `quantize_aware`: what each layer call becomes.

`RULES` maps a Keras layer class to its rule; `rule_for` finds a layer's
(its exact class, then BatchNormalization subclasses, nested models and
Keras operations; any other layer is kept float by `float_layer`). A rule
takes the rewriter (`_rewrite._Rewriter`) and one `Call`, and returns the
`Plan` of the call: the layer to call, on which inputs, and where ranges
go; or None when it has added the call itself (an affine layer as a 1x1
depthwise convolution).

To support a new layer, write its rule and add its class to `RULES`.
"""

import dataclasses

import numpy as np

from tfkd import _keras
from tfkd.quantization import _folding
from tfkd.quantization import _graph
from tfkd.quantization import _layers

keras = _keras.keras

FUSED_ACTIVATIONS = ("relu", "relu6")


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a layer in the model being rewritten."""

    layer: object
    args: tuple
    kwargs: dict
    outs: list
    batch_norm: object = None  # The BatchNormalization folded into it.
    sole_consumer: bool = False  # Each input is taken by this call alone.

    @property
    def tensors(self):
        return _graph.flat_tensors((self.args, self.kwargs))

    @property
    def activation(self):
        return activation_name(self.layer)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the rewrite calls a layer: `layer` on the inputs' fake-quantized
    tensors (their float tensors if `raw_inputs`: an activation fused into
    the layer before it); `out_quantized`: the outputs keep their inputs'
    range; `quantize_output`: a range on the outputs; `split`: the layer's
    activation split off into an `Activation` layer after a range."""

    layer: object
    raw_inputs: bool = False
    out_quantized: bool = False
    quantize_output: bool = False
    split: bool = False


def activation_name(layer):
    """The name of a layer's activation (`None` if it has none)."""
    if type(layer).__name__ == "ReLU":
        config = layer.get_config()
        plain = not config.get("negative_slope") and not config.get("threshold")
        if plain and config.get("max_value") in (None, 6.0):
            return "relu" if config.get("max_value") is None else "relu6"
        return "other"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", str(activation))
    return None if name == "linear" else name


def clone_layer(layer, cls=None, **overrides):
    """A new `cls` (default: the layer's class) from the layer's config."""
    config = {**layer.get_config(), **overrides}
    cls = cls or type(layer)
    try:
        return cls.from_config(config)
    except Exception as error:  # Keras raises many types here.
        raise ValueError(
            f"quantize_aware could not rebuild layer {layer.name!r} "
            f"({type(layer).__name__}) from its config ({error}). Give the "
            "class a `get_config` that returns its constructor arguments, and "
            "pass it in `custom_objects`."
        ) from error


def _clone_or_share(layer):
    """A clone of `layer`; a stateless layer that cannot be rebuilt from its
    config is shared with the original instead."""
    try:
        return clone_layer(layer)
    except ValueError:
        if layer.weights:
            raise
        return layer


def batch_norm_arrays(layer):
    """A BatchNormalization's inference statistics, as `_folding` takes
    them: `mean`, `variance`, `epsilon`, `gamma` and `beta` (None without
    `scale` / `center`)."""
    return {
        "mean": np.asarray(layer.moving_mean),
        "variance": np.asarray(layer.moving_variance),
        "epsilon": layer.epsilon,
        "gamma": np.asarray(layer.gamma) if layer.scale else None,
        "beta": np.asarray(layer.beta) if layer.center else None,
    }


def _affine_map(layer, shape):
    """`(scale, offset)` per channel if `layer` is elementwise affine on the
    last axis of inputs of `shape` at inference (Rescaling; Normalization,
    not inverted; a BatchNormalization on its moving statistics), else
    None."""
    channels = shape[-1]
    if channels is None:
        return None
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(shape) - 1):
            return None
        scale, offset = _folding.batch_norm_affine(**batch_norm_arrays(layer))
    elif type(layer).__name__ == "Rescaling":
        scale = np.asarray(layer.scale, np.float64)
        offset = np.asarray(layer.offset, np.float64)
    elif type(layer).__name__ == "Normalization" and not layer.invert:
        if layer.mean is None or tuple(layer.axis) != (-1,):
            return None
        scale, offset = _folding.normalization_affine(
            layer.mean, layer.variance, keras.backend.epsilon()
        )
    else:
        return None
    return _folding.per_channel(scale, offset, channels)


def _float_clone(rewriter, call):
    """The layer's float clone (or the layer, stateless and not rebuilt);
    one with trainable weights is listed in the "keeps float" warning."""
    layer = call.layer
    clone, new = rewriter.clone_once(layer, lambda: _clone_or_share(layer))
    if new and layer.weights:
        rewriter.copies.append((layer, clone, None))
        if (
            rewriter.layers is None
            and not isinstance(layer, keras.layers.BatchNormalization)
            and any(w.trainable for w in layer.weights)
        ):
            rewriter.float_layers.append(
                f"{layer.name} ({type(layer).__name__})"
            )
    return clone


def float_layer(rewriter, call):
    """Any other layer: kept float, on fake-quantized inputs, with a range
    after its activation if it has one."""
    clone = _float_clone(rewriter, call)
    return Plan(clone, quantize_output=call.activation is not None)


def _operation(rewriter, call):
    """A stateless Keras operation (`keras.ops.*`), called as it is."""
    return Plan(call.layer)


def _nested(rewriter, call):
    """A nested model, rewritten (its outputs carry their ranges)."""
    layer = call.layer
    clone, _ = rewriter.clone_once(layer, lambda: rewriter.nested(layer))
    return Plan(clone, out_quantized=True)


def _kernel(rewriter, call):
    """Dense, Conv1D, Conv2D, DepthwiseConv2D: their `Quantized*` layer
    (a BatchNormalization after it folded in); an activation the converter
    keeps as an op of its own (tanh, gelu, ...), whose input needs a range
    too, is split off."""
    layer = call.layer
    if not rewriter.selected(layer):
        return float_layer(rewriter, call)
    overrides = {"use_bias": True} if call.batch_norm is not None else {}
    activation = call.activation
    split = activation not in (None, *FUSED_ACTIVATIONS)
    if split:
        overrides["activation"] = "linear"
    clone, new = rewriter.clone_once(
        layer,
        lambda: clone_layer(layer, _layers.QUANTIZED[type(layer)], **overrides),
    )
    if new:
        rewriter.copies.append((layer, clone, call.batch_norm))
    return Plan(clone, quantize_output=activation is not None, split=split)


def _affine(rewriter, call):
    """BatchNormalization (not folded), Rescaling, Normalization: a 1x1
    depthwise convolution if affine per channel (channels last, rank 2 to
    4), else kept float."""
    tensors = call.tensors
    affine = None
    rank = len(getattr(tensors[0], "shape", ())) if tensors else 0
    if (
        len(tensors) == 1
        and 2 <= rank <= 4
        and keras.config.image_data_format() == "channels_last"
    ):
        affine = _affine_map(call.layer, tensors[0].shape)
    if affine is None:
        return float_layer(rewriter, call)
    args, _ = rewriter.call_inputs(call)
    _affine_convolution(rewriter, call.layer, args[0], call.outs, affine)
    return None


def _affine_convolution(rewriter, layer, inputs, outs, affine):
    """An affine layer as a 1x1 depthwise convolution, which the int8
    converter quantizes whole (an elementwise op with float constants
    would stay float); rank 2 and 3 inputs are reshaped around it.

    Rescaling and Normalization are frozen; a BatchNormalization (not
    folded into a layer before it) keeps its trainability: its moving
    statistics are frozen in the kernel, its scale and offset train.
    """
    batch_norm = isinstance(layer, keras.layers.BatchNormalization)
    clone, new = rewriter.clone_once(
        layer,
        lambda: _layers.QuantizedDepthwiseConv2D(
            1,
            name=layer.name,
            trainable=batch_norm and layer.trainable,
            dtype=layer.dtype_policy,
        ),
    )
    shape = tuple(inputs.shape[1:])
    if len(shape) == 3:
        result = clone(inputs)
        quantized = False
    else:
        image = (-1, 1, shape[-1]) if len(shape) == 2 else (1, 1, shape[-1])
        reshape = keras.layers.Reshape(
            image, name=rewriter.unique(f"{layer.name}_to_4d")
        )
        result = rewriter.fake_quant(layer.name, inputs.dtype)(
            clone(reshape(inputs))
        )
        back = (-1, shape[-1]) if len(shape) == 2 else (shape[-1],)
        result = keras.layers.Reshape(
            back, name=rewriter.unique(f"{layer.name}_back")
        )(result)
        quantized = True
    if new:
        scale, offset = affine
        clone.set_weights([scale.reshape(1, 1, -1, 1), offset])
    rewriter.new[id(outs[0])] = [result, quantized]


def _concatenate(rewriter, call):
    """One range on its inputs and output (`_graph.concatenation_groups`)."""
    return Plan(_float_clone(rewriter, call), quantize_output=True)


def _keep_range(rewriter, call):
    """Max pooling, reshapes, padding, dropout: the output keeps the input's
    range."""
    return Plan(_float_clone(rewriter, call), out_quantized=True)


def _activation(rewriter, call):
    """ReLU and Activation: a ReLU (or ReLU6) that is its input's only
    consumer is fused into the layer before it (its input takes no range);
    a range on its output. Another activation is kept float."""
    if call.activation not in FUSED_ACTIVATIONS:
        return float_layer(rewriter, call)
    fusable = call.sole_consumer and len(call.tensors) == 1
    clone = _float_clone(rewriter, call)
    return Plan(clone, raw_inputs=fusable, quantize_output=True)


def _merge(rewriter, call):
    """Add, Subtract, ...: the output's range is placed where it is used
    (a ReLU after it is fused)."""
    return Plan(_float_clone(rewriter, call))


_KEEP_RANGE = (
    "Flatten",
    "Reshape",
    "Permute",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "Cropping1D",
    "Cropping2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "Identity",
    "ActivityRegularization",
)
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

# Keras layer class -> the rule for its calls (by exact class).
RULES = {
    **{cls: _kernel for cls in _layers.QUANTIZED},
    keras.layers.BatchNormalization: _affine,
    keras.layers.Rescaling: _affine,
    keras.layers.Normalization: _affine,
    keras.layers.Concatenate: _concatenate,
    **{getattr(keras.layers, name): _keep_range for name in _KEEP_RANGE},
    keras.layers.ReLU: _activation,
    keras.layers.Activation: _activation,
    **{getattr(keras.layers, name): _merge for name in _MERGES},
}


def rule_for(layer):
    """The rule for the calls of `layer`."""
    rule = RULES.get(type(layer))
    if rule is not None:
        return rule
    if isinstance(layer, keras.layers.BatchNormalization):
        return _affine
    if isinstance(layer, keras.Model):
        return _nested
    if not isinstance(layer, keras.layers.Layer):
        return _operation
    return float_layer
