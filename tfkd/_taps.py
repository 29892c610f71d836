"""One-pass feature taps and width adapters for feature distillation."""

from tfkd._keras import keras


def tapped_model(model, layer_names, role):
    """A callable `(x, training) -> (outputs, {layer_name: features})`.

    `outputs` is what `model(x, training=training)` returns; the features
    of the named layers come from the same, single forward pass.
    """
    if not layer_names:
        return lambda x, training: (model(x, training=training), {})
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Feature distillation taps layers {layer_names} of the {role} "
            f"{model.name!r}, which needs a Functional or Sequential model with "
            f"known inputs; {type(model).__name__} is subclassed or not built. "
            "Rebuild it as a Functional model, or build it on an `keras.Input`."
        )
    available = [layer.name for layer in model.layers]
    features = []
    for name in layer_names:
        if name not in available:
            raise ValueError(
                f"The {role} {model.name!r} has no layer named {name!r}. Its layers "
                f"are: {available}"
            )
        features.append(model.get_layer(name).output)
    tapped = keras.Model(
        inputs, [model.outputs[0]] + features, name=f"{model.name}_tapped"
    )
    names = list(layer_names)

    def forward(x, training):
        outputs = tapped(x, training=training)
        return outputs[0], dict(zip(names, outputs[1:]))

    return forward


def feature_shape(model, layer_name):
    """The static shape of the named layer's output, batch axis included."""
    return tuple(model.get_layer(layer_name).output.shape)


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
                    f"{loss.teacher_layer!r} of shape {t_shape} with student layer "
                    f"{loss.student_layer!r} of shape {s_shape}: their ranks differ. "
                    "Tap layers of the same kind (both NHWC maps or both vectors)."
                )
            if t_shape[1:-1] != s_shape[1:-1]:
                raise ValueError(
                    f"{type(loss).__name__} needs the same spatial size: teacher "
                    f"layer {loss.teacher_layer!r} is {t_shape}, student layer "
                    f"{loss.student_layer!r} is {s_shape}."
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
