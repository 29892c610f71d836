"""Keras 3 quantization-aware training (tfkd's fake quantization, no TFMOT).

Each model is made quantization-aware, distilled from a float teacher on
real MNIST digits, exported to a full-integer int8 `.tflite` and run by
LiteRT, which must agree with the fake-quantized Keras model.
"""

import os
import threading
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy
from conftest import sparse_ce

import tfkd
import tfkd.export
import tfkd.quantization
from tfkd import _keras
from tfkd._keras import keras

pytestmark = pytest.mark.skipif(
    _keras.IS_LEGACY, reason="tf_keras uses TFMOT (tests/test_quantization.py)"
)
pytest.importorskip("ai_edge_litert")

from tfkd.quantization import _layers  # noqa: E402
from tfkd.quantization import _rewrite  # noqa: E402


def _mlp():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(48, activation="relu")(x)
    x = keras.layers.Dense(24)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="mlp")


def _cnn():
    """Conv+BN+ReLU, depthwise, a residual Add, Concatenate, pools, Dense."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(12, 3, strides=2, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    d = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    d = keras.layers.BatchNormalization()(d)
    d = keras.layers.ReLU(6.0)(d)
    x = keras.layers.Add()([x, d])
    c = keras.layers.Conv2D(8, 1, activation="relu")(x)
    x = keras.layers.Concatenate()([x, c])
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn")


def _unfused():
    """What the converter cannot fuse: BatchNormalization after a ReLU (on
    images, sequences and vectors) and tanh / swish activations inside
    Conv2D and Dense layers (their inputs need ranges too)."""
    inputs = keras.Input((28, 28, 1))
    a = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.Conv2D(16, 3, activation="swish")(a)
    a = keras.layers.GlobalAveragePooling2D()(a)
    s = keras.layers.Reshape((28, 28))(inputs)
    s = keras.layers.Conv1D(8, 3, strides=2, activation="relu")(s)
    s = keras.layers.BatchNormalization()(s)
    s = keras.layers.GlobalMaxPooling1D()(s)
    x = keras.layers.Concatenate()([a, s])
    x = keras.layers.Dense(256, activation="tanh")(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="unfused")


def _teacher(x, y):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h), name="teacher")
    model.compile("adam", sparse_ce())
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def teacher(mnist):
    x_train, y_train, _, _ = mnist
    return _teacher(x_train, y_train)


def _train_float(model, x, y, epochs=2):
    model.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _distil(teacher, student, x, y, epochs=1):
    distiller = tfkd.Distiller(teacher, student, alpha=0.5)
    distiller.compile(keras.optimizers.Adam(1e-3), loss=sparse_ce())
    distiller.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return distiller


def _check_int8_file(student, float_student, x_test, y_test):
    """The LiteRT int8 file against the fake-quantized Keras model."""
    int8 = tfkd.export.to_tflite(student, "int8")
    float_file = tfkd.export.to_tflite(float_student)
    keras_logits = student.predict(x_test, verbose=0)
    keras_accuracy = np.mean(keras_logits.argmax(1) == y_test)
    lite_logits = tfkd.export.predict_tflite(int8, x_test)
    lite_accuracy = np.mean(lite_logits.argmax(1) == y_test)
    agreement = np.mean(lite_logits.argmax(1) == keras_logits.argmax(1))
    assert abs(lite_accuracy - keras_accuracy) <= 0.01
    assert agreement >= 0.98
    assert len(int8) <= 0.4 * len(float_file), (len(int8), len(float_file))
    interpreter = tfkd._litert.interpreter(int8)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    tensors = interpreter.get_tensor_details()
    assert not [t["name"] for t in tensors if t["dtype"] == np.float32]
    return int8, keras_accuracy


@pytest.mark.parametrize(
    "build", [_mlp, _cnn, _unfused], ids=["mlp", "cnn", "unfused"]
)
def test_distilled_qat_student_exports_a_full_integer_file(
    build, mnist, teacher
):
    x_train, y_train, x_test, y_test = mnist
    keras.utils.set_random_seed(0)
    float_student = _train_float(build(), x_train, y_train)
    float_accuracy = np.mean(
        float_student.predict(x_test, verbose=0).argmax(1) == y_test
    )
    before = [w.copy() for w in float_student.get_weights()]
    student = tfkd.quantization.quantize_aware(float_student)
    for old, new in zip(before, float_student.get_weights()):
        np.testing.assert_array_equal(old, new)  # the original untouched
    assert tfkd.quantization.is_quantization_aware(student)
    assert not [
        layer
        for layer in student.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ], "BatchNormalization not folded"
    _distil(teacher, student, x_train, y_train)
    _, keras_accuracy = _check_int8_file(student, float_student, x_test, y_test)
    assert keras_accuracy >= float_accuracy - 0.02, (
        keras_accuracy,
        float_accuracy,
    )


def test_folded_batch_norm_equals_the_float_layers():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 4))
    conv = keras.layers.Conv2D(5, 3, use_bias=True)(inputs)
    depth = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(inputs)
    outputs = [
        keras.layers.BatchNormalization(epsilon=1e-2)(conv),
        keras.layers.BatchNormalization(scale=False)(depth),
    ]
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for weight in layer.weights:
                value = rng.uniform(0.5, 2.0, weight.shape).astype("float32")
                weight.assign(value)
    x = rng.normal(size=(4, 6, 6, 4)).astype("float32")
    rewriter = _rewrite._Rewriter(None, 0.99)
    rewriter.rewrite(model)
    rewriter.copy_weights()
    folded = [copy for copy in rewriter.copies if copy[2] is not None]
    assert len(folded) == 2
    for original, clone, batch_norm in folded:
        want = batch_norm(original(x), training=False)
        # The folded layer without its kernel's fake quantization.
        plain = type(original).from_config(clone.get_config())
        plain.build(x.shape)
        plain.set_weights(clone.get_weights())
        np.testing.assert_allclose(plain(x), want, rtol=1e-4, atol=1e-5)


def test_tflite_scales_are_the_learned_ranges_with_or_without_data(
    mnist, teacher
):
    x_train, y_train, _, _ = mnist
    keras.utils.set_random_seed(0)
    student = tfkd.quantization.quantize_aware(_mlp())
    _distil(teacher, student, x_train[:640], y_train[:640])
    ranges = {
        layer.name: (layer.range_min.numpy(), layer.range_max.numpy())
        for layer in student.layers
        if isinstance(layer, _layers.FakeQuant)
    }
    low, high = ranges["mlp_input_quant"]
    assert low == 0.0 and 0.99 < high <= 1.0  # pixels in [0, 1]
    for data in (None, x_train[:200]):
        interpreter = tfkd._litert.interpreter(
            tfkd.export.to_tflite(student, "int8", data)
        )
        scale, _ = interpreter.get_input_details()[0]["quantization"]
        assert scale == pytest.approx((high - low) / 255, rel=1e-6)
        out_low, out_high = ranges["mlp_output_quant"]
        scale, _ = interpreter.get_output_details()[0]["quantization"]
        assert scale == pytest.approx((out_high - out_low) / 255, rel=1e-6)


def test_kernels_are_int8_per_channel_for_convolutions(mnist):
    x_train, y_train, _, _ = mnist
    keras.utils.set_random_seed(0)
    student = tfkd.quantization.quantize_aware(_cnn())
    _train_float(student, x_train[:320], y_train[:320], epochs=1)
    interpreter = tfkd._litert.interpreter(
        tfkd.export.to_tflite(student, "int8")
    )
    tensors = interpreter.get_tensor_details()
    scales = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            kernel = tensors[op["inputs"][1]]
            assert kernel["dtype"] == np.int8
            count = len(kernel["quantization_parameters"]["scales"])
            scales.setdefault(op["op_name"], []).append(count)
    # One scale per output channel for convolutions, one per Dense kernel.
    assert scales["CONV_2D"] == [12, 8, 64]
    assert scales["DEPTHWISE_CONV_2D"] == [12]
    assert scales["FULLY_CONNECTED"] == [1, 1]


@pytest.mark.slow
def test_mobilenet_v2_converts_with_int8_kernels_throughout():
    """A keras.applications model end to end (about 65 s here, over the
    suite's 60 s: ~150 layers traced for float training, the QAT rewrite,
    QAT training, prediction and an int8 conversion). The whole model is
    the point: every one of its kernels must come out int8."""
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4
    )
    # Logits: the classifier without its softmax.
    head = backbone.layers[-1]
    head.activation = keras.activations.linear
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(128, 32, 32, 3)).astype("float32")
    y = (x[..., 0].mean((1, 2)) > x[..., 1].mean((1, 2))).astype("int32")
    float_model = _train_float(backbone, x, y, epochs=1)
    student = tfkd.quantization.quantize_aware(float_model)
    assert not [
        layer
        for layer in student.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    _train_float(student, x, y, epochs=1)
    int8 = tfkd.export.to_tflite(student, "int8")
    interpreter = tfkd._litert.interpreter(int8)
    ops = interpreter._get_ops_details()
    weighted = [
        op
        for op in ops
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    ]
    assert len(weighted) >= 50
    tensors = interpreter.get_tensor_details()
    for op in weighted:
        kernel = tensors[op["inputs"][1]]
        assert kernel["dtype"] == np.int8, (op["op_name"], kernel["name"])
    assert not [t["name"] for t in tensors if t["dtype"] == np.float32]
    keras_logits = student.predict(x, verbose=0)
    lite_logits = tfkd.export.predict_tflite(int8, x)
    agreement = np.mean(lite_logits.argmax(1) == keras_logits.argmax(1))
    assert agreement >= 0.98
    # A float file holds at least 4 bytes per parameter.
    assert len(int8) <= 0.4 * 4 * float_model.count_params()


def test_nested_backbone_and_sequential_students(mnist):
    x_train, y_train, x_test, _ = mnist
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
        ],
        name="backbone",
    )
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(backbone(inputs))
    model = _train_float(keras.Model(inputs, outputs), x_train, y_train, 1)
    student = tfkd.quantization.quantize_aware(model)
    inner = student.get_layer("backbone")
    assert isinstance(inner.get_layer("conv2d"), _layers.QuantizedConv2D)
    _train_float(student, x_train[:640], y_train[:640], epochs=1)
    int8 = tfkd.export.to_tflite(student, "int8")
    agreement = np.mean(
        tfkd.export.predict_tflite(int8, x_test).argmax(1)
        == student.predict(x_test, verbose=0).argmax(1)
    )
    assert agreement >= 0.98
    sequential = tfkd.quantization.quantize_aware(backbone)
    assert isinstance(sequential.layers[1], _layers.FakeQuant)
    with pytest.raises(ValueError, match="keras.Input"):
        tfkd.quantization.quantize_aware(
            keras.Sequential([keras.layers.Dense(3)])
        )


def test_save_and_load_keep_the_ranges_and_training_resumes(
    tmp_path, mnist, teacher
):
    x_train, y_train, x_test, _ = mnist
    keras.utils.set_random_seed(0)
    student = tfkd.quantization.quantize_aware(_cnn())
    distiller = _distil(teacher, student, x_train[:640], y_train[:640])
    path = os.path.join(tmp_path, "student.keras")
    student.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x_test[:100], verbose=0),
        student.predict(x_test[:100], verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    for a, b in zip(student.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    reloaded = keras.models.load_model(path)
    history = reloaded.fit(
        x_train[:320], y_train[:320], epochs=1, batch_size=32, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def _replica_values(variable):
    """A variable's value on each replica (one value off a strategy)."""
    inner = getattr(variable, "value", variable)  # Keras 3 wraps tf's.
    values = getattr(inner, "values", None)
    if values is None:
        return [variable.numpy()]
    return [v.numpy() for v in values]


