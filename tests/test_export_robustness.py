"""Export errors that name the file and come before any conversion."""

import numpy as np
import pytest

import tfkd.export
from tfkd._keras import keras

pytest.importorskip("ai_edge_litert")


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
