"""Consistent augmentation and mixup for `tfkd.Distiller`'s train step.

The Distiller augments each training batch once and gives the same view to
the teacher and to the student ("function matching", Beyer et al. 2022).
Mixup draws `lam ~ Beta(alpha, alpha)` from two Gamma draws (`Beta = G1 /
(G1 + G2)`). TensorFlow's Gamma ops (`RandomGamma`, `StatelessRandomGamma`)
have no XLA kernel, so the Gamma draws are Marsaglia and Tsang's method on
`tf.random.normal` and `tf.random.uniform`, which `jit_compile=True`
compiles, and which follow `keras.utils.set_random_seed` like Keras' own
random layers.
"""

import math
import numbers
import warnings

import tensorflow as tf

from tfkd import _augment_saving
from tfkd import _keras
from tfkd._augment_saving import deserialize  # noqa: F401 (the Distiller's)
from tfkd._augment_saving import serialize  # noqa: F401 (the Distiller's)
from tfkd._keras import keras

# Keras' random augmentation layers: class names that start with "Random"
# (RandomFlip, RandomCrop, RandomRotation, ...), and these.
_AUGMENTATION_LAYERS = ("RandAugment", "AugMix", "CutMix", "MixUp")
# Marsaglia-Tsang proposals per Gamma draw: each is accepted with probability
# > 0.95 for a shape >= 1, so all 16 fail with probability < 1e-20.
_PROPOSALS = 16
_TINY = 1e-30  # > 0 in float32: log(u) stays finite.


def check_augment(augment):
    """`augment`: None, a Keras layer (or model) or a callable `x -> x`
    that can be saved with the Distiller."""
    if augment is None or isinstance(augment, keras.layers.Layer):
        return augment
    if isinstance(augment, type):
        example = (
            f"an instance, `augment={augment.__name__}(...)`"
            if issubclass(augment, keras.layers.Layer)
            else "an instance of it, or a function `x -> x`"
        )
        raise TypeError(
            f"`augment` is the class {augment.__name__}, not an instance: "
            f"the Distiller would call the class on each batch. Pass "
            f"{example}. Received: augment={augment!r}"
        )
    if _is_other_keras_layer(augment):
        kind = f"{type(augment).__module__}.{type(augment).__name__}"
        raise TypeError(
            f"`augment` is a layer of the other Keras ({kind}), but tfkd "
            f"uses {_keras.KERAS_NAME} "
            "(see TF_USE_LEGACY_KERAS). Build it with "
            f"`{_keras.KERAS_NAME}.layers`."
        )
    if callable(augment):
        _augment_saving.check_saveable(augment)
        return augment
    raise TypeError(
        "`augment` must be a Keras layer or model (e.g. `keras.Sequential("
        "[keras.layers.RandomFlip('horizontal')])`), a function `x -> x`, or "
        f"None. Received: augment={augment!r} of type {type(augment).__name__}"
    )


def _is_other_keras_layer(value):
    module = type(value).__module__ or ""
    return module.split(".")[0] in ("keras", "tf_keras") and hasattr(
        value, "get_config"
    )


def check_mixup(mixup):
    """`mixup`: the Beta distribution's alpha, a finite float >= 0."""
    if isinstance(mixup, bool) or not isinstance(mixup, numbers.Real):
        raise TypeError(
            "`mixup` must be a float >= 0 (the alpha of Beta(alpha, alpha); "
            f"0 turns mixup off). Received: mixup={mixup!r} of type "
            f"{type(mixup).__name__}"
        )
    mixup = float(mixup)
    if not math.isfinite(mixup) or mixup < 0:
        raise ValueError(
            "`mixup` must be finite and >= 0 (the alpha of Beta(alpha, "
            "alpha); 0 turns mixup off, 0.2 to 1 are usual). Received: "
            f"mixup={mixup}"
        )
    return mixup


def random_layers(model, depth=0):
    """Paths of the random augmentation layers inside `model`, nested models
    included."""
    found = []
    for layer in getattr(model, "layers", None) or []:
        name = type(layer).__name__
        if name.startswith("Random") or name in _AUGMENTATION_LAYERS:
            found.append(f"{model.name}/{layer.name} ({name})")
        elif depth < 8:
            found.extend(random_layers(layer, depth + 1))
    return found