def test_ranges_under_mirrored_strategy_equal_one_device():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32") * np.arange(1, 9)
    y = rng.integers(0, 3, 64).astype("int32")

    def ranges(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((8,), name="x")
            h = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
            logits = keras.layers.Dense(3, name="logits")(h)
            model = keras.Model(inputs, logits, name="mlp")
            model = tfkd.quantization.quantize_aware(model)
            model.compile(keras.optimizers.SGD(0.1), sparse_ce())
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        return {
            layer.name: (
                _replica_values(layer.range_min),
                _replica_values(layer.range_max),
            )
            for layer in model.layers
            if isinstance(layer, _layers.FakeQuant)
        }

    single = ranges(tf.distribute.get_strategy())
    mirrored = ranges(mirrored_strategy())
    assert single.keys() == mirrored.keys()
    for name, (lows, highs) in mirrored.items():
        assert len(lows) == 2
        for low in lows:
            assert low == pytest.approx(single[name][0][0], rel=1e-5)
        for high in highs:
            assert high == pytest.approx(single[name][1][0], rel=1e-5)


def test_unsupported_layers_stay_float_in_one_warning_and_layers_selects():
    inputs = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(20, 8)(inputs)
    x = keras.layers.Conv1D(8, 3, activation="relu")(x)
    x = keras.layers.SeparableConv1D(8, 3)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.warns(UserWarning, match="keeps these layers float") as info:
        student = tfkd.quantization.quantize_aware(model)
    message = str(info[0].message)
    assert "['embedding (Embedding)', 'separable_conv1d (Separable" in message
    assert "'conv1d" not in message and "dense" not in message
    assert isinstance(student.get_layer("conv1d"), _layers.QuantizedConv1D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_dense = tfkd.quantization.quantize_aware(
            model, layers=[keras.layers.Dense]
        )
    assert type(only_dense.get_layer("conv1d")) is keras.layers.Conv1D
    assert isinstance(only_dense.get_layer("dense"), _layers.QuantizedDense)
    with pytest.raises(ValueError, match="no layer of that name"):
        tfkd.quantization.quantize_aware(model, layers=["nope"])


def test_a_layer_that_cannot_be_rebuilt_gets_the_rewrites_error():
    """A layer class without a rule (`_rules.RULES`) is cloned float; one
    with weights that cannot be rebuilt from its config is refused with
    this message, one without weights is shared."""

    class Broken(keras.layers.Dense):
        @classmethod
        def from_config(cls, config):
            raise RuntimeError("no config here")

    class Stateless(keras.layers.Layer):
        @classmethod
        def from_config(cls, config):
            raise RuntimeError("no config here")

        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Broken(3, name="broken")(inputs))
    with pytest.raises(ValueError) as info:
        tfkd.quantization.quantize_aware(model)
    assert str(info.value) == (
        "quantize_aware could not rebuild layer 'broken' (Broken) from its "
        "config (no config here). Give the class a `get_config` that returns "
        "its constructor arguments, and pass it in `custom_objects`."
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    stateless = Stateless(name="twice")
    model = keras.Model(inputs, keras.layers.Dense(3)(stateless(inputs)))
    student = tfkd.quantization.quantize_aware(model)
    assert student.get_layer("twice") is stateless


def test_clear_errors_for_subclassed_models_and_unlearned_ranges():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        tfkd.quantization.quantize_aware(model)
    with pytest.raises(TypeError, match="must be a `keras.Model`"):
        tfkd.quantization.quantize_aware("model")
    inputs = keras.Input((4,))
    fresh = tfkd.quantization.quantize_aware(
        keras.Model(inputs, keras.layers.Dense(3)(inputs))
    )
    # Before training, each batch's own range: usable, not collapsed.
    out = fresh.predict(np.ones((2, 4), "float32"), verbose=0)
    assert np.abs(out).sum() > 0
    with pytest.raises(ValueError, match="not learned yet"):
        tfkd.export.to_tflite(fresh, "int8")


def test_export_mode_holds_in_its_own_context_only():
    """`_layers.exporting()` (the ranges read as they are) is a context
    variable: another thread keeps each batch's own range, and leaving a
    nested export context keeps the outer one."""
    x = np.linspace(-1.0, 3.0, 12, dtype="float32").reshape(3, 4)
    layer = _layers.FakeQuant()
    layer.build(x.shape)
    layer.range_min.assign(-2.0)  # Not learned yet: `initialized` is 0.
    layer.range_max.assign(2.0)

    def fake_quant(low, high):
        return tf.quantization.fake_quant_with_min_max_vars(
            x, low, high, num_bits=8
        ).numpy()

    results = {}

    def other_thread():
        results["other_thread"] = np.asarray(layer(x))

    with _layers.exporting():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        with _layers.exporting():
            pass
        results["after_nested"] = np.asarray(layer(x))
    results["after"] = np.asarray(layer(x))

    np.testing.assert_array_equal(results["other_thread"], fake_quant(-1, 3))
    np.testing.assert_array_equal(results["after_nested"], fake_quant(-2, 2))
    np.testing.assert_array_equal(results["after"], fake_quant(-1, 3))


def test_mixed_precision_students_train_and_export_in_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def student():
        inputs = keras.Input((8,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2)(h), name="s")

    float32_student = student()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        # A float32 student stays float32, whatever the global policy.
        plain = tfkd.quantization.quantize_aware(float32_student)
        mixed = tfkd.quantization.quantize_aware(student())
        kinds = {type(layer).__name__ for layer in mixed.layers}
        assert "FakeQuant" in kinds
        # Its ranges follow each tensor: float32 input, float16 inside.
        assert {
            layer.compute_dtype
            for layer in mixed.layers
            if isinstance(layer, _layers.FakeQuant)
        } == {"float16", "float32"}
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for model in (plain, mixed):
        model.compile("adam", sparse_ce())
        model.fit(x, y, epochs=1, verbose=0)
    assert {layer.compute_dtype for layer in plain.layers[1:]} == {"float32"}
    tfkd.export.to_tflite(plain, "int8")
    with pytest.raises(ValueError, match="set_global_policy"):
        tfkd.export.to_tflite(mixed, "int8")
    # The documented fix: the same student in float32, weights copied.
    export_model = tfkd.quantization.quantize_aware(student())
    export_model.set_weights(mixed.get_weights())
    lite = tfkd.export.predict_tflite(
        tfkd.export.to_tflite(export_model, "int8"), x
    )
    agreement = np.mean(lite.argmax(1) == mixed.predict(x, verbose=0).argmax(1))
    assert agreement >= 0.95


def test_rescaling_and_normalization_become_frozen_int8_convolutions():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(128, 8, 8, 3)).astype("float32")
    y = (x[..., 0].mean((1, 2)) > x[..., 1].mean((1, 2))).astype("int32")
    keras.utils.set_random_seed(0)
    normalization = keras.layers.Normalization()
    normalization.adapt(x / 255.0)
    inputs = keras.Input((8, 8, 3))
    h = normalization(keras.layers.Rescaling(1 / 255.0)(inputs))
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    student = tfkd.quantization.quantize_aware(model)
    kinds = [type(layer).__name__ for layer in student.layers]
    assert "Rescaling" not in kinds and "Normalization" not in kinds
    for name in (model.layers[1].name, normalization.name):
        layer = student.get_layer(name)
        assert isinstance(layer, _layers.QuantizedDepthwiseConv2D)
        assert not layer.trainable_weights  # frozen preprocessing
    # Its kernel and bias are the float layer's affine map, per channel.
    kernel, bias = student.get_layer(normalization.name).get_weights()
    expected = normalization(x[:4] / 255.0)
    got = (x[:4] / 255.0) * kernel.reshape(-1) + bias
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    student.compile(keras.optimizers.Adam(1e-3), sparse_ce())
    student.fit(x, y, epochs=2, batch_size=32, verbose=0)
    int8 = tfkd.export.to_tflite(student, "int8")
    tensors = tfkd._litert.interpreter(int8).get_tensor_details()
    assert not [t["name"] for t in tensors if t["dtype"] == np.float32]
    agreement = np.mean(
        tfkd.export.predict_tflite(int8, x).argmax(1)
        == student.predict(x, verbose=0).argmax(1)
    )
    assert agreement >= 0.95


def test_a_layer_called_twice_keeps_one_set_of_weights():
    inputs = [keras.Input((6,)), keras.Input((6,))]
    shared = keras.layers.Dense(4, name="shared")
    normalization = keras.layers.BatchNormalization(name="bn")
    merged = keras.layers.Concatenate()(
        [normalization(shared(inputs[0])), normalization(shared(inputs[1]))]
    )
    model = keras.Model(inputs, keras.layers.Dense(2)(merged))
    student = tfkd.quantization.quantize_aware(model)
    clone = student.get_layer("shared")
    assert isinstance(clone, _layers.QuantizedDense)
    assert len([x for x in student.layers if x.name == "shared"]) == 1
    # A shared BatchNormalization is not folded into one of its calls: both
    # share one per-channel affine (a 1x1 depthwise convolution).
    affine = student.get_layer("bn")
    assert isinstance(affine, _layers.QuantizedDepthwiseConv2D)
    assert len([x for x in student.layers if x.name == "bn"]) == 1
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(32, 6)).astype("float32") for _ in range(2)]
    y = rng.integers(0, 2, 32).astype("int32")
    student.compile(keras.optimizers.SGD(0.1), sparse_ce())
    student.fit(x, y, epochs=1, verbose=0)
    # One kernel, trained by both calls (and different from the original).
    assert len(clone.trainable_weights) == 2
    assert not np.allclose(clone.kernel.numpy(), shared.kernel.numpy())


def test_sequential_student_with_rescaling_converts_fully():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean((1, 2, 3)) > x[:, 4:].mean((1, 2, 3))).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    student = tfkd.quantization.quantize_aware(model)
    rescaling = student.get_layer(model.layers[0].name)
    assert isinstance(rescaling, _layers.QuantizedDepthwiseConv2D)
    student.compile(keras.optimizers.Adam(1e-3), sparse_ce())
    student.fit(x, y, epochs=1, verbose=0)
    int8 = tfkd.export.to_tflite(student, "int8")
    tensors = tfkd._litert.interpreter(int8).get_tensor_details()
    assert not [t["name"] for t in tensors if t["dtype"] == np.float32]
