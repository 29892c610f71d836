"""TFLite export of students and their evaluation with LiteRT.

`to_tflite` converts a Keras 3 or tf_keras model (Sequential, Functional or
subclassed, float, pruned or quantization-aware) to a `.tflite` flatbuffer;
`evaluate_tflite` and `predict_tflite` run it with the LiteRT interpreter
(`pip install tfkd[litert]`), as a device would.

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
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfkd import _keras
from tfkd import quantization as _quantization
from tfkd._keras import keras

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
_NUMPY_BATCH = 32


def _check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            "Invalid value for argument `quantization`. Expected one of "
            f"{list(QUANTIZATIONS)}. Received: quantization={quantization!r}"
        )


def _representative_dataset(data):
    """A generator function of `[float32 batch]` for the converter.

    NumPy data is checked now, not when the converter first calls it.
    """
    if isinstance(data, tf.data.Dataset):

        def batches():
            for element in data:
                x = element[0] if isinstance(element, tuple) else element
                yield [np.asarray(x, dtype=np.float32)]

        return batches
    if isinstance(data, (tuple, list)):
        data = data[0]
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            "`representative_data` must be a `tf.data.Dataset`, a NumPy array "
            "of inputs or an `(x, y)` tuple of arrays. Received: "
            f"{type(data).__name__}"
        ) from error
    if array.ndim < 2:
        raise ValueError(
            "`representative_data` must hold examples along its first axis, "
            f"`(examples, ...)`. Received an array of shape {array.shape}."
        )
    return lambda: (
        [array[start : start + _NUMPY_BATCH]]
        for start in range(0, len(array), _NUMPY_BATCH)
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


def _check_fully_integer(content, model):
    try:
        interpreter = _interpreter(content)
    except ImportError:
        return  # The check is a safeguard; LiteRT is an optional extra.
    float_tensors = [
        detail["name"]
        for detail in interpreter.get_tensor_details()
        if detail["dtype"] == np.float32
    ]
    if float_tensors:
        raise ValueError(
            f"The int8 conversion of {model.name!r} without "
            "`representative_data` left float tensors "
            f"{float_tensors[:5]}: parts of the model are not covered by its "
            "quantization-aware wrappers. Pass `representative_data` to "
            "calibrate them."
        )


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
    **converter_kwargs: Any,
) -> bytes:
    """Converts a Keras model to a TFLite (LiteRT) flatbuffer.

    Pruning wrappers are stripped first (`tfkd.quantization.strip`);
    quantization-aware models (`tfkd.quantization.quantize_aware`) are
    converted with their learned ranges. The model's input batch dimension
    stays dynamic.

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
        model: a built Keras model that takes one input tensor; Keras 3 or
            tf_keras, Sequential, Functional or subclassed (called once).
        quantization: one of `None`, `"float16"`, `"dynamic"`, `"int8"`.
            Defaults to `None` (float32).
        representative_data: calibration inputs for `"int8"`: a
            `tf.data.Dataset` of input batches or of `(x, y)` / `(x, y, w)`
            batches, a NumPy array of inputs, or an `(x, y)` tuple of arrays.
            A few hundred examples are enough (use `dataset.take(n)`).
            Used by `"int8"` only, and required unless the model is
            quantization-aware (its file must then come out fully integer).
            Defaults to `None`.
        output_path: if set, the bytes are also written there. Defaults to
            `None`.
        input_signature: a list of `tf.TensorSpec`, one per input, for models
            whose input shape cannot be inferred. Defaults to `None`.
        **converter_kwargs: attributes set on the `tf.lite.TFLiteConverter`
            (e.g. `experimental_new_quantizer=True`).

    Returns:
        The `.tflite` model as bytes.

    Raises:
        ValueError: for an unknown `quantization`, `"int8"` without
            `representative_data` for a model it cannot fully quantize, or an
            unknown converter attribute.
        TypeError: if `model` or `representative_data` has a wrong type.

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
    calibration = None
    if quantization == "int8" and representative_data is not None:
        calibration = _representative_dataset(representative_data)
    model = _quantization.strip(model)
    with _quantization.learned_ranges(model):
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
            content = converter.convert()
    finally:
        if directory is not None:
            tf.io.gfile.rmtree(directory)
    if quantization == "int8" and calibration is None:
        _check_fully_integer(content, model)
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


def _interpreter(model_content_or_path, num_threads=None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "Running .tflite files needs the LiteRT interpreter. Install it "
            "with `pip install tfkd[litert]`."
        ) from error
    if isinstance(model_content_or_path, (bytes, bytearray)):
        return Interpreter(
            model_content=bytes(model_content_or_path), num_threads=num_threads
        )
    if isinstance(model_content_or_path, (str, os.PathLike)):
        path = os.fspath(model_content_or_path)
        if not os.path.isfile(path):
            raise ValueError(f"No .tflite file at {path!r}.")
        try:
            return Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                f"{path!r} is not a readable .tflite model ({error}). Convert "
                "it again with `tfkd.export.to_tflite(model, output_path=...)`."
            ) from error
    raise TypeError(
        "`model` must be the bytes of a .tflite model or its path. Received: "
        f"{type(model_content_or_path).__name__}"
    )


