"""Export errors that name the file and come before any conversion."""

import ast
import os

import numpy as np
import pytest
import tensorflow as tf

import tfkd
import tfkd._tflite_meta
import tfkd.export
from tfkd._keras import keras

ai_edge_litert = pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_litert.interpreter")


def _model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_output_path_in_a_missing_folder_is_refused_before_converting(
    tmp_path, monkeypatch
):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted before checking the output path")

    monkeypatch.setattr(tfkd.export, "_converter", no_conversion)
    missing = tmp_path / "missing" / "model.tflite"
    with pytest.raises(ValueError, match="folder that does not exist.*missing"):
        tfkd.export.to_tflite(_model(), output_path=str(missing))
    with pytest.raises(ValueError, match="`output_path` is a folder"):
        tfkd.export.to_tflite(_model(), output_path=str(tmp_path))


def test_a_corrupt_tflite_file_is_named(tmp_path):
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(b"not a flatbuffer" * 8)
    x = np.zeros((2, 4), "float32")
    with pytest.raises(ValueError, match="corrupt.tflite.*not a readable"):
        tfkd.export.evaluate_tflite(str(path), (x, np.zeros(2)))
    with pytest.raises(ValueError, match="No .tflite file at.*absent"):
        tfkd.export.predict_tflite(str(tmp_path / "absent.tflite"), x)


def test_a_good_file_still_evaluates(tmp_path):
    path = str(tmp_path / "model.tflite")
    model = _model()
    tfkd.export.to_tflite(model, output_path=path)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    np.testing.assert_allclose(
        tfkd.export.predict_tflite(path, x),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


# Issue 22, item 6: edge files that were silently wrong.


def _sequence_model():
    inputs = keras.Input((4, 6))
    return keras.Model(inputs, keras.layers.Dense(5)(inputs))


def test_accuracy_of_sequence_outputs_is_the_mean_over_positions():
    model = _sequence_model()
    content = tfkd.export.to_tflite(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4, 6)).astype("float32")
    y = rng.integers(0, 5, (8, 4))
    expected = float((model.predict(x, verbose=0).argmax(-1) == y).mean())
    result = tfkd.export.evaluate_tflite(content, (x, y))
    assert result["accuracy"] == pytest.approx(expected)
    assert result["num_examples"] == 8
    # One-hot labels, and a dataset of batches, give the same.
    one_hot = np.eye(5)[y]
    assert tfkd.export.evaluate_tflite(content, (x, one_hot))[
        "accuracy"
    ] == pytest.approx(expected)
    # Wrong labels, inputs and batch sizes are named, before any result.
    with pytest.raises(ValueError, match=r"one label per example.*8.*\(7, 4\)"):
        tfkd.export.evaluate_tflite(content, (x, y[:7]))
    with pytest.raises(ValueError, match=r"labels of shape \(8, 3\)"):
        tfkd.export.evaluate_tflite(content, (x, y[:, :3]))
    with pytest.raises(ValueError, match=r"shape \(None, 4, 6\).*\(8, 4, 5\)"):
        tfkd.export.evaluate_tflite(content, (x[..., :5], y))
    with pytest.raises(ValueError, match=r"shape \(None, 4, 6\).*\(8, 4, 5\)"):
        tfkd.export.predict_tflite(content, x[..., :5])
    for function, data in (
        (tfkd.export.evaluate_tflite, (x, y)),
        (tfkd.export.predict_tflite, x),
    ):
        with pytest.raises(ValueError, match="`batch_size`.*batch_size=0"):
            function(content, data, batch_size=0)


def _sin_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    hidden = keras.layers.Lambda(lambda t: tf.sin(t))(hidden)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def test_int8_refuses_ops_that_stay_float_unless_allowed():
    model = _sin_model()
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    with pytest.raises(
        ValueError,
        match=r"not full-integer.*float tensors: ops \[.SIN.\].*allow_float",
    ):
        tfkd.export.to_tflite(model, "int8", x)
    content = tfkd.export.to_tflite(model, "int8", x, allow_float_ops=True)
    interpreter = ai_edge_litert.interpreter.Interpreter(model_content=content)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8


