"""TFLite export of students and their evaluation with LiteRT.

`to_tflite` converts a Keras 3 or tf_keras model (Sequential, Functional or
subclassed, float, pruned or quantization-aware) to a `.tflite` flatbuffer;
`evaluate_tflite` and `predict_tflite` (from `tfkd._litert`) run it with the
LiteRT interpreter (`pip install tfkd[litert]`), as a device would.

Conversion routes, one per Keras:

- Keras 3: `model.export(dir, format="tf_saved_model")` (Keras' own
  `ExportArchive`), then `tf.lite.TFLiteConverter.from_saved_model`. This is
  the route of Keras' LiteRT exporter; `TFLiteConverter.from_keras_model` is
  known to fail on some Keras 3 models (tensorflow#63867).
- tf_keras: `TFLiteConverter.from_keras_model`, the route TFMOT documents for
  quantization-aware models; with `input_signature`, a concrete function.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfkd import _calibration
from tfkd import _keras
from tfkd import _learned_ranges
from tfkd import _litert
from tfkd import _tflite_meta
from tfkd import quantization as _quantization
from tfkd._keras import keras
from tfkd._litert import evaluate_tflite
from tfkd._litert import predict_tflite
from tfkd.quantization._common import iter_layers as _iter_layers

__all__ = ["QUANTIZATIONS", "evaluate_tflite", "predict_tflite", "to_tflite"]

QUANTIZATIONS = (None, "float16", "dynamic", "int8")


def _check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            "Invalid value for argument `quantization`. Expected one of "
            f"{list(QUANTIZATIONS)}. Received: quantization={quantization!r}"
        )


def _converter(model, input_signature):
    if not _keras.IS_LEGACY:
        # Keras 3: its own SavedModel export, then the SavedModel converter.
        # `model.export` infers the signature of subclassed models too.
        directory = tempfile.mkdtemp(prefix="tfkd_export_")
        model.export(
            directory,
            format="tf_saved_model",
            input_signature=input_signature,
            verbose=False,
        )
        return tf.lite.TFLiteConverter.from_saved_model(directory), directory
    if input_signature is None:
        return tf.lite.TFLiteConverter.from_keras_model(model), None
    function = tf.function(
        lambda *inputs: model(*inputs, training=False),
        input_signature=input_signature,
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model
    )
    return converter, None


def _configure(converter, quantization, calibration):
    if quantization is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        if calibration is not None:
            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            ]
        # Without calibration data, a QAT model's own ranges quantize it: the
        # INT8-only op set is then left out, because TF 2.21 checks it for a
        # representative dataset before it sees the fake-quant ops.


def _check_fully_integer(content, model, calibrated):
    """Refuses an int8 file in which some ops still compute in float."""
    try:
        interpreter = _litert.interpreter(content)
    except ImportError:
        return  # The check is a safeguard; LiteRT is an optional extra.
    float_tensors = [
        detail["name"]
        for detail in interpreter.get_tensor_details()
        if detail["dtype"] == np.float32
    ]
    if not float_tensors:
        return
    # LiteRT's op list; the tensor names say it less clearly.
    ops = sorted(
        {
            op["op_name"]
            for op in _keras.litert_ops(interpreter)
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
            and np.float32
            in list(op["operand_types"]) + list(op["result_types"])
        }
    )
    where = f"ops {ops}" if ops else f"tensors {float_tensors[:5]}"
    if calibrated:
        fix = (
            "These ops have no int8 kernel in LiteRT: replace them in the "
            "model (e.g. precompute a `Sin` positional encoding as a "
            'constant), export with `quantization="dynamic"` or None, or '
            "pass `allow_float_ops=True` to accept a file that dequantizes "
            "around them."
        )
    else:
        fix = (
            "Parts of the model are not covered by its quantization-aware "
            "wrappers: pass `representative_data` to calibrate them."
        )
    raise ValueError(
        f'The "int8" conversion of {model.name!r} is not full-integer, it '
        f"left float tensors: {where} still compute in float32, with "
        f"dequantize and quantize ops around them. {fix}"
    )


def _has_recurrent_layer(model):
    return any(
        isinstance(layer, keras.layers.RNN) for layer in _iter_layers(model)
    )


def _warn_static(model):
    warnings.warn(
        f"{model.name!r} converts to TFLite only with a static batch (its "
        "recurrent layers' TensorList ops need one), so the file takes one "
        "example per `invoke()`; `predict_tflite` and `evaluate_tflite` feed "
        "it one example at a time. Pass `input_signature=[tf.TensorSpec(("
        "batch, ...))]` to fix another batch size.",
        stacklevel=3,
    )


def _static_signature(model):
    """A batch-1 signature of `model`'s inputs, or None if unknown."""
    specs = _calibration.input_specs(model)
    if not specs or any(not s or None in s[1:] for _, s, _ in specs):
        return None
    return [
        tf.TensorSpec((1,) + tuple(shape[1:]), dtype, name=name)
        for name, shape, dtype in specs
    ]


