"""QAT in both modes; pruning with TFMOT (tf_keras mode), refused in Keras 3."""

import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import sparse_ce
from conftest import toy_classification

import tfkd
import tfkd.export
import tfkd.quantization
from tfkd import _keras
from tfkd._keras import keras

legacy_only = pytest.mark.skipif(
    not _keras.IS_LEGACY, reason="TFMOT needs TF_USE_LEGACY_KERAS=1"
)
keras3_only = pytest.mark.skipif(_keras.IS_LEGACY, reason="Keras 3 mode only")


def _cnn(filters, hidden, name):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name=name)


@pytest.fixture(scope="module")
def teacher(mnist):
    """A float teacher, trained once for the module (about 90% accurate)."""
    x_train, y_train, _, _ = mnist
    keras.utils.set_random_seed(1)
    model = _cnn(16, 64, "teacher")
    model.compile("adam", sparse_ce())
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    return model


def _distiller(teacher, student):
    distiller = tfkd.Distiller(teacher, student, alpha=0.5)
    distiller.compile(
        keras.optimizers.Adam(3e-3), loss=sparse_ce(), metrics=["accuracy"]
    )
    return distiller


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


# Keras 3 mode.


@keras3_only
def test_keras3_pruning_refuses_with_the_way_out():
    model = make_mlp(8)
    with pytest.raises(RuntimeError) as info:
        tfkd.quantization.prune(model, 0.5)
    message = str(info.value)
    assert "TF_USE_LEGACY_KERAS=1" in message
    assert "tf_keras" in message
    # Keras 3 quantization-aware training needs no TFMOT.
    assert "tfkd.quantization.quantize_aware" in message
    student = tfkd.quantization.quantize_aware(model)
    assert tfkd.quantization.is_quantization_aware(student)
    # TFMOT would set TF_USE_LEGACY_KERAS=1 for the process.
    assert "tensorflow_model_optimization" not in sys.modules


@keras3_only
def test_keras3_strip_is_identity_and_no_callback_added():
    model = make_mlp(8)
    assert tfkd.quantization.strip(model) is model
    marker = keras.callbacks.History()
    assert tfkd.quantization.pruning_callbacks(model, [marker]) == [marker]
    assert "tensorflow_model_optimization" not in sys.modules


def test_sparsity_counts_zero_kernel_weights():
    model = make_mlp(8)
    hidden, logits = model.get_layer("hidden"), model.get_layer("logits")
    kernel = hidden.kernel.numpy()
    kernel[:, :3] = 0.0  # 8 inputs x 3 units
    hidden.kernel.assign(kernel)
    bias = logits.bias.numpy()
    logits.bias.assign(np.zeros_like(bias))  # Biases are not counted.
    expected = 24 / (8 * 8 + 8 * 3)
    assert tfkd.quantization.sparsity(model) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no prunable kernel"):
        tfkd.quantization.sparsity(keras.Sequential([keras.Input((3,))]))


# tf_keras mode: TFMOT.


def test_qat_student_distilled_exports_int8_with_keras_accuracy(mnist, teacher):
    # The same call in both modes: TFMOT (tf_keras) or tfkd's own (Keras 3).
    x_train, y_train, x_test, y_test = mnist
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    float_student = _cnn(8, 32, "student")
    student = tfkd.quantization.quantize_aware(float_student)
    assert tfkd.quantization.is_quantization_aware(student)
    assert tfkd.quantization.strip(student) is student  # the converter's job
    distiller = _distiller(teacher, student)
    distiller.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)  # float and frozen

    keras_accuracy = _accuracy(student, x_test, y_test)
    assert keras_accuracy > 0.8
    int8 = tfkd.export.to_tflite(student, "int8")
    result = tfkd.export.evaluate_tflite(int8, (x_test, y_test))
    assert abs(result["accuracy"] - keras_accuracy) <= 0.01
    float32 = tfkd.export.to_tflite(float_student)
    assert result["size_bytes"] < 0.5 * len(float32)
    calibrated = tfkd.export.to_tflite(student, "int8", x_train[:256])
    calibrated_result = tfkd.export.evaluate_tflite(
        calibrated, (x_test, y_test)
    )
    assert abs(calibrated_result["accuracy"] - keras_accuracy) <= 0.01


