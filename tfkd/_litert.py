"""Running `.tflite` files with the LiteRT interpreter, as a device would.

`predict_tflite` and `evaluate_tflite` (public as `tfkd.export.*`) feed float
batches, quantize them for int8 inputs with the file's own scale and zero
point, and dequantize the outputs. Needs `ai_edge_litert`
(`pip install tfkd[litert]`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Examples per interpreter call (and per calibration batch of `to_tflite`).
NUMPY_BATCH = 32


def interpreter(model_content_or_path, num_threads=None):
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
        self.interpreter = interpreter(model, num_threads)
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
    for start in range(0, len(x), NUMPY_BATCH):
        yield x[start : start + NUMPY_BATCH], y[start : start + NUMPY_BATCH]


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
