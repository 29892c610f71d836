"""Feature taps (tfkd/_taps.py): layers of nested models, one forward pass."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import sparse_ce

import tfkd
from tfkd import _taps
from tfkd._keras import keras

TAP = "block_1_expand_relu"  # (16, 16, 48) in MobileNetV2(alpha=0.35) at 32x32


def _mobilenet_classifier():
    """The transfer-learning model: a MobileNetV2 backbone, pooled, Dense."""
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    inputs = keras.Input((32, 32, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(10)(x)
    return keras.Model(inputs, logits, name="teacher"), base


class _Counter(keras.layers.Layer):
    """Counts its calls in training mode (one per forward pass)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.count = self.add_weight(
            name="count", shape=(), initializer="zeros", trainable=False
        )

    def call(self, inputs, training=None):
        if training:
            self.count.assign_add(1.0)
        return inputs


def _backbone(name="backbone", filters=8, size=32, counted=True):
    """`(size, size, 3) -> (size/2, size/2, filters)`: counter, conv, BN, ReLU.

    `counted=False` leaves the counter out (its variable cannot be updated
    in a replica context).
    """
    inputs = keras.Input((size, size, 3))
    x = _Counter(name="counter")(inputs) if counted else inputs
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name="conv")(
        x
    )
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="features")(x)
    return keras.Model(inputs, x, name=name)


def _classifier(backbone, name="student", size=32):
    inputs = keras.Input((size, size, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _two_level(size=8):
    """student/outer_block/inner_model/conv: a model in a model in a model."""
    inner = _backbone("inner_model", filters=4, size=size, counted=False)
    block_inputs = keras.Input((size, size, 3))
    block = keras.Model(
        block_inputs,
        keras.layers.ReLU(name="relu")(inner(block_inputs)),
        name="outer_block",
    )
    return _classifier(block, size=size), block, inner


def _images(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    return x, y


def _direct(model, layer_name, x, training=False):
    """The layer's output computed on the un-nested model `model`."""
    probe = keras.Model(model.input, model.get_layer(layer_name).output)
    return np.asarray(probe(x, training=training))


def test_mobilenet_backbone_and_its_inner_layer_by_path():
    teacher, base = _mobilenet_classifier()
    path = f"{base.name}/{TAP}"
    assert base.name in _taps.layer_paths(teacher)
    assert path in _taps.layer_paths(teacher)
    forward = _taps.tapped_model(teacher, [base.name, path], "teacher")
    assert _taps.feature_shape(teacher, path) == (None, 16, 16, 48)
    assert _taps.feature_shape(teacher, base.name) == (None, 1, 1, 1280)

    x, _ = _images(n=2)
    outputs, features = forward(x, training=False)
    np.testing.assert_array_equal(outputs, teacher(x, training=False))
    np.testing.assert_allclose(features[path], _direct(base, TAP, x), atol=1e-6)
    np.testing.assert_allclose(
        features[base.name], base(x, training=False), atol=1e-6
    )
    # The layers are left as they were.
    assert "call" not in vars(base) and "call" not in vars(base.get_layer(TAP))


def test_two_level_nesting_in_tf_function_with_xla():
    student, _, inner = _two_level()
    path = "outer_block/inner_model/conv"
    forward = _taps.tapped_model(
        student, [path, "outer_block/inner_model", "pool"], "student"
    )
    assert _taps.feature_shape(student, path) == (None, 4, 4, 4)
    x, _ = _images(n=4, size=8)
    compiled = tf.function(forward, jit_compile=True)
    outputs, features = compiled(tf.constant(x), training=False)
    np.testing.assert_allclose(outputs, student(x), atol=1e-5)
    np.testing.assert_allclose(
        features[path], _direct(inner, "conv", x), atol=1e-5
    )
    np.testing.assert_allclose(
        features["outer_block/inner_model"], inner(x), atol=1e-5
    )
    assert features["pool"].shape == (4, 4)


def test_training_mode_reaches_the_nested_batch_norm():
    student, _, inner = _two_level()
    path = "outer_block/inner_model/bn"
    forward = _taps.tapped_model(student, [path], "student")
    x, _ = _images(n=4, size=8)
    bn = inner.get_layer("bn")
    before = np.array(bn.moving_mean)
    _, features = forward(x, training=True)
    # Batch statistics, and the moving averages move, as in a plain call.
    moved = np.array(bn.moving_mean)
    assert not np.allclose(before, moved)
    bn.moving_mean.assign(before)
    np.testing.assert_allclose(
        features[path], _direct(inner, "bn", x, training=True), atol=1e-5
    )
    _, features = forward(x, training=False)
    np.testing.assert_allclose(
        features[path], _direct(inner, "bn", x), atol=1e-5
    )


def test_sequential_inside_sequential():
    inner = keras.Sequential(
        [
            keras.layers.Dense(6, name="hidden"),
            keras.layers.ReLU(name="features"),
        ],
        name="inner",
    )
    outer = keras.Sequential(
        [keras.Input((5,)), inner, keras.layers.Dense(3, name="logits")],
        name="outer",
    )
    assert _taps.layer_paths(outer) == [
        "inner",
        "inner/hidden",
        "inner/features",
        "logits",
    ]
    forward = _taps.tapped_model(outer, ["inner/features", "inner"], "student")
    assert _taps.feature_shape(outer, "inner/features") == (None, 6)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    outputs, features = forward(x, training=False)
    np.testing.assert_allclose(outputs, outer(x), atol=1e-6)
    expected = np.maximum(np.asarray(inner.get_layer("hidden")(x)), 0.0)
    np.testing.assert_allclose(features["inner/features"], expected, atol=1e-6)
    np.testing.assert_allclose(features["inner"], expected, atol=1e-6)


def test_outputs_keep_their_structure():
    inputs = keras.Input((4,))
    backbone = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, name="hidden")],
        name="backbone",
    )
    h = backbone(inputs)
    model = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(2, name="a")(h),
            "b": keras.layers.Dense(3)(h),
        },
    )
    forward = _taps.tapped_model(model, ["backbone/hidden"], "teacher")
    x = np.ones((2, 4), "float32")
    outputs, features = forward(x, training=False)
    expected = model(x, training=False)
    assert sorted(outputs) == ["a", "b"]
    for key in ("a", "b"):
        np.testing.assert_allclose(outputs[key], expected[key], atol=1e-6)
    np.testing.assert_allclose(features["backbone/hidden"], backbone(x))


