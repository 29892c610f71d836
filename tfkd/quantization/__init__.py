"""Quantization-aware training and pruning of students.

One API over two back ends:

- Keras 3 (the default): tfkd's own fake quantization (`_rewrite.py`,
  `_layers.py`): `quantize_aware` rewrites a Sequential or Functional model
  (nested ones too) with int8 fake-quantized kernels and learned activation
  ranges, BatchNormalization folded; no TFMOT needed.
- tf_keras (`TF_USE_LEGACY_KERAS=1`): TFMOT (`_tfmot.py`) for
  `quantize_aware` and for pruning (`prune`, `pruning_callbacks`, `strip`).

Either way the result trains under `tfkd.Distiller` and exports with
`tfkd.export.to_tflite(model, "int8")` to a full-integer `.tflite` file that
uses the ranges learned in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tfkd import _keras
from tfkd._keras import keras
from tfkd.quantization import _tfmot
from tfkd.quantization._common import check_model
from tfkd.quantization._common import is_pruned
from tfkd.quantization._common import is_quantization_aware
from tfkd.quantization._tfmot import prune
from tfkd.quantization._tfmot import pruning_callbacks
from tfkd.quantization._tfmot import sparsity
from tfkd.quantization._tfmot import strip

if not _keras.IS_LEGACY:
    # Registers the fake-quant layers, so `keras.models.load_model` finds
    # them once tfkd is imported.
    from tfkd.quantization import _rewrite

__all__ = [
    "is_pruned",
    "is_quantization_aware",
    "prune",
    "pruning_callbacks",
    "quantize_aware",
    "sparsity",
    "strip",
]


def quantize_aware(
    model: keras.Model,
    *,
    layers: str | type | Sequence[str | type] | None = None,
    custom_objects: dict[str, Any] | None = None,
) -> keras.Model:
    """A quantization-aware copy of a student, ready to train or distill.

    The copy fake-quantizes what an int8 TFLite model quantizes, so training
    sees the rounding of int8 inference: kernels symmetric int8 (per output
    channel for convolutions), activations on moving-average ranges learned
    in training. Distill it from a float teacher with `tfkd.Distiller`, then
    export it with `tfkd.export.to_tflite(student, "int8")`: the converter
    takes the learned ranges (no calibration data needed).

    ```
    fake_quant(x) = s * (clip(round(x / s) - z, q_min, q_max) + z)
    s = (max - min) / (q_max - q_min)
    ```

    Keras 3: tfkd's own rewrite. BatchNormalization following a convolution
    or Dense layer is folded into it (as TFLite folds it); another one (after
    a ReLU, shared by several calls) becomes a per-channel scale and offset
    on its frozen moving statistics, which still trains; Dense, Conv1D,
    Conv2D and DepthwiseConv2D kernels are fake-quantized; ranges sit at the
    input, after each activation (and before a tanh, gelu, swish, ... that
    the converter keeps as an op of its own), Add and pooling, and are
    shared by the inputs of a Concatenate; each range starts from the first
    training batch (before any training, each batch's own range is used).
    Other layers with weights (e.g. LayerNormalization) stay float and are
    listed in one warning: their inner tensors have no learned range, so
    `to_tflite(model, "int8", representative_data)` calibrates them (the
    learned ranges are kept). QAT fine-tunes a trained float model: from a
    random initialization, the first batch's ranges can be far from the
    trained ones.

    tf_keras: TFMOT's `quantize_model` (TFMOT's default 8-bit scheme); with
    `layers=`, the others are left out with `quantize_annotate_layer` +
    `quantize_apply`. Layers already annotated with
    `tfmot.quantization.keras.quantize_annotate_layer` are kept as annotated.

    Args:
        model: a Sequential or Functional model (with Keras 3, nested models
            too; TFMOT needs one flat model). It is not modified; its weights
            are copied.
        layers: names and/or classes of the layers whose kernels are
            quantized; the others stay float. Defaults to `None`: every
            supported layer.
        custom_objects: custom layer classes needed to rebuild the model
            from its config, as `{name: class}` (and, with TFMOT, custom
            `QuantizeConfig`s). Defaults to `None`.

    Returns:
        A new model of the Keras in use, with fake-quantization layers.

    Raises:
        TypeError: if `model` is not a model of the Keras in use.
        ValueError: if the model cannot be rewritten (a subclassed model, a
            layer that cannot be rebuilt from its config, a layer TFMOT
            cannot wrap), naming the model or layer and the fix.

    Example:
        >>> student = tfkd.quantization.quantize_aware(float_student)
        >>> distiller = tfkd.Distiller(teacher, student)
        >>> distiller.compile("adam", "sparse_categorical_crossentropy")
        >>> distiller.fit(train_data, epochs=2)
        >>> tfkd.export.to_tflite(student, "int8", output_path="s.tflite")

    References:
        Jacob et al. "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
        Krishnamoorthi. "Quantizing deep convolutional networks for efficient
        inference: A whitepaper", 2018. arXiv:1806.08342.
    """
    check_model(model)
    if is_quantization_aware(model):
        raise ValueError(
            f"{model.name!r} is already quantization-aware: quantizing it "
            "again would stack a second fake quantization on every tensor. "
            "Pass the float model it was made from, or train and export this "
            'one as it is (`tfkd.export.to_tflite(model, "int8")`).'
        )
    if _keras.IS_LEGACY:
        return _tfmot.quantize_aware(
            model, layers=layers, custom_objects=custom_objects
        )
    return _rewrite.quantize_aware(
        model, layers=layers, custom_objects=custom_objects
    )