def _convert(
    model,
    input_signature,
    quantization,
    representative_data,
    converter_kwargs,
    static_batch,
):
    calibration = None
    if quantization == "int8" and representative_data is not None:
        calibration = _calibration.batches(
            representative_data,
            model,
            _calibration.input_specs(model),
            static_batch=static_batch,
        )
    with _learned_ranges.learned_ranges(model):
        converter, directory = _converter(model, input_signature)
    try:
        _configure(converter, quantization, calibration)
        for attribute, value in converter_kwargs.items():
            if not hasattr(converter, attribute):
                raise ValueError(
                    f"Unknown converter attribute {attribute!r}: "
                    "`tf.lite.TFLiteConverter` has no such attribute. "
                    f"Received: {attribute}={value!r}"
                )
            setattr(converter, attribute, value)
        with warnings.catch_warnings():
            # tf_keras int8: calibration sets the input statistics that this
            # warning of the legacy converter path asks for.
            warnings.filterwarnings(
                "ignore", message="Statistics for quantized inputs"
            )
            # Calibrating several inputs by name, TF's calibrator builds its
            # own (deprecated) `tf.lite.Interpreter`.
            warnings.filterwarnings(
                "ignore", message=r"(?s).*tf.lite.Interpreter is deprecated"
            )
            return converter.convert()
    finally:
        if directory is not None:
            tf.io.gfile.rmtree(directory)


