"""Keras 3 quantization-aware training: a model rewritten with fake quants.

`quantize_aware` re-traces a Sequential or Functional model (nested ones
too) into new layers built from each layer's config, with the weights
copied, so the original is untouched:

- BatchNormalization right after a Conv / DepthwiseConv2D / Dense (its only
  consumer, channels last) is folded into that layer's kernel and bias, as
  the TFLite converter folds it, so what trains is what ships;
- Dense, Conv1D, Conv2D, DepthwiseConv2D become their `Quantized*` layers
  (`_layers.py`): int8 kernels, per channel for convolutions; an activation
  the converter does not fuse (tanh, gelu, swish, ...) is split off into an
  `Activation` layer, with a range on its input;
- a BatchNormalization that cannot be folded (after a ReLU, shared, ...),
  Rescaling and Normalization become a 1x1 depthwise convolution (reshaped
  around for vectors and sequences), which the converter quantizes whole;
  the BatchNormalization's moving statistics are frozen, its scale and
  offset still train;
- a `FakeQuant` range is placed on every tensor that an int8 TFLite model
  quantizes: the float inputs, the output of each nonlinear activation, and
  each tensor where it is consumed by a layer that is not its fused
  activation (a linear conv / Dense / Add followed only by a ReLU is fused,
  as the converter fuses it); a Concatenate's inputs and output share one
  range (one `FakeQuant` called on each); max pooling, reshapes, padding
  and dropout keep their input's range; the model's outputs get one too.

Over 400 lines on purpose: one graph walk (`_Rewriter`), whose rules above
decide together where each range goes; split, each rule would need the
walk's state passed around.
"""

import warnings

import numpy as np

from tfkd import _keras
from tfkd.quantization import _layers
from tfkd.quantization._common import iter_layers
from tfkd.quantization._common import select_layers

keras = _keras.keras

# Layers whose output keeps the quantization of their input.
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
_FUSED_ACTIVATIONS = ("relu", "relu6")
_MIXED_POLICIES = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


class _Token:
    """Stands for a tensor of a Sequential model (which has no graph)."""


def _steps(model):
    """`(inputs, steps, outputs)` of a Sequential or Functional model."""
    if isinstance(model, keras.Sequential):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                f"quantize_aware needs the input shape of the Sequential "
                f"model {model.name!r}: start it with `keras.Input(shape)` "
                "(or call `model.build(input_shape)`)."
            )
        token = inputs[0]
        steps = []
        for layer in model.layers:
            try:
                output = layer.output  # Its one call in the Sequential.
            except (AttributeError, ValueError):
                output = _Token()  # Called elsewhere too: no one output.
            steps.append((layer, (token,), {}, [output]))
            token = output
        return inputs[0], steps, token
    if not _keras.is_graph_network(model):
        raise ValueError(
            f"quantize_aware cannot rewrite {model.name!r}, a subclassed "
            f"{type(model).__name__}: only Sequential and Functional models "
            "have a graph of layers to rewrite. Rebuild it as a Functional "
            "model (`keras.Model(inputs, outputs)`) with the same layers, and "
            "copy the weights with `set_weights`."
        )
    return model.input, _keras.graph_steps(model), model.output


def _is_tensor(value):
    return isinstance(value, (keras.KerasTensor, _Token))


def _flat_tensors(structure):
    return [x for x in keras.tree.flatten(structure) if _is_tensor(x)]


def _activation_name(layer):
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


def _clone(layer, cls=None, **overrides):
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


