"""The export-time check of a Keras 3 quantization-aware model's ranges.

`tfkd.export.to_tflite` traces a model made by `quantize_aware` (Keras 3)
in `learned_ranges(model)`: its `FakeQuant` layers then read their learned
ranges as they are, so that the converter sees each as a constant. A model
that computes in float16, or whose ranges were never learned, is refused
first, naming the fix.
"""

from __future__ import annotations

import contextlib

from tfkd import _keras
from tfkd._keras import keras
from tfkd.quantization._common import is_quantization_aware
from tfkd.quantization._common import iter_layers

if not _keras.IS_LEGACY:  # tf_keras quantizes with TFMOT's own layers.
    from tfkd.quantization import _layers


def learned_ranges(model: keras.Model) -> contextlib.AbstractContextManager:
    """A context in which `model`'s fake quants read their learned ranges.

    A null context for a model that is not a Keras 3 quantization-aware
    one.

    Raises:
        ValueError: if the model computes in float16 / bfloat16, or if a
            range is not learned yet (no training batch).
    """
    if _keras.IS_LEGACY or not is_quantization_aware(model):
        return contextlib.nullcontext()
    _check_float32(model)
    _check_learned(model)
    return _layers.exporting()


def _check_float32(model):
    mixed = sorted(
        {
            layer.dtype_policy.name
            for layer in iter_layers(model)
            if layer.compute_dtype not in (None, "float32")
            and not isinstance(layer, keras.layers.InputLayer)
        }
    )
    if mixed:
        raise ValueError(
            f"{model.name!r} computes in {mixed}: the int8 converter needs a "
            "float32 graph around the fake quantization. Build the same "
            "student in float32 (`keras.mixed_precision.set_global_policy("
            '"float32")`), make it quantization-aware, copy the trained '
            "weights and ranges with `export_model.set_weights("
            "model.get_weights())`, and export that."
        )


def _check_learned(model):
    unset = [
        layer.name
        for layer in iter_layers(model)
        if isinstance(layer, _layers.FakeQuant)
        and float(layer.initialized.numpy()) == 0.0
    ]
    if unset:
        raise ValueError(
            f"The activation ranges of {model.name!r} are not learned yet "
            f"({len(unset)} of them, e.g. {unset[:3]}): they are set by "
            "training. Train the quantization-aware model (e.g. "
            "`distiller.fit(data, epochs=1)`) before exporting it."
        )