@legacy_only
def test_pruned_student_reaches_target_and_survives_export(mnist, teacher):
    x_train, y_train, x_test, y_test = mnist
    x_train, y_train = x_train[:2000], y_train[:2000]
    steps = 2 * (len(x_train) // 32)
    student = tfkd.quantization.prune(
        _cnn(8, 32, "student"), 0.75, end_step=steps // 2, frequency=10
    )
    distiller = _distiller(teacher, student)
    # No pruning callback passed: Distiller.fit adds UpdatePruningStep.
    distiller.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    stripped = tfkd.quantization.strip(distiller.student)
    assert not tfkd.quantization.is_pruned(stripped)
    kernels = [
        layer.kernel.numpy()
        for layer in stripped.layers
        if hasattr(layer, "kernel")
    ]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    fraction = zeros / sum(k.size for k in kernels)
    assert tfkd.quantization.sparsity(stripped) == pytest.approx(fraction)
    assert fraction >= 0.74
    for kernel in kernels:  # Every kernel, not only the big one.
        assert (kernel == 0).mean() >= 0.74

    content = tfkd.export.to_tflite(distiller.student)  # strips by itself
    weights = _tflite_tensors(content, size=kernels[-2].size)
    assert len(weights) == 1 and (weights[0] == 0).mean() >= 0.74
    outputs = tfkd.export.predict_tflite(content, x_test)
    np.testing.assert_allclose(
        outputs, stripped.predict(x_test, verbose=0), rtol=1e-4, atol=1e-4
    )
    result = tfkd.export.evaluate_tflite(content, (x_test, y_test))
    assert result["accuracy"] > 0.7


def _tflite_tensors(content, size):
    """The float32 constant tensors of `size` values in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.float32 and np.prod(detail["shape"]) == size:
            try:
                found.append(interpreter.get_tensor(detail["index"]))
            except ValueError:  # not a constant
                pass
    return found


@legacy_only
def test_pruning_needs_its_callback_and_the_helper_adds_it_once():
    x, y = toy_classification(n=64)
    student = tfkd.quantization.prune(make_mlp(8), 0.5, end_step=4, frequency=1)
    student.compile("sgd", sparse_ce())
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="UpdatePruningStep"
    ):
        student.fit(x, y, epochs=1, verbose=0)
    marker = keras.callbacks.History()
    callbacks = tfkd.quantization.pruning_callbacks(student, [marker])
    names = [type(c).__name__ for c in callbacks]
    assert names == ["History", "UpdatePruningStep"]
    again = tfkd.quantization.pruning_callbacks(student, callbacks)
    assert [type(c).__name__ for c in again] == names
    plain = make_mlp(8)
    assert tfkd.quantization.pruning_callbacks(plain, [marker]) == [marker]


@legacy_only
def test_sparsity_of_quantization_aware_models():
    model = make_mlp(8)
    hidden = model.get_layer("hidden")
    kernel = hidden.kernel.numpy()
    kernel[:, :3] = 0.0
    hidden.kernel.assign(kernel)
    expected = tfkd.quantization.sparsity(model)
    assert expected == pytest.approx(24 / (8 * 8 + 8 * 3))
    qat = tfkd.quantization.quantize_aware(model)
    assert tfkd.quantization.sparsity(qat) == pytest.approx(expected)
    qat.predict(np.zeros((2, 8), "float32"), verbose=0)  # swaps the kernels
    assert tfkd.quantization.sparsity(qat) == pytest.approx(expected)


@legacy_only
def test_wrapped_copies_do_not_share_weights():
    model = make_mlp(16)
    before = [w.copy() for w in model.get_weights()]
    x, y = toy_classification(n=64)
    for wrapped, callbacks in (
        (tfkd.quantization.quantize_aware(model), []),
        (tfkd.quantization.prune(model, 0.5, end_step=2, frequency=1), None),
    ):
        callbacks = tfkd.quantization.pruning_callbacks(wrapped, callbacks)
        wrapped.compile(keras.optimizers.SGD(0.5), sparse_ce())
        wrapped.fit(x, y, epochs=2, verbose=0, callbacks=callbacks)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    # The copies start from the model's weights.
    pruned = tfkd.quantization.prune(model, 0.5, end_step=2)
    np.testing.assert_allclose(
        pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


@legacy_only
def test_quantize_aware_selected_layers():
    model = make_mlp(16)
    by_name = tfkd.quantization.quantize_aware(model, layers=["logits"])
    by_class = tfkd.quantization.quantize_aware(
        model, layers=[keras.layers.Dense]
    )

    def weights_quantized(model):
        # TFMOT also wraps the layer before an annotated one, with an
        # OutputOnlyConfig that quantizes only its output (the next input).
        return sorted(
            layer.layer.name
            for layer in model.layers
            if hasattr(layer, "quantize_config")
            and type(layer.quantize_config).__name__ != "OutputOnlyConfig"
        )

    assert weights_quantized(by_name) == ["logits"]
    assert weights_quantized(by_class) == ["hidden", "logits"]
    with pytest.raises(ValueError, match="no layer of that name.*hidden"):
        tfkd.quantization.quantize_aware(model, layers=["nope"])
    with pytest.raises(TypeError, match="layer names"):
        tfkd.quantization.quantize_aware(model, layers=[3])


class _Doubler(keras.layers.Layer):
    def call(self, inputs):
        return 2.0 * inputs


class SubclassedStudent(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


@legacy_only
def test_models_tfmot_cannot_wrap_get_clear_errors():
    subclassed = SubclassedStudent(name="sub_student")
    subclassed(np.zeros((1, 8), "float32"))
    for function in (
        tfkd.quantization.quantize_aware,
        lambda m: tfkd.quantization.prune(m, 0.5, end_step=10),
    ):
        with pytest.raises(ValueError, match="'sub_student'.*Functional"):
            function(subclassed)

    inner = make_mlp(4, name="inner")
    inputs = keras.Input((8,))
    nested = keras.Model(inputs, inner(inputs), name="outer")
    with pytest.raises(ValueError, match="'outer'.*nested.*'inner'"):
        tfkd.quantization.quantize_aware(nested)

    inputs = keras.Input((8,))
    x = keras.layers.LayerNormalization(name="norm")(inputs)
    unsupported = keras.Model(inputs, keras.layers.Dense(3)(x), name="ln_net")
    with pytest.raises(ValueError, match="'norm'.*'ln_net'.*layers=") as info:
        tfkd.quantization.quantize_aware(unsupported)
    assert isinstance(info.value.__cause__, RuntimeError)  # TFMOT's error
    partial = tfkd.quantization.quantize_aware(
        unsupported, layers=[keras.layers.Dense]
    )
    assert tfkd.quantization.is_quantization_aware(partial)

    inputs = keras.Input((8,))
    x = _Doubler(name="double")(inputs)
    outputs = keras.layers.Dense(3, name="dense")(x)
    custom = keras.Model(inputs, outputs, name="custom_net")
    with pytest.raises(ValueError, match="custom_net.*QuantizeConfig"):
        tfkd.quantization.quantize_aware(custom)
    partial = tfkd.quantization.quantize_aware(custom, layers=["dense"])
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    assert partial(x).shape == (64, 3)
    # The float layer has no learned range: int8 needs calibration data.
    with pytest.raises(ValueError, match="float tensors.*representative_data"):
        tfkd.export.to_tflite(partial, "int8")
    content = tfkd.export.to_tflite(partial, "int8", x)
    outputs = tfkd.export.predict_tflite(content, x)
    expected = partial(x).numpy()
    assert np.abs(outputs - expected).max() < 0.1 * np.abs(expected).max()


@legacy_only
def test_prune_argument_errors():
    model = make_mlp(8)
    with pytest.raises(ValueError, match="end_step"):
        tfkd.quantization.prune(model, 0.5)
    with pytest.raises(ValueError, match="target_sparsity=1.0"):
        tfkd.quantization.prune(model, 1.0, end_step=10)
    with pytest.raises(ValueError, match="Expected one of.*schedule='cubic'"):
        tfkd.quantization.prune(model, 0.5, end_step=10, schedule="cubic")
    constant = tfkd.quantization.prune(model, 0.5, schedule="constant")
    assert tfkd.quantization.is_pruned(constant)
