"""TFLite export (`tfkd.export.to_tflite`) and LiteRT evaluation, both modes."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import sparse_ce

import tfkd.export
from tfkd._keras import keras

pytest.importorskip("ai_edge_litert")


class SubclassedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(48, activation="relu")
        self.logits = keras.layers.Dense(3)

    def call(self, inputs, training=False):
        x = self.flatten(self.conv(inputs))
        return self.logits(self.hidden(x))


def _layers():
    # Conv -> Dense(48) has 144 * 48 > 1024 weights: "dynamic" quantizes it.
    return [
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(48, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ]


def _model(kind, x):
    if kind == "sequential":
        model = keras.Sequential([keras.Input(x.shape[1:])] + _layers())
    elif kind == "functional":
        inputs = keras.Input(x.shape[1:])
        outputs = inputs
        for layer in _layers():
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs)
    else:
        model = SubclassedNet()
        model(x[:1])
    return model


def _images(n=96):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32")


KINDS = ["sequential", "functional", "subclassed"]


@pytest.mark.parametrize("kind", KINDS)
def test_float_export_matches_keras(kind):
    x = _images()
    model = _model(kind, x)
    content = tfkd.export.to_tflite(model)
    expected = model(x).numpy()
    # A batch size that does not divide the data: the last batch resizes.
    outputs = tfkd.export.predict_tflite(content, x, batch_size=40)
    assert outputs.shape == expected.shape
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_float16_and_dynamic_exports_close_to_keras(kind):
    x = _images()
    model = _model(kind, x)
    expected = model(x).numpy()
    scale = np.abs(expected).max()
    float32 = tfkd.export.to_tflite(model)
    for quantization, tolerance in (("float16", 2e-3), ("dynamic", 5e-2)):
        content = tfkd.export.to_tflite(model, quantization)
        assert len(content) < 0.75 * len(float32), quantization
        outputs = tfkd.export.predict_tflite(content, x)
        error = np.abs(outputs - expected).max() / scale
        assert error < tolerance, (quantization, error)
        agreement = np.mean(outputs.argmax(1) == expected.argmax(1))
        assert agreement >= 0.9, (quantization, agreement)


def _int8_reference(content, x):
    """LiteRT run by hand, with the scales and zero points of the file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    inputs = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    scale, zero_point = inputs["quantization"]
    q = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(inputs["index"], q)
    interpreter.invoke()
    raw = interpreter.get_tensor(outputs["index"])
    scale, zero_point = outputs["quantization"]
    return (
        inputs["dtype"],
        outputs["dtype"],
        (raw.astype("float32") - zero_point) * scale,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_int8_export_is_full_integer_and_close_to_keras(kind):
    x = _images()
    model = _model(kind, x)
    content = tfkd.export.to_tflite(model, "int8", x)
    input_dtype, output_dtype, reference = _int8_reference(content, x)
    assert input_dtype == np.int8 and output_dtype == np.int8
    outputs = tfkd.export.predict_tflite(content, x, batch_size=32)
    np.testing.assert_allclose(outputs, reference, rtol=1e-6, atol=1e-6)
    expected = model(x).numpy()
    assert np.abs(outputs - expected).max() < 0.1 * np.abs(expected).max()
    assert len(content) < 0.5 * len(tfkd.export.to_tflite(model))


def test_representative_data_forms_calibrate_alike():
    x = _images(64)
    y = np.zeros(len(x), "int32")
    model = _model("functional", x)
    from_array = tfkd.export.to_tflite(model, "int8", x)
    forms = {
        "tuple": (x, y),
        "dataset of x": tf.data.Dataset.from_tensor_slices(x).batch(32),
        "dataset of (x, y, w)": tf.data.Dataset.from_tensor_slices(
            (x, y, np.ones(len(x), "float32"))
        ).batch(32),
    }
    for name, data in forms.items():
        assert tfkd.export.to_tflite(model, "int8", data) == from_array, name


def test_ptq_int8_keeps_mnist_accuracy(mnist):
    """Any Keras mode: post-training int8 within a point of Keras."""
    x_train, y_train, x_test, y_test = mnist
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile("adam", sparse_ce(), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    keras_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert keras_accuracy > 0.8
    calibration = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    content = tfkd.export.to_tflite(
        model, "int8", calibration.batch(50).take(6)
    )
    result = tfkd.export.evaluate_tflite(content, (x_test, y_test))
    assert result["num_examples"] == len(x_test)
    assert abs(result["accuracy"] - keras_accuracy) <= 0.01


def test_evaluate_tflite_reports_accuracy_latency_size(tmp_path):
    x = _images(50)
    model = _model("functional", x)
    path = tmp_path / "model.tflite"
    content = tfkd.export.to_tflite(model, output_path=str(path))
    assert path.read_bytes() == content
    logits = model(x).numpy()
    # Labels that make the accuracy exactly 0.6, checked against NumPy.
    y = logits.argmax(1)
    y[:20] = (y[:20] + 1) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    result = tfkd.export.evaluate_tflite(content, dataset, latency_examples=10)
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["num_examples"] == 50
    assert result["size_bytes"] == len(content)
    assert 0 < result["latency_ms"] < 1000
    one_hot = np.eye(3, dtype="float32")[y]
    from_path = tfkd.export.evaluate_tflite(str(path), (x, one_hot))
    assert from_path["accuracy"] == pytest.approx(0.6)
    assert from_path["size_bytes"] == len(content)


def test_export_errors():
    x = _images(8)
    model = _model("functional", x)
    with pytest.raises(ValueError, match="Expected one of.*'int8'.*int4"):
        tfkd.export.to_tflite(model, "int4")
    with pytest.raises(ValueError, match="representative_data"):
        tfkd.export.to_tflite(model, "int8")
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        tfkd.export.to_tflite(model, "int8", np.zeros(8))
    with pytest.raises(TypeError, match="representative_data.*dict"):
        tfkd.export.to_tflite(model, "int8", {"x": object()})
    with pytest.raises(ValueError, match="no_such_option"):
        tfkd.export.to_tflite(model, no_such_option=True)
    with pytest.raises(TypeError, match="model"):
        tfkd.export.to_tflite("model.keras")
    with pytest.raises(TypeError, match="tflite"):
        tfkd.export.predict_tflite(model, x)