def to_tflite(
    model: keras.Model,
    quantization: str | None = None,
    representative_data: tf.data.Dataset
    | np.ndarray
    | Sequence[np.ndarray]
    | None = None,
    *,
    output_path: str | os.PathLike | None = None,
    input_signature: Sequence[tf.TensorSpec] | None = None,
    allow_float_ops: bool = False,
    **converter_kwargs: Any,
) -> bytes:
    """Converts a Keras model to a TFLite (LiteRT) flatbuffer.

    Pruning wrappers are stripped first (`tfkd.quantization.strip`);
    quantization-aware models (`tfkd.quantization.quantize_aware`) are
    converted with their learned ranges. The model's input batch dimension
    stays dynamic, except for models that convert only with a static batch
    (recurrent layers such as LSTM, or a conversion that fails on TensorList
    ops): they are converted with a batch of 1, with a warning. A model with
    several inputs keeps their Keras order in the file's metadata, so that
    `predict_tflite` and `evaluate_tflite` feed a list of arrays by input
    name in that order (the converter orders the input tensors its own way:
    never feed them by index).

    | `quantization` | weights | activations | input / output |
    |---|---|---|---|
    | `None` | float32 | float32 | float32 |
    | `"float16"` | float16 | float32 | float32 |
    | `"dynamic"` | int8 (kernels with over 1024 values) | float32 | float32 |
    | `"int8"` | int8 | int8 | int8 (`TFLITE_BUILTINS_INT8`) |

    ```
    int8 value q = clip(round(x / scale) + zero_point, -128, 127)
    ```

    Args:
        model: a built Keras model (a student, e.g. `distiller.student`,
            not the `tfkd.Distiller`); Keras 3 or tf_keras, Sequential,
            Functional or subclassed (called once).
        quantization: one of `None`, `"float16"`, `"dynamic"`, `"int8"`.
            Defaults to `None` (float32).
        representative_data: calibration inputs for `"int8"`: a
            `tf.data.Dataset` of input batches or of `(x, y)` / `(x, y, w)`
            batches, a NumPy array of inputs, or an `(x, y)` tuple of arrays;
            for several inputs, a list of arrays in the model's input order
            or a dict keyed by input name (in a dataset too). Every batch is
            checked first: the model's input shapes, finite values.
            A few hundred examples are enough (use `dataset.take(n)`).
            Used by `"int8"` only, and required unless the model is
            quantization-aware (its file must then come out fully integer).
            Defaults to `None`.
        output_path: if set, the bytes are also written there. Defaults to
            `None`.
        input_signature: a list of `tf.TensorSpec`, one per input, for models
            whose input shape cannot be inferred. Defaults to `None`.
        allow_float_ops: for `"int8"`, accept a file in which ops without an
            int8 kernel (e.g. `Sin`, `Cumsum`) still compute in float32
            between dequantize and quantize ops. Defaults to `False`: such a
            file is refused, naming the ops.
        **converter_kwargs: attributes set on the `tf.lite.TFLiteConverter`
            (e.g. `experimental_new_quantizer=True`).

    Returns:
        The `.tflite` model as bytes.

    Raises:
        ValueError: for an unknown `quantization`, `"int8"` without
            `representative_data` for a model it cannot fully quantize, an
            `"int8"` file with float ops (see `allow_float_ops`),
            `representative_data` of the wrong shape or with inf or NaN,
            `"int8"` for a recurrent model (TF's calibrator crashes on it),
            or an unknown converter attribute.
        TypeError: if `model` (e.g. a `tfkd.Distiller`) or
            `representative_data` has a wrong type.

    Example:
        >>> int8_bytes = tfkd.export.to_tflite(
        ...     distiller.student, "int8", train_data.take(10),
        ...     output_path="student_int8.tflite")

    References:
        Jacob et al. "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
    """
    _quantization.check_model(model)
    _check_quantization(quantization)
    _check_output_path(output_path)
    qat = _quantization.is_quantization_aware(model)
    if quantization == "int8" and representative_data is None and not qat:
        raise ValueError(
            f'quantization="int8" calibrates the activation ranges of '
            f"{model.name!r} on `representative_data`, which is None. Pass a "
            "few hundred training inputs, e.g. "
            "`representative_data=train_data.take(10)` or an array of inputs "
            "(quantization-aware models need none)."
        )
    model = _quantization.strip(model)
    recurrent = _has_recurrent_layer(model)
    if quantization == "int8" and recurrent:
        # TF 2.21's calibrator crashes the Python process (segmentation
        # fault) on the fused LSTM op.
        raise ValueError(
            f'quantization="int8" cannot convert {model.name!r}: TF\'s int8 '
            "calibrator crashes the Python process on recurrent layers "
            "(LSTM, GRU, SimpleRNN). Export it with "
            'quantization="dynamic" (int8 weights) or "float16".'
        )
    arguments = (quantization, representative_data, converter_kwargs)
    signature = None
    if input_signature is None and recurrent:
        signature = _static_signature(model)
    if signature is None:
        try:
            content = _convert(model, input_signature, *arguments, False)
        except Exception as error:
            # TensorList ops (a loop over time steps) lower to TFLite builtins
            # only with a known batch size.
            if input_signature is None and "TensorList" in str(error):
                signature = _static_signature(model)
            if signature is None:
                raise
            try:
                content = _convert(model, signature, *arguments, True)
            except Exception:
                raise error from None
            _warn_static(model)
    else:
        content = _convert(model, signature, *arguments, True)
        _warn_static(model)
    if quantization == "int8" and not allow_float_ops:
        _check_fully_integer(content, model, representative_data is not None)
    specs = _calibration.input_specs(model)
    if specs and len(specs) > 1:
        content = _tflite_meta.with_input_order(
            content, [name for name, *_ in specs]
        )
    if output_path is not None:
        with open(output_path, "wb") as f:
            f.write(content)
    return content


def _check_output_path(output_path):
    """Refuses a path that cannot be written, before any conversion."""
    if output_path is None:
        return
    path = os.fspath(output_path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(
            f"`output_path` is a folder: {path!r}. Pass a file path, e.g. "
            f"{os.path.join(path, 'model.tflite')!r}."
        )
    if not os.path.isdir(folder):
        raise ValueError(
            f"`output_path` is in a folder that does not exist: {folder!r}. "
            "Create it first (`os.makedirs(folder, exist_ok=True)`), or pass "
            f"another path. Received: output_path={path!r}"
        )
