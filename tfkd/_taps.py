"""One-pass feature taps and width adapters for feature distillation.

A tap names a layer by its path in the model:

- `"features"`: a layer of the model;
- `"base"`: a nested model (a backbone), whose output inside the outer model
  is the feature;
- `"base/block_1_expand_relu"`: a layer of a nested model, at any depth
  (`"outer_block/inner_model/conv"`).

`layer_paths(model)` lists them all. The features come from the model's own
call: while `model(x, training=training)` runs, the tapped layers (and the
nested models around them) record what their `call` returns. So the outputs
are exactly what a plain call returns (any structure, training-mode
semantics included), the features come from that same forward pass, and
every weight is the model's own. Nothing is rebuilt or copied, which is why
it works the same in Keras 3 and tf_keras, in `tf.function`, with
`jit_compile=True` and in each replica of a `tf.distribute` strategy.
"""

import contextlib
import functools
import threading
import weakref

import tensorflow as tf

from tfkd._keras import keras

# Static feature shapes found when a tapped model was built:
# {model: {path: shape}}, so that `feature_shape` need not trace it again.
_FEATURE_SHAPES = weakref.WeakKeyDictionary()


def layer_paths(model) -> list:
    """Every tappable path of `model`, depth first.

    A nested model's path comes first, then the paths of its own layers
    (`"base"`, `"base/Conv1"`, ...). Input layers are not tappable.
    """
    paths = []
    for layer in _sublayers(model):
        paths.append(layer.name)
        if _is_nested_model(layer):
            paths.extend(f"{layer.name}/{p}" for p in layer_paths(layer))
    return paths


def tapped_model(model, layer_names, role):
    """A callable `(x, training) -> (outputs, {layer_name: features})`.

    `outputs` is what `model(x, training=training)` returns; the features
    of the named layers (paths, see the module docstring) come from the
    same, single forward pass.

    Args:
        model: a Functional or Sequential `keras.Model`. Nested models in
            it may be of any kind, subclassed included.
        layer_names: the paths to tap.
        role: `"teacher"` or `"student"`, for error messages.

    Returns:
        The forward function.

    Raises:
        ValueError: if `model` is subclassed or not built, if a path names
            no layer, or if a tapped layer is not called exactly once in a
            forward pass (a nested model applied twice, say).
    """
    if not layer_names:
        return lambda x, training: (model(x, training=training), {})
    if not _known_inputs(model):
        raise ValueError(
            f"Feature distillation taps layers {list(layer_names)} of the "
            f"{role} {model.name!r}, which needs a Functional or Sequential "
            f"model with known inputs; {type(model).__name__} is subclassed "
            "or not built. Rebuild it as a Functional model, or build it on "
            "a `keras.Input`."
        )
    chains = {name: _resolve(model, name, role) for name in layer_names}
    # Every nested model is watched, so that the chain of models around a
    # call tells which path it belongs to.
    watched = {id(layer): layer for chain in chains.values() for layer in chain}
    for nested in _nested_models(model):
        watched[id(nested)] = nested
    watched = list(watched.values())

    def forward(x, training):
        with _recording(watched) as calls:
            outputs = model(x, training=training)
        features = {
            name: _single_call(calls, chain, name, model, role)
            for name, chain in chains.items()
        }
        return outputs, features

    # One trace now finds a tap that is not called exactly once before
    # training starts, and gives the static feature shapes.
    _FEATURE_SHAPES.setdefault(model, {}).update(_trace_shapes(model, forward))
    return forward


def feature_shape(model, layer_name):
    """The static shape of a tap's features, batch axis included.

    The shape is the one in the forward pass of `model`, which for a layer
    of a nested model can be more precise than the layer's own `output`
    (a backbone built for any image size, used at 32x32).
    """
    shapes = _FEATURE_SHAPES.get(model, {})
    if layer_name not in shapes:
        tapped_model(model, [layer_name], "model")
        shapes = _FEATURE_SHAPES[model]
    return shapes[layer_name]


def layer_names(terms, role):
    """The sorted names of the layers that `terms`' methods tap, on one side
    (`role`: `"teacher_layer"` or `"student_layer"`)."""
    return sorted(
        {
            getattr(term.method, role)
            for term in terms
            if getattr(term.method, role) is not None
        }
    )