def _affine(layer, shape):
    """`(scale, offset)` per channel if `layer` is elementwise affine on the
    last axis of inputs of `shape` at inference (Rescaling; Normalization,
    not inverted; a BatchNormalization on its moving statistics), else
    None."""
    kind = type(layer).__name__
    channels = shape[-1]
    if channels is None:
        return None
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(shape) - 1):
            return None
        scale = 1.0 / np.sqrt(
            np.asarray(layer.moving_variance, np.float64) + layer.epsilon
        )
        if layer.scale:
            scale = scale * np.asarray(layer.gamma, np.float64)
        offset = -np.asarray(layer.moving_mean, np.float64) * scale
        if layer.center:
            offset = offset + np.asarray(layer.beta, np.float64)
    elif kind == "Rescaling":
        scale = np.asarray(layer.scale, np.float64)
        offset = np.asarray(layer.offset, np.float64)
    elif kind == "Normalization" and not layer.invert:
        if layer.mean is None or tuple(layer.axis) != (-1,):
            return None
        scale = 1.0 / np.maximum(
            np.sqrt(np.asarray(layer.variance, np.float64)),
            keras.backend.epsilon(),
        )
        offset = -np.asarray(layer.mean, np.float64) * scale
    else:
        return None
    try:
        scale = np.broadcast_to(scale.reshape(-1), (channels,))
        offset = np.broadcast_to(offset.reshape(-1), (channels,))
    except ValueError:
        return None
    return scale.astype(np.float32), offset.astype(np.float32)


def _clone_or_share(layer):
    """A clone of `layer`; a stateless layer that cannot be rebuilt from its
    config is shared with the original instead."""
    try:
        return _clone(layer)
    except ValueError:
        if layer.weights:
            raise
        return layer


def _fold(kernel, bias, batch_norm, depthwise):
    """Folds a BatchNormalization into the kernel and bias before it."""
    gamma, beta, mean, variance = (
        np.asarray(v, np.float64) if v is not None else None
        for v in (
            getattr(batch_norm, "gamma", None),
            getattr(batch_norm, "beta", None),
            batch_norm.moving_mean,
            batch_norm.moving_variance,
        )
    )
    factor = 1.0 / np.sqrt(variance + batch_norm.epsilon)
    if gamma is not None:
        factor = factor * gamma
    kernel = np.asarray(kernel, np.float64)
    if depthwise:
        kernel = kernel * factor.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * factor
    bias = (np.asarray(bias, np.float64) - mean) * factor
    if beta is not None:
        bias = bias + beta
    return kernel.astype(np.float32), bias.astype(np.float32)