def test_nested_model_applied_twice_is_refused_then_wrapped():
    shared_inputs = keras.Input((8, 8, 3))
    shared = keras.Model(
        shared_inputs,
        keras.layers.Conv2D(3, 3, padding="same", name="conv")(shared_inputs),
        name="shared",
    )
    inputs = keras.Input((8, 8, 3))
    x = shared(shared(inputs))
    model = _classifier_on(inputs, x)
    with pytest.raises(ValueError, match="calls the layer 'shared' 2 times"):
        _taps.tapped_model(model, ["shared"], "teacher")
    with pytest.raises(ValueError, match="'shared/conv' 2 times"):
        _taps.tapped_model(model, ["shared/conv"], "teacher")

    # The fix the message suggests: the first call in a model of its own.
    first = keras.Model(shared.input, shared.output, name="first_call")
    inputs = keras.Input((8, 8, 3))
    model = _classifier_on(inputs, shared(first(inputs)))
    forward = _taps.tapped_model(
        model, ["first_call", "first_call/conv"], "teacher"
    )
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    outputs, features = forward(x, training=False)
    np.testing.assert_allclose(features["first_call"], shared(x), atol=1e-6)
    np.testing.assert_allclose(features["first_call/conv"], shared(x))
    np.testing.assert_allclose(outputs, model(x), atol=1e-6)


def _classifier_on(inputs, x):
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_unknown_path_lists_the_nested_layers():
    teacher, base = _mobilenet_classifier()
    with pytest.raises(ValueError) as error:
        _taps.tapped_model(teacher, [f"{base.name}/nope"], "teacher")
    message = str(error.value)
    assert f"has no layer named '{base.name}/nope'" in message
    assert f"'{base.name}/' + one of [" in message
    assert f"'{TAP}'" in message
    # Two levels: the full prefix of the inner model.
    student, _, _ = _two_level()
    with pytest.raises(ValueError, match="'outer_block/inner_model/' \\+ one"):
        _taps.tapped_model(student, ["outer_block/conv"], "student")


