"""The graph walk of `quantize_aware`: a Keras 3 model as its layer calls.

A Sequential or Functional model is read as `(inputs, steps, outputs)`,
each step one call `(layer, args, kwargs, outputs)` in the order the model
runs them; the maps below say which step makes and which steps take each
tensor, which the rewrite's rules (`_rules.py`) and BatchNormalization
folding need. Tensors are keyed by `id`.
"""

from tfkd import _keras

keras = _keras.keras


class Token:
    """Stands for a tensor of a Sequential model (which has no graph)."""


def steps(model):
    """`(inputs, steps, outputs)` of a Sequential or Functional model."""
    if isinstance(model, keras.Sequential):
        return _sequential_steps(model)
    if not _keras.is_graph_network(model):
        raise ValueError(
            f"quantize_aware cannot rewrite {model.name!r}, a subclassed "
            f"{type(model).__name__}: only Sequential and Functional models "
            "have a graph of layers to rewrite. Rebuild it as a Functional "
            "model (`keras.Model(inputs, outputs)`) with the same layers, and "
            "copy the weights with `set_weights`."
        )
    return model.input, _keras.graph_steps(model), model.output


def _sequential_steps(model):
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
    calls = []
    for layer in model.layers:
        try:
            output = layer.output  # Its one call in the Sequential.
        except (AttributeError, ValueError):
            output = Token()  # Called elsewhere too: no one output.
        calls.append((layer, (token,), {}, [output]))
        token = output
    return inputs[0], calls, token


def is_tensor(value):
    return isinstance(value, (keras.KerasTensor, Token))


def flat_tensors(structure):
    """The tensors of a nested structure (e.g. a call's `(args, kwargs)`)."""
    return [x for x in keras.tree.flatten(structure) if is_tensor(x)]


def consumers(steps, outputs):
    """`{id(tensor): [index of each step that takes it]}`; a model output
    is taken by `None` too."""
    taken = {}
    for index, (_, args, kwargs, _) in enumerate(steps):
        for tensor in flat_tensors((args, kwargs)):
            taken.setdefault(id(tensor), []).append(index)
    for tensor in flat_tensors(outputs):
        taken.setdefault(id(tensor), []).append(None)
    return taken


def producers(steps):
    """`{id(tensor): index of the step that makes it}`."""
    made = {}
    for index, (_, _, _, outs) in enumerate(steps):
        for tensor in outs:
            made[id(tensor)] = index
    return made


def call_counts(steps):
    """`{id(layer): how many steps call it}`."""
    counts = {}
    for layer, _, _, _ in steps:
        counts[id(layer)] = counts.get(id(layer), 0) + 1
    return counts


def concatenation_groups(steps):
    """{id(tensor): (group name, moves the range)} for Concatenates.

    The inputs and outputs of Concatenates that share a tensor form one
    group with one range (TFLite gives a concatenation's inputs and output
    one scale); the range moves with the concatenated outputs.
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
        keys = [id(t) for t in flat_tensors((args, kwargs))]
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