def test_non_finite_calibration_data_is_refused_naming_the_example(
    monkeypatch,
):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    x[35, 1] = np.nan
    # A dataset's batches are checked as the converter reads them, each
    # before it is fed (the converter would crash the process on it).
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros(40))).batch(16)
    with pytest.raises(ValueError, match="non-finite.*example 35"):
        tfkd.export.to_tflite(_model(), "int8", batches)

    # Arrays are checked before converting.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted before checking calibration data")

    monkeypatch.setattr(tfkd.export, "_converter", no_conversion)
    x[35, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite.*example 35"):
        tfkd.export.to_tflite(_model(), "int8", x)
    with pytest.raises(
        ValueError, match=r"takes batches of shape \(None, 4\).*\(40, 5\)"
    ):
        tfkd.export.to_tflite(_model(), "int8", np.zeros((40, 5), "float32"))


def _two_input_model():
    # Named so that the converter's order (by name, reversed) is not Keras'.
    first = keras.Input((3,), name="alpha")
    second = keras.Input((5,), name="beta")
    hidden = keras.layers.Concatenate()(
        [keras.layers.Dense(4)(first), keras.layers.Dense(4)(second)]
    )
    return keras.Model([first, second], keras.layers.Dense(3)(hidden))


def test_multi_input_files_are_fed_in_keras_order(monkeypatch):
    model = _two_input_model()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 3)).astype("float32")
    b = rng.normal(size=(16, 5)).astype("float32")
    expected = model.predict([a, b], verbose=0)
    content = tfkd.export.to_tflite(model)
    for x in ([a, b], {"beta": b, "alpha": a}):
        np.testing.assert_allclose(
            tfkd.export.predict_tflite(content, x),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )
    y = expected.argmax(-1)
    assert tfkd.export.evaluate_tflite(content, ([a, b], y))["accuracy"] == 1
    with pytest.raises(ValueError, match=r"2 inputs.*\['alpha', 'beta'\]"):
        tfkd.export.predict_tflite(content, a)
    # A file without tfkd's record of the order is fed by name only.
    with monkeypatch.context() as patch:
        patch.setattr(tfkd._tflite_meta, "input_order", lambda content: None)
        with pytest.raises(ValueError, match="not record their Keras order"):
            tfkd.export.predict_tflite(content, [a, b])
        np.testing.assert_allclose(
            tfkd.export.predict_tflite(content, {"alpha": a, "beta": b}),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )
    # Calibration data: a list in Keras order, or a dict, or (x, y); the
    # int8 file still matches Keras.
    int8 = tfkd.export.to_tflite(model, "int8", ([a, b], y))
    int8_outputs = tfkd.export.predict_tflite(int8, [a, b])
    assert np.abs(int8_outputs - expected).max() < 0.1 * np.abs(expected).max()
    with pytest.raises(ValueError, match=r"2 inputs.*list of 2 arrays"):
        tfkd.export.to_tflite(model, "int8", a)
    with pytest.raises(ValueError, match=r"'beta'.*\(None, 5\).*\(16, 3\)"):
        tfkd.export.to_tflite(model, "int8", [a, a])


def test_an_lstm_student_converts_with_a_static_batch():
    inputs = keras.Input((3, 2))
    outputs = keras.layers.Dense(2)(keras.layers.LSTM(3)(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(4, 3, 2)).astype("float32")
    # TF's int8 calibrator crashes the process on recurrent layers.
    with pytest.raises(ValueError, match=r"int8.*recurrent.*\"dynamic\""):
        tfkd.export.to_tflite(model, "int8", x)
    with pytest.warns(UserWarning, match="static batch"):
        content = tfkd.export.to_tflite(model)
    np.testing.assert_allclose(
        tfkd.export.predict_tflite(content, x),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


# Confusing errors: each names the problem and the fix.


def test_a_distiller_is_refused_naming_its_student():
    teacher = _model()
    distiller = tfkd.Distiller(teacher, _model())
    with pytest.raises(TypeError, match=r"tfkd.Distiller.*distiller.student"):
        tfkd.export.to_tflite(distiller)
    with pytest.raises(TypeError, match=r"tfkd.Distiller.*distiller.student"):
        tfkd.quantization.quantize_aware(distiller)


def test_is_quantization_aware_of_a_non_model_is_a_type_error():
    for function in (
        tfkd.quantization.is_quantization_aware,
        tfkd.quantization.is_pruned,
    ):
        with pytest.raises(TypeError, match=r"must be a .*Model.*'x'"):
            function("x")


def test_quantize_aware_refuses_a_quantization_aware_model():
    qat = tfkd.quantization.quantize_aware(_model())
    with pytest.raises(
        ValueError, match="already quantization-aware.*float model"
    ):
        tfkd.quantization.quantize_aware(qat)


def test_an_embedding_student_takes_integer_ids():
    # Integer ids were divided by a zero scale (float file) or fed as float
    # (int8 calibration).
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 4)(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    x = np.random.default_rng(0).integers(0, 20, (16, 6)).astype("int32")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        tfkd.export.predict_tflite(tfkd.export.to_tflite(model), x),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    int8 = tfkd.export.to_tflite(model, "int8", x)
    scale = np.abs(expected).max()
    assert np.abs(tfkd.export.predict_tflite(int8, x) - expected).max() < (
        0.05 * scale
    )


def test_calibration_data_of_a_wrong_type_is_named_by_value_and_type():
    # The export modules describe a received value one way (they shared
    # two copies of `_describe`; calibration's left out the value).
    model = _two_input_model()
    with pytest.raises(ValueError) as info:
        tfkd.export.to_tflite(model, "int8", 3)
    assert str(info.value) == (
        f"{model.name!r} has 2 inputs, ['alpha', 'beta']: pass "
        "`representative_data` as a list of 2 arrays in that order, a dict "
        "keyed by input name, or a dataset of such batches. Received: 3 of "
        "type int"
    )


# The export code and what it imports, read by
# `test_the_export_modules_import_tfkd_at_their_top_only`.
_EXPORT_MODULES = (
    "export.py",
    "_calibration.py",
    "_learned_ranges.py",
    "_litert.py",
    "_litert_runner.py",
    "quantization/_common.py",
)


@pytest.mark.mode_independent  # reads the source
def test_the_export_modules_import_tfkd_at_their_top_only():
    """No import of tfkd inside a function (a late import that hid an
    import cycle): each module imports what it uses at its top."""
    root = os.path.dirname(os.path.abspath(tfkd.__file__))
    late = []
    for name in _EXPORT_MODULES:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                else:
                    continue
                if any(m.split(".")[0] == "tfkd" for m in modules):
                    late.append(f"{name}:{node.lineno} {modules}")
    assert late == []