def test_subclassed_model_is_refused_clearly():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, name="dense")

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.ones((1, 4), "float32"))
    with pytest.raises(ValueError, match="needs a Functional or Sequential"):
        _taps.tapped_model(net, ["dense"], "student")


def _mobilenet_distiller():
    teacher, base = _mobilenet_classifier()
    student = _classifier(_backbone())
    path = f"{base.name}/{TAP}"
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[
            tfkd.losses.KD(),
            tfkd.losses.FitNets(path, "backbone/features"),
        ],
    )
    return distiller, path


def test_distiller_trains_the_students_nested_weights():
    distiller, _ = _mobilenet_distiller()
    backbone = distiller.student.get_layer("backbone")
    kernel = backbone.get_layer("conv").kernel
    before = np.array(kernel)
    counter = backbone.get_layer("counter").count
    distiller.compile("sgd", loss=sparse_ce())
    x, y = _images(n=8)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for values in history.history.values():
        assert np.all(np.isfinite(values))
    assert not np.allclose(before, np.array(kernel))
    # One forward pass of the student's backbone per step.
    assert float(counter.numpy()) == 2


def test_cached_teacher_features_equal_the_live_ones():
    distiller, path = _mobilenet_distiller()
    base = distiller.teacher.get_layer(path.split("/")[0])
    x, y = _images(n=8)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    cached = tfkd.cache_teacher_outputs(distiller, dataset, verbose=0)
    for (inputs, _), batch in zip(cached, range(2)):
        _, features = inputs[tfkd.teachers.TEACHER_OUTPUTS_KEY]
        live = distiller.teacher_outputs(x[4 * batch : 4 * batch + 4])[1]
        np.testing.assert_allclose(features[path], live[path], atol=1e-5)
        np.testing.assert_allclose(
            features[path],
            _direct(base, TAP, inputs["inputs"]),
            atol=1e-5,
        )


def _mirrored():
    # As in tests/test_distribute.py: a fresh collective key range.
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def test_nested_taps_under_mirrored_strategy_and_xla():
    x, y = _images(n=16, size=8)
    for strategy, jit_compile in (
        (_mirrored(), False),
        (tf.distribute.get_strategy(), True),
    ):
        with strategy.scope():
            teacher, _, _ = _two_level()
            student = _classifier(_backbone(size=8, counted=False), size=8)
            distiller = tfkd.Distiller(
                teacher,
                student,
                distillation_loss=[
                    tfkd.losses.KD(),
                    tfkd.losses.FitNets(
                        "outer_block/inner_model/features", "backbone/features"
                    ),
                ],
            )
            distiller.compile("sgd", loss=sparse_ce(), jit_compile=jit_compile)
        kernel = student.get_layer("backbone").get_layer("conv").kernel
        before = np.array(kernel)
        history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert not np.allclose(before, np.array(kernel))


def test_a_tap_without_the_rank_its_method_declares_is_refused_at_once():
    """AttentionTransfer declares NHWC maps (`feature_rank = 4`): a dense
    layer's vectors are refused when the Distiller is built, not in the
    first step."""
    from conftest import make_cnn

    teacher, student = make_cnn(8, name="teacher"), make_cnn(4, name="student")
    method = tfkd.losses.AttentionTransfer("embedding", "features")
    with pytest.raises(ValueError) as error:
        tfkd.Distiller(teacher, student, distillation_loss=method)
    message = str(error.value)
    assert "AttentionTransfer reads features of rank 4" in message
    assert "teacher layer 'embedding'" in message
    assert "Tap a layer whose output has rank 4" in message
    # NHWC maps on both sides are accepted.
    tfkd.Distiller(
        teacher,
        student,
        distillation_loss=tfkd.losses.AttentionTransfer("features", "features"),
    )