def check_feature_ranks(teacher, student, methods):
    """Refuses a tap whose features lack the rank that its method declares
    (`feature_rank`, e.g. 4 for NHWC maps), before any step runs."""
    for method in methods:
        rank = method.feature_rank
        if rank is None or method.teacher_layer is None:
            continue
        for role, model, layer in (
            ("teacher", teacher, method.teacher_layer),
            ("student", student, method.student_layer),
        ):
            shape = feature_shape(model, layer)
            flat = all(d is None or isinstance(d, int) for d in shape)
            if flat and len(shape) != rank:
                raise ValueError(
                    f"{type(method).__name__} reads features of rank {rank} "
                    f"(batch axis included; 4: NHWC maps), but {role} layer "
                    f"{layer!r} outputs shape {tuple(shape)}. Tap a layer "
                    f"whose output has rank {rank}."
                )


def make_adapters(teacher, student, losses):
    """One learnable adapter per term whose feature widths differ."""
    adapters = []
    for i, loss in enumerate(losses):
        adapter = None
        if loss.requires_matching_width and loss.student_layer is not None:
            t_shape = feature_shape(teacher, loss.teacher_layer)
            s_shape = feature_shape(student, loss.student_layer)
            if len(t_shape) != len(s_shape):
                raise ValueError(
                    f"{type(loss).__name__} compares teacher layer "
                    f"{loss.teacher_layer!r} of shape {t_shape} with student "
                    f"layer {loss.student_layer!r} of shape {s_shape}: their "
                    "ranks differ. Tap layers of the same kind (both NHWC "
                    "maps or both vectors)."
                )
            if t_shape[1:-1] != s_shape[1:-1]:
                raise ValueError(
                    f"{type(loss).__name__} needs the same spatial size: "
                    f"teacher layer {loss.teacher_layer!r} is {t_shape}, "
                    f"student layer {loss.student_layer!r} is {s_shape}."
                )
            if t_shape[-1] != s_shape[-1]:
                width = t_shape[-1]
                if len(s_shape) == 4:
                    adapter = keras.layers.Conv2D(width, 1, name=f"adapter_{i}")
                else:
                    adapter = keras.layers.Dense(width, name=f"adapter_{i}")
                adapter.build(s_shape)
        adapters.append(adapter)
    return adapters


# Paths.


def _sublayers(model):
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def _is_nested_model(layer):
    return isinstance(layer, keras.Model)


def _nested_models(model):
    for layer in _sublayers(model):
        if _is_nested_model(layer):
            yield layer
            yield from _nested_models(layer)


def _known_inputs(model):
    try:
        return bool(model.inputs)
    except AttributeError:  # Keras 3: a Sequential model never built.
        return False


def _resolve(model, path, role):
    """The layers from `model` down to the tapped one: `[base, ..., layer]`."""
    chain = _find(model, path)
    if chain is None:
        raise ValueError(
            f"The {role} {model.name!r} has no layer named {path!r}. Its "
            f"layers are: {[layer.name for layer in _sublayers(model)]}."
            + _nested_paths_message(model)
        )
    return chain


def _nested_paths_message(model):
    """The layers of the nested models, grouped by their path prefix."""
    groups = []

    def visit(parent, prefix):
        for layer in _sublayers(parent):
            if _is_nested_model(layer):
                path = f"{prefix}{layer.name}/"
                names = [inner.name for inner in _sublayers(layer)]
                groups.append(f"{path!r} + one of {names}")
                visit(layer, path)

    visit(model, "")
    if not groups:
        return ""
    return (
        " A nested model's layers are tapped by path, 'model_name/"
        "layer_name' at any depth: " + "; ".join(groups) + "."
    )


def _find(model, path):
    for layer in _sublayers(model):
        if layer.name == path:
            return [layer]
    # Layer names may contain "/" in tf_keras: try every nested model whose
    # name is a prefix of the path.
    for layer in _sublayers(model):
        if _is_nested_model(layer) and path.startswith(layer.name + "/"):
            rest = _find(layer, path[len(layer.name) + 1 :])
            if rest is not None:
                return [layer] + rest
    return None


# Recording.


