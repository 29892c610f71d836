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

The rewrite walks the graph (`_graph.py`) once, in `_Rewriter`, which
holds the new tensors and their ranges; each layer call is rewritten by
the rule of its layer class (`_rules.py`); the folding maths is NumPy
(`_folding.py`).
"""

import warnings

import numpy as np

from tfkd import _keras
from tfkd.quantization import _folding
from tfkd.quantization import _graph
from tfkd.quantization import _layers
from tfkd.quantization import _rules
from tfkd.quantization._common import iter_layers
from tfkd.quantization._common import select_layers

keras = _keras.keras

_MIXED_POLICIES = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


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
        inputs, steps, outputs = _graph.steps(model)
        consumers = _graph.consumers(steps, outputs)
        folds = self._folds(steps, consumers)
        self.groups = _graph.concatenation_groups(steps)
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
                (source,) = _graph.flat_tensors(args)
                self.new[id(outs[0])] = list(self.new[id(source)])
                continue
            batch_norm = steps[folds[index]][0] if index in folds else None
            sole = [
                len(consumers.get(id(t), ())) == 1
                for t in _graph.flat_tensors((args, kwargs))
            ]
            call = _rules.Call(layer, args, kwargs, outs, batch_norm, all(sole))
            self.step(call)

        new_outputs = keras.tree.map_structure(
            lambda t: self.quantized(t, f"{model.name}_output"), outputs
        )
        return keras.Model(new_inputs, new_outputs, name=model.name)

    def _folds(self, steps, consumers):
        """{index of a kernel layer: index of the BatchNormalization after}."""
        producer = _graph.producers(steps)
        calls = _graph.call_counts(steps)
        folds = {}
        for index, (layer, args, kwargs, _) in enumerate(steps):
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            tensors = _graph.flat_tensors((args, kwargs))
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
                and _rules.activation_name(kernel_layer) is None
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

    def call_inputs(self, call, raw=False):
        """`(args, kwargs)` of a call on the new tensors: fake-quantized, or
        as they are if `raw`."""

        def new(tensor):
            if raw:
                return self.new[id(tensor)][0]
            return self.quantized(tensor, call.layer.name + "_in")

        return keras.tree.map_structure(
            lambda x: new(x) if _graph.is_tensor(x) else x,
            (call.args, call.kwargs),
        )

    def step(self, call):
        """Adds one layer call, as the rule of its layer plans it."""
        plan = _rules.rule_for(call.layer)(self, call)
        if plan is None:  # The rule added the call itself.
            return
        args, kwargs = self.call_inputs(call, raw=plan.raw_inputs)
        result = plan.layer(*args, **kwargs)
        if plan.split:
            result = self.split_activation(call.layer, result)
        for old, new in zip(call.outs, keras.tree.flatten(result)):
            self.new[id(old)] = [new, plan.out_quantized]
            if plan.quantize_output:
                self.quantized(old, call.layer.name)

    def split_activation(self, layer, result):
        """`layer`'s activation, split off, on a range of `result`."""
        if id(layer) not in self.activations:
            self.activations[id(layer)] = keras.layers.Activation(
                layer.get_config()["activation"],
                name=self.unique(f"{layer.name}_activation"),
                dtype=layer.dtype_policy,
            )
        linear = self.fake_quant(f"{layer.name}_linear", result.dtype)
        return self.activations[id(layer)](linear(result))

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
            kernel, bias = _folding.fold(
                original.kernel.numpy(),
                bias,
                depthwise=isinstance(original, keras.layers.DepthwiseConv2D),
                **_rules.batch_norm_arrays(batch_norm),
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