class _Rewriter:
    """Rewrites one model; `layers` (a set of ids) limits the kernels."""

    def __init__(self, layers, momentum):
        self.layers = layers
        self.momentum = momentum
        self.float_layers = []
        self.copies = []  # (original, clone, folded batch norm or None)
        # id(original layer) -> its clone: a layer called at several places
        # of the graph keeps one set of weights.
        self.clones = {}
        self.activations = {}  # id(original layer) -> its split activation

    def selected(self, layer):
        return self.layers is None or id(layer) in self.layers

    def rewrite(self, model, quantize_inputs=True):
        inputs, steps, outputs = _steps(model)
        consumers = {}
        for index, (_, args, kwargs, _) in enumerate(steps):
            for tensor in _flat_tensors((args, kwargs)):
                consumers.setdefault(id(tensor), []).append(index)
        for tensor in _flat_tensors(outputs):
            consumers.setdefault(id(tensor), []).append(None)
        folds = self._folds(steps, consumers)
        self.groups = self._concatenation_groups(steps)
        self.group_layers = {}
        self.new = {}  # id(original tensor) -> [new tensor, quantized]
        self.names = {layer.name for layer in model.layers}

        def new_input(tensor):
            layer = _keras.producing_layer(tensor)
            return keras.Input(
                batch_shape=tuple(tensor.shape),
                dtype=tensor.dtype,
                name=layer.name if layer is not None else None,
            )

        new_inputs = keras.tree.map_structure(new_input, inputs)
        for old, new in zip(
            keras.tree.flatten(inputs), keras.tree.flatten(new_inputs)
        ):
            self.new[id(old)] = [new, not quantize_inputs]
            if quantize_inputs:
                self.quantized(old, f"{model.name}_input")

        for index, (layer, args, kwargs, outs) in enumerate(steps):
            if index in folds.values():  # A folded BatchNormalization.
                (source,) = _flat_tensors(args)
                self.new[id(outs[0])] = list(self.new[id(source)])
                continue
            batch_norm = steps[folds[index]][0] if index in folds else None
            sole = [
                len(consumers.get(id(t), ())) == 1
                for t in _flat_tensors((args, kwargs))
            ]
            self.step(layer, args, kwargs, outs, batch_norm, all(sole))

        new_outputs = keras.tree.map_structure(
            lambda t: self.quantized(t, f"{model.name}_output"), outputs
        )
        return keras.Model(new_inputs, new_outputs, name=model.name)

    def _folds(self, steps, consumers):
        """{index of a kernel layer: index of the BatchNormalization after}."""
        producer = {}
        for index, (_, _, _, outs) in enumerate(steps):
            for tensor in outs:
                producer[id(tensor)] = index
        calls = {}
        for layer, _, _, _ in steps:
            calls[id(layer)] = calls.get(id(layer), 0) + 1
        folds = {}
        for index, (layer, args, kwargs, _) in enumerate(steps):
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            tensors = _flat_tensors((args, kwargs))
            if len(tensors) != 1 or id(tensors[0]) not in producer:
                continue
            source = producer[id(tensors[0])]
            kernel_layer = steps[source][0]
            axis = layer.axis if isinstance(layer.axis, int) else None
            rank = len(tensors[0].shape) if hasattr(tensors[0], "shape") else 0
            if (
                type(kernel_layer) in _layers.QUANTIZED
                and calls[id(kernel_layer)] == 1
                and calls[id(layer)] == 1
                and self.selected(kernel_layer)
                and _activation_name(kernel_layer) is None
                and getattr(kernel_layer, "data_format", "channels_last")
                == "channels_last"
                and axis in (-1, rank - 1)
                and consumers[id(tensors[0])] == [index]
            ):
                folds[source] = index
        return folds

    def quantized(self, tensor, name):
        """The fake-quantized new tensor for an original one (added once)."""
        entry = self.new[id(tensor)]
        new, done = entry
        if done or not new.dtype.startswith("float"):
            return new
        group = self.groups.get(id(tensor))
        if group is None:
            entry[:] = [self.fake_quant(name, new.dtype)(new), True]
            return entry[0]
        if group[0] not in self.group_layers:
            self.group_layers[group[0]] = self.fake_quant(group[0], new.dtype)
        layer = self.group_layers[group[0]]
        entry[:] = [layer(new, update=group[1]), True]
        return entry[0]

    @staticmethod
    def _concatenation_groups(steps):
        """{id(tensor): (group name, moves the range)} for Concatenates.

        The inputs and outputs of Concatenates that share a tensor form one
        group with one range (TFLite gives a concatenation's inputs and
        output one scale); the range moves with the concatenated outputs.
        """
        parent = {}

        def root(key):
            while parent.setdefault(key, key) != key:
                key = parent[key]
            return key

        outputs, names = set(), {}
        for layer, args, kwargs, outs in steps:
            if type(layer).__name__ != "Concatenate":
                continue
            keys = [id(t) for t in _flat_tensors((args, kwargs))]
            keys.append(id(outs[0]))
            outputs.add(id(outs[0]))
            for key in keys[1:]:
                parent[root(key)] = root(keys[0])
            names.setdefault(root(keys[0]), layer.name)
        groups = {}
        for key in parent:
            top = root(key)
            name = next(
                (n for k, n in names.items() if root(k) == top), "concatenate"
            )
            groups[key] = (name, key in outputs)
        return groups

    def unique(self, base):
        """`base`, or `base_2`, ...: a layer name not yet in the model."""
        name, count = base, 1
        while name in self.names:
            count += 1
            name = f"{base}_{count}"
        self.names.add(name)
        return name

    def fake_quant(self, name, dtype):
        """A `FakeQuant` layer for a tensor of `dtype`, uniquely named.

        Its dtype policy follows the tensor (a mixed-precision student's
        float16 tensors), not the global policy.
        """
        policy = _MIXED_POLICIES.get(str(dtype), "float32")
        return _layers.FakeQuant(
            momentum=self.momentum,
            name=self.unique(f"{name}_quant"),
            dtype=policy,
        )

    def step(self, layer, args, kwargs, outs, batch_norm, sole_consumer):
        kind = type(layer).__name__
        tensors = _flat_tensors((args, kwargs))
        activation = _activation_name(layer)

        def mapped(how):
            return keras.tree.map_structure(
                lambda x: how(x) if _is_tensor(x) else x, (args, kwargs)
            )

        def quantized_inputs():
            return mapped(lambda t: self.quantized(t, layer.name + "_in"))

        def raw_inputs():
            return mapped(lambda t: self.new[id(t)][0])

        quantize_output = split = False
        affine = None
        rank = len(getattr(tensors[0], "shape", ())) if tensors else 0
        if (
            len(tensors) == 1
            and 2 <= rank <= 4
            and keras.config.image_data_format() == "channels_last"
        ):
            affine = _affine(layer, tensors[0].shape)
        if affine is not None:
            self.affine_step(layer, quantized_inputs()[0][0], outs, affine)
            return
        if isinstance(layer, keras.Model):
            clone, _ = self.clone_once(layer, lambda: self.nested(layer))
            call_args, out_quantized = quantized_inputs(), True
        elif not isinstance(layer, keras.layers.Layer):
            clone = layer  # A stateless Keras operation (keras.ops.*).
            call_args, out_quantized = quantized_inputs(), False
        elif type(layer) in _layers.QUANTIZED and self.selected(layer):
            overrides = {"use_bias": True} if batch_norm is not None else {}
            # The converter keeps a tanh, gelu, ... as an op of its own,
            # whose input needs a range too: the activation is split off.
            split = activation not in (None, *_FUSED_ACTIVATIONS)
            if split:
                overrides["activation"] = "linear"
            clone, new = self.clone_once(
                layer,
                lambda: _clone(
                    layer, _layers.QUANTIZED[type(layer)], **overrides
                ),
            )
            if new:
                self.copies.append((layer, clone, batch_norm))
            call_args, out_quantized = quantized_inputs(), False
            quantize_output = activation is not None
        else:
            clone, new = self.clone_once(layer, lambda: _clone_or_share(layer))
            if new and layer.weights:
                self.copies.append((layer, clone, None))
                if (
                    self.layers is None
                    and not isinstance(layer, keras.layers.BatchNormalization)
                    and any(w.trainable for w in layer.weights)
                ):
                    self.float_layers.append(f"{layer.name} ({kind})")
            if kind == "Concatenate":
                call_args, out_quantized = quantized_inputs(), False
                quantize_output = True
            elif kind in _KEEP_RANGE:
                call_args, out_quantized = quantized_inputs(), True
            elif kind in ("ReLU", "Activation") and activation in (
                _FUSED_ACTIVATIONS
            ):
                fusable = sole_consumer and len(tensors) == 1
                call_args = raw_inputs() if fusable else quantized_inputs()
                out_quantized, quantize_output = False, True
            elif kind in _MERGES:
                call_args, out_quantized = quantized_inputs(), False
            else:
                call_args, out_quantized = quantized_inputs(), False
                quantize_output = activation is not None
        call_args, call_kwargs = call_args
        result = clone(*call_args, **call_kwargs)
        if split:
            if id(layer) not in self.activations:
                self.activations[id(layer)] = keras.layers.Activation(
                    layer.get_config()["activation"],
                    name=self.unique(f"{layer.name}_activation"),
                    dtype=layer.dtype_policy,
                )
            linear = self.fake_quant(f"{layer.name}_linear", result.dtype)
            result = self.activations[id(layer)](linear(result))
        for old, new in zip(outs, keras.tree.flatten(result)):
            self.new[id(old)] = [new, out_quantized]
            if quantize_output:
                self.quantized(old, layer.name)

    def affine_step(self, layer, inputs, outs, affine):
        """An affine layer as a 1x1 depthwise convolution, which the int8
        converter quantizes whole (an elementwise op with float constants
        would stay float); rank 2 and 3 inputs are reshaped around it.

        Rescaling and Normalization are frozen; a BatchNormalization (not
        folded into a layer before it) keeps its trainability: its moving
        statistics are frozen in the kernel, its scale and offset train.
        """
        batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        clone, new = self.clone_once(
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
                image, name=self.unique(f"{layer.name}_to_4d")
            )
            result = self.fake_quant(layer.name, inputs.dtype)(
                clone(reshape(inputs))
            )
            back = (-1, shape[-1]) if len(shape) == 2 else (shape[-1],)
            result = keras.layers.Reshape(
                back, name=self.unique(f"{layer.name}_back")
            )(result)
            quantized = True
        if new:
            scale, offset = affine
            clone.set_weights([scale.reshape(1, 1, -1, 1), offset])
        self.new[id(outs[0])] = [result, quantized]

    def clone_once(self, layer, make):
        """`(clone, new)`: the one clone of `layer`, made on first use."""
        if id(layer) in self.clones:
            return self.clones[id(layer)], False
        self.clones[id(layer)] = make()
        return self.clones[id(layer)], True

    def nested(self, model):
        """A nested model rewritten; its inputs are quantized outside."""
        inner = _Rewriter(self.layers, self.momentum)
        clone = inner.rewrite(model, quantize_inputs=False)
        self.float_layers += inner.float_layers
        self.copies += inner.copies
        return clone

    def copy_weights(self):
        for original, clone, batch_norm in self.copies:
            if batch_norm is None:
                clone.set_weights(original.get_weights())
                continue
            bias = (
                original.bias.numpy()
                if original.use_bias
                else np.zeros(clone.bias.shape, np.float32)
            )
            kernel, bias = _fold(
                original.kernel.numpy(),
                bias,
                batch_norm,
                isinstance(original, keras.layers.DepthwiseConv2D),
            )
            clone.set_weights([kernel, bias])