class _Runner:
    """Runs one-input, one-output LiteRT models on float batches."""

    def __init__(self, model, num_threads=None):
        self.interpreter = _interpreter(model, num_threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                "tfkd.export runs models with one input and one output; this "
                f"one has {len(inputs)} inputs and {len(outputs)} outputs."
            )
        self.input, self.output = inputs[0], outputs[0]
        self.dynamic_batch = self.input["shape_signature"][0] == -1
        self.shape = None

    def _resize(self, shape):
        if self.shape != shape:
            self.interpreter.resize_tensor_input(
                self.input["index"], shape, strict=True
            )
            self.interpreter.allocate_tensors()
            self.shape = shape

    def _quantize(self, x):
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(x / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize(self, y):
        if self.output["dtype"] == np.float32:
            return y
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale

    def invoke(self, q):
        """Runs a quantized batch; returns the raw (quantized) output."""
        self._resize(list(q.shape))
        self.interpreter.set_tensor(self.input["index"], q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float32)
        q = self._quantize(x)
        if self.dynamic_batch:
            return self._dequantize(self.invoke(q))
        return np.concatenate(
            [self._dequantize(self.invoke(q[i : i + 1])) for i in range(len(q))]
        )


def predict_tflite(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
) -> np.ndarray:
    """Runs a `.tflite` model with LiteRT and returns float outputs.

    int8 inputs are quantized and int8 outputs dequantized with the model's
    scale and zero point, so the result compares with the Keras model's.

    Args:
        model: the `.tflite` bytes (from `to_tflite`) or a path to the file.
        x: float inputs, an array of shape `(n, ...)`.
        batch_size: examples per `invoke`. Defaults to `64`.
        num_threads: LiteRT CPU threads. Defaults to `None` (LiteRT's choice).

    Returns:
        A float32 array, e.g. logits of shape `(n, classes)`.

    Example:
        >>> logits = tfkd.export.predict_tflite(int8_bytes, x_test)
    """
    runner = _Runner(model, num_threads)
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate(
        [runner(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def _labelled_batches(data):
    if isinstance(data, tf.data.Dataset):
        for element in data:
            if not isinstance(element, tuple) or len(element) < 2:
                raise ValueError(
                    "`data` must yield `(x, y)` batches with labels to measure "
                    f"accuracy. Received elements: {data.element_spec}"
                )
            yield np.asarray(element[0]), np.asarray(element[1])
        return
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise TypeError(
            "`data` must be a `tf.data.Dataset` of `(x, y)` batches or an "
            f"`(x, y)` tuple of arrays. Received: {type(data).__name__}"
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    for start in range(0, len(x), _NUMPY_BATCH):
        yield x[start : start + _NUMPY_BATCH], y[start : start + _NUMPY_BATCH]


def _predicted_classes(outputs):
    if outputs.shape[-1] == 1:  # One logit: binary classification.
        return (outputs[..., 0] > 0).astype(np.int64)
    return np.argmax(outputs, axis=-1)


def _labels(y, outputs):
    y = np.asarray(y)
    if y.ndim == outputs.ndim and y.shape[-1] == outputs.shape[-1] > 1:
        return np.argmax(y, axis=-1)  # One-hot.
    return y.reshape(outputs.shape[:-1]).astype(np.int64)


def evaluate_tflite(
    model: bytes | str | os.PathLike,
    data: tf.data.Dataset | Sequence[np.ndarray],
    *,
    num_threads: int | None = None,
    latency_examples: int = 100,
    warmup: int = 5,
) -> dict:
    """Accuracy, latency and size of a `.tflite` classifier run by LiteRT.

    Accuracy runs whole batches (the input tensor resized to each batch).
    Latency is what one example costs on a device: the median wall-clock time
    of one `invoke()` on a single example (batch 1), over the first
    `latency_examples` examples after `warmup` untimed runs; quantizing the
    input and dequantizing the output are not timed.

    ```
    accuracy = mean(argmax(logits) == y)
    ```

    Args:
        model: the `.tflite` bytes (from `to_tflite`) or a path to the file.
        data: a `tf.data.Dataset` of `(x, y)` batches, or an `(x, y)` tuple of
            arrays. Labels are class ids, or one-hot.
        num_threads: LiteRT CPU threads. Defaults to `None` (LiteRT's choice).
        latency_examples: examples timed for `latency_ms`. Defaults to `100`.
        warmup: untimed runs before timing. Defaults to `5`.

    Returns:
        A dict with `accuracy` (float in [0, 1]), `latency_ms` (median per
        example, batch 1), `size_bytes` (of the flatbuffer) and
        `num_examples`.

    Raises:
        ImportError: without `ai_edge_litert` (`pip install tfkd[litert]`).

    Example:
        >>> tfkd.export.evaluate_tflite(int8_bytes, (x_test, y_test))
        {'accuracy': 0.93, 'latency_ms': 0.05, 'size_bytes': 27360, ...}
    """
    if isinstance(model, (str, os.PathLike)):
        size = os.path.getsize(model)
    else:
        size = len(model)
    runner = _Runner(model, num_threads)
    correct = total = 0
    timing_inputs = []
    for x, y in _labelled_batches(data):
        outputs = runner(x)
        correct += int(
            (_predicted_classes(outputs) == _labels(y, outputs)).sum()
        )
        total += len(outputs)
        if len(timing_inputs) < latency_examples:
            timing_inputs.extend(x[: latency_examples - len(timing_inputs)])
    if not total:
        raise ValueError("`data` holds no example.")
    interpreter = runner.interpreter
    times = []
    for i, example in enumerate(timing_inputs[:1] * warmup + timing_inputs):
        q = runner._quantize(np.asarray(example, np.float32)[None])
        runner._resize(list(q.shape))
        interpreter.set_tensor(runner.input["index"], q)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "accuracy": correct / total,
        "latency_ms": 1000.0 * float(np.median(times)),
        "size_bytes": size,
        "num_examples": total,
    }