def build(augment, model):
    """Builds an unbuilt augmentation layer on `model`'s input shape.

    tf_keras cannot list the weights of a model that holds an unbuilt
    `Sequential`. The spatial axes are left unknown, so that a crop or a
    resize may change them.
    """
    if not isinstance(augment, keras.layers.Layer) or augment.built:
        return
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return
    shape = tuple(inputs[0].shape)
    if len(shape) > 2:
        shape = (None,) * (len(shape) - 1) + shape[-1:]
    augment.build(shape)


def apply(augment, x):
    """The augmented view of a training batch `x`, checked by `_checked`."""
    if isinstance(augment, keras.layers.Layer):
        return _checked(augment(x, training=True), x)
    return _checked(augment(x), x)


def _checked(view, x):
    """`view` if it is a batch like `x`: the same structure of tensors, of
    the same rank, batch size and last axis (width, channels); spatial axes
    may change (a crop, a resize). Otherwise an error that blames `augment`
    (the models or the loss would fail on it, or train on a wrong view)."""
    fix = (
        "`augment` takes the inputs `x` of a training batch (not the labels) "
        "and must return them augmented: tensors of the same structure, "
        "batch size and width, built with TensorFlow ops or Keras layers."
    )
    if view is None:
        raise TypeError(
            "`augment` returned None (does it end with `return`?). " + fix
        )
    try:
        tf.nest.assert_same_structure(x, view, check_types=False)
    except (TypeError, ValueError):
        raise TypeError(
            f"`augment` returned {_describe(view)} for inputs that are "
            f"{_describe(x)}. {fix}"
        ) from None
    checks = []
    for inputs, output in zip(tf.nest.flatten(x), tf.nest.flatten(view)):
        if not tf.is_tensor(output):
            raise TypeError(
                f"`augment` returned {_describe(output)}, not a tensor. "
                "Inside the compiled train step a NumPy (or Python) function "
                "runs once, when the step is traced: every step would reuse "
                f"its first result. {fix}"
            )
        before, after = inputs.shape, output.shape
        if before.rank is not None and after.rank is not None:
            if before.rank != after.rank or not before[-1:].is_compatible_with(
                after[-1:]
            ):
                raise ValueError(
                    "`augment` changed the shape of the inputs from "
                    f"{tuple(before)} to {tuple(after)} (the rank or the last "
                    "axis, the width or channels); `evaluate` and `predict` "
                    "do not augment, so the models take the inputs as they "
                    f"are. {fix}"
                )
        if not before[:1].is_compatible_with(after[:1]):
            raise ValueError(
                f"`augment` changed the batch size from {before[0]} to "
                f"{after[0]}. {fix}"
            )
        check = tf.debugging.assert_equal(
            tf.shape(output)[0],
            tf.shape(inputs)[0],
            message=f"`augment` changed the batch size. {fix}",
        )
        if check is not None:  # None in eager mode: it has run.
            checks.append(check)
    with tf.control_dependencies(checks):
        return tf.nest.map_structure(tf.identity, view)


def _fits(expected, shape):
    if expected.rank is None or shape.rank is None:
        return True
    return expected.rank == shape.rank and expected[1:].is_compatible_with(
        shape[1:]
    )


def _check_fits(model, view, original):
    """Refuses an augmented view that `model`'s static input shape refuses
    (a crop of images for a model built for one size), where the batch
    before `augment` fitted (otherwise the data is to blame, and the model
    says so)."""
    inputs = getattr(model, "inputs", None)
    flat, before = tf.nest.flatten(view), tf.nest.flatten(original)
    if not inputs or len(inputs) != 1 or len(flat) != 1 or len(before) != 1:
        return
    expected = tf.TensorShape(inputs[0].shape)  # A tuple under Keras 3.
    received = flat[0].shape
    if _fits(expected, received) or not _fits(expected, before[0].shape):
        return
    raise ValueError(
        f"`augment` returns batches of shape {tuple(received)}, but "
        f"{model.name!r} takes inputs of shape {tuple(expected)}. Resize the "
        "view back in `augment` (e.g. `keras.layers.Resizing` after "
        "`keras.layers.RandomCrop`), or build the models with `None` spatial "
        "axes; `evaluate` and `predict` do not augment, so the models take "
        "the inputs as they are too."
    )


def _describe(value):
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    if tf.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__module__}.{type(value).__name__}"