def resolve_layers(model, layers):
    """`layers=` (names and/or classes, any depth) as a set of layer ids, or
    None."""
    if layers is None:
        return None
    everything = list(iter_layers(model))
    return {id(x) for x in select_layers(model, layers, everything)}


def quantize_aware(model, *, layers=None, custom_objects=None, momentum=0.99):
    """Keras 3: the fake-quantized copy of `model` (see the package doc)."""
    rewriter = _Rewriter(resolve_layers(model, layers), momentum)
    with keras.saving.custom_object_scope(custom_objects or {}):
        copy = rewriter.rewrite(model)
    rewriter.copy_weights()
    if rewriter.float_layers:
        warnings.warn(
            "quantize_aware keeps these layers float (no int8 fake "
            f"quantization of their weights): {rewriter.float_layers}. Only "
            "Dense, Conv1D, Conv2D and DepthwiseConv2D kernels are "
            "quantization-aware; the converter quantizes the others after "
            "training. Pass `layers=` to choose the quantized layers and "
            "silence this warning.",
            stacklevel=3,
        )
    return copy


def learned_ranges(model):
    """`_layers.exporting()`, once every range of `model` is learned."""
    mixed = sorted(
        {
            layer.dtype_policy.name
            for layer in iter_layers(model)
            if layer.compute_dtype not in (None, "float32")
            and not isinstance(layer, keras.layers.InputLayer)
        }
    )
    if mixed:
        raise ValueError(
            f"{model.name!r} computes in {mixed}: the int8 converter needs a "
            "float32 graph around the fake quantization. Build the same "
            "student in float32 (`keras.mixed_precision.set_global_policy("
            '"float32")`), make it quantization-aware, copy the trained '
            "weights and ranges with `export_model.set_weights("
            "model.get_weights())`, and export that."
        )
    unset = [
        layer.name
        for layer in iter_layers(model)
        if isinstance(layer, _layers.FakeQuant)
        and float(layer.initialized.numpy()) == 0.0
    ]
    if unset:
        raise ValueError(
            f"The activation ranges of {model.name!r} are not learned yet "
            f"({len(unset)} of them, e.g. {unset[:3]}): they are set by "
            "training. Train the quantization-aware model (e.g. "
            "`distiller.fit(data, epochs=1)`) before exporting it."
        )
    return _layers.exporting()