def _single_call(calls, chain, name, model, role):
    """The outputs of the one call of `chain[-1]` made inside `chain[:-1]`."""
    ancestors = tuple(id(layer) for layer in chain[:-1])
    found = [
        outputs
        for layer, around, outputs in calls
        if layer is chain[-1] and around == ancestors
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            f"The {role} {model.name!r} does not call the layer {name!r} in "
            "its forward pass, so it cannot be tapped. Tap a layer that "
            "computes a part of the outputs."
        )
    raise ValueError(
        f"The {role} {model.name!r} calls the layer {name!r} {len(found)} "
        "times in one forward pass (a shared layer or nested model), so its "
        "features are ambiguous. Tap a layer that runs once, or wrap the "
        "call to tap in its own model over the same layers (e.g. `first = "
        "keras.Model(base.input, base.output, name='first_call')`, applied "
        "in place of `base` once) and tap it by that name."
    )


def _trace_shapes(model, forward):
    """Traces one forward pass: `{path: static shape}` of its features."""
    if isinstance(model, keras.Sequential):
        structure = model.inputs[0]
    else:
        structure = model.input
    specs = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), structure
    )
    shapes = {}

    def trace(x):
        _, features = forward(x, training=False)
        for name, value in features.items():
            shapes[name] = tf.nest.map_structure(
                lambda t: tuple(t.shape.as_list()), value
            )

    # A plain call first: a tf_keras Sequential built without an `Input`
    # builds its graph network on its first call, calling its layers once
    # more, which the recorded trace would take for a second call.
    tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
    # AutoGraph on, as in Keras' own step functions: Keras 3 layers rely on
    # the enclosing `tf.function` to convert their Python control flow.
    tf.function(trace).get_concrete_function(specs)
    return shapes


# The thread's recording: `stack` holds the watched models being called,
# `calls` is a list of (layer, ids of the watched models it was called in,
# outputs). Thread-local because MirroredStrategy runs each replica's step
# in its own thread, all on the same layers.
_ACTIVE = threading.local()
_LOCK = threading.Lock()
# id(layer) -> [layer, number of recordings using it, its own `call`].
_WATCHED = {}
_NO_INSTANCE_CALL = object()


@contextlib.contextmanager
def _recording(layers):
    """Records the calls of `layers` made on this thread inside the block."""
    watching = []
    previous = getattr(_ACTIVE, "state", None)
    try:
        with _LOCK:
            for layer in layers:
                _watch(layer)
                watching.append(layer)
        state = _ACTIVE.state = {
            "stack": [],
            "calls": [],
            "graph": tf.compat.v1.get_default_graph(),
        }
        yield state["calls"]
    finally:
        _ACTIVE.state = previous
        with _LOCK:
            for layer in watching:
                _unwatch(layer)


def _watch(layer):
    """Wraps the layer's `call` in one that records its outputs.

    This sets (then removes) an instance attribute named `call`, which
    `Layer.__call__` of both Keras 3 and tf_keras looks up; no private
    Keras attribute is used. The wrapper is inert outside `_recording`.
    """
    entry = _WATCHED.get(id(layer))
    if entry is not None:
        entry[1] += 1
        return
    own = vars(layer).get("call", _NO_INSTANCE_CALL)
    call = layer.call
    is_model = _is_nested_model(layer)

    @functools.wraps(call)
    def recording_call(*args, **kwargs):
        state = getattr(_ACTIVE, "state", None)
        if state is None:  # another thread, or outside a recording
            return call(*args, **kwargs)
        if tf.compat.v1.get_default_graph() is not state["graph"]:
            # A call in a scratch graph: tf_keras infers the output shapes
            # of a Sequential built without an `Input` that way.
            return call(*args, **kwargs)
        around = tuple(id(model) for model in state["stack"])
        if not is_model:
            outputs = call(*args, **kwargs)
        else:
            state["stack"].append(layer)
            try:
                outputs = call(*args, **kwargs)
            finally:
                state["stack"].pop()
        state["calls"].append((layer, around, outputs))
        return outputs

    # `object.__setattr__`: a function needs none of Keras' attribute
    # tracking, and this keeps the layer's tracked state untouched.
    object.__setattr__(layer, "call", recording_call)
    _WATCHED[id(layer)] = [layer, 1, own]


def _unwatch(layer):
    entry = _WATCHED[id(layer)]
    entry[1] -= 1
    if entry[1]:
        return
    del _WATCHED[id(layer)]
    if entry[2] is _NO_INSTANCE_CALL:
        object.__delattr__(layer, "call")
    else:
        object.__setattr__(layer, "call", entry[2])