def _log_gamma(alpha, count):
    """`count` draws of `log G`, `G ~ Gamma(alpha, 1)`, as a float32 vector.

    Marsaglia and Tsang (2000) for the shape `alpha + 1 >= 1`, then
    `G = G' * U^(1 / alpha)`; in log space, where a small `alpha` would
    underflow `G` to 0.
    """
    d = alpha + 1.0 - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = tf.random.normal([count, _PROPOSALS])
    u = tf.random.uniform([count, _PROPOSALS], minval=_TINY)
    w = c * z
    valid = w > -1.0
    log1p_w = tf.math.log1p(tf.where(valid, w, 0.0))
    # d * (1 - v + log v) with v = (1 + w)^3, without the cancellation of
    # 1 - v + log v, which float32 loses for a large alpha.
    exponent = d * (3.0 * (log1p_w - w) - 3.0 * w * w - w * w * w)
    accept = valid & (tf.math.log(u) < 0.5 * z * z + exponent)
    first = tf.argmax(tf.cast(accept, tf.int32), axis=1, output_type=tf.int32)
    log_v = tf.gather(3.0 * log1p_w, first, batch_dims=1)
    log_v = tf.where(tf.reduce_any(accept, axis=1), log_v, 0.0)
    boost = tf.math.log(tf.random.uniform([count], minval=_TINY)) / alpha
    return math.log(d) + log_v + boost


def sample_beta(alpha, count):
    """`count` draws of `Beta(alpha, alpha)`, as `G1 / (G1 + G2)`."""
    log_g = _log_gamma(alpha, 2 * count)
    return tf.math.sigmoid(log_g[:count] - log_g[count:])


def sample_mixup(alpha, batch_size):
    """One step's mixup draws: `lam ~ Beta(alpha, alpha)` (a float32 scalar)
    and a permutation of `range(batch_size)`."""
    lam = sample_beta(alpha, 1)[0]
    permutation = tf.random.shuffle(tf.range(batch_size))
    return lam, permutation


def permute(value, permutation):
    """`value` (a tensor, a structure of them, or None) in `permutation`'s
    order along the batch axis."""
    if value is None:
        return None
    return tf.nest.map_structure(
        lambda tensor: tf.gather(tensor, permutation), value
    )


def mix(x, lam, permutation):
    """`lam * x + (1 - lam) * x[permutation]`, `lam` in each input's dtype."""

    def mix_one(tensor):
        if not tensor.dtype.is_floating:
            raise ValueError(
                "mixup interpolates the inputs, but an input has dtype "
                f"{tensor.dtype.name} (token ids or other integers cannot be "
                "mixed). Use `mixup=0.0` for such inputs, or feed floats."
            )
        weight = tf.cast(lam, tensor.dtype)
        return weight * tensor + (1 - weight) * tf.gather(tensor, permutation)

    return tf.nest.map_structure(mix_one, x)


def warn_random_layers(student):
    """Warns when `student` holds random augmentation layers."""
    layers = random_layers(student)
    if layers:
        warnings.warn(
            f"The student {student.name!r} holds random augmentation "
            f"layers {layers}, which the teacher never sees: it is then "
            "distilled on views that the teacher did not score. Move "
            "them into `augment=` (e.g. `tfkd.Distiller(teacher, "
            "student, augment=keras.Sequential([...]))`), which gives "
            "teacher and student the same augmented batch.",
            UserWarning,
            stacklevel=3,
        )


def augment_batch(augment, mixup, x, cached, models=()):
    """A training batch's view for both models: `augment`, then mixup.

    Returns `(x, mix)`, `mix` being mixup's `(lam, permutation)` or None.
    `models` (the student, the teacher): the augmented view must fit their
    static input shapes.
    """
    if augment is None and not mixup:
        return x, None
    if cached:
        raise ValueError(
            "This Distiller augments its training batches (`augment=` "
            f"or `mixup={mixup:g}`), but the data carries cached "
            "teacher outputs (`tfkd.cache_teacher_outputs`), computed on "
            "the un-augmented inputs: the student would be matched to "
            "the teacher's outputs for other images. Distil from the "
            "live teacher (pass the plain data set), or train on the "
            "cache with a Distiller without `augment` and `mixup`."
        )
    if augment is not None:
        original, x = x, apply(augment, x)
        for model in models:
            _check_fits(model, x, original)
    if not mixup:
        return x, None
    batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
    lam, permutation = sample_mixup(mixup, batch_size)
    return mix(x, lam, permutation), (lam, permutation)
