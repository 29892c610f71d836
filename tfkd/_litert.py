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

from tfkd._litert_runner import _Runner
from tfkd._litert_runner import interpreter  # noqa: F401 - tfkd._litert API

# Examples per interpreter call (and per calibration batch of `to_tflite`).
NUMPY_BATCH = 32


def predict_tflite(
    model: bytes | str | os.PathLike,
    x: np.ndarray | Sequence[np.ndarray] | dict[str, np.ndarray],
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
) -> np.ndarray:
    """Runs a `.tflite` model with LiteRT and returns float outputs.

    int8 inputs are quantized and int8 outputs dequantized with the model's
    scale and zero point, so the result compares with the Keras model's.

    Args:
        model: the `.tflite` bytes (from `to_tflite`) or a path to the file.
        x: float inputs, an array of shape `(n, ...)`; for a model with
            several inputs, a list of arrays in the order of the Keras
            model's inputs (`model.inputs`), or a dict keyed by input name.
            The converter orders the file's input tensors its own way: they
            are fed by name, never by index.
        batch_size: examples per `invoke`. Defaults to `64`.
        num_threads: LiteRT CPU threads. Defaults to `None` (LiteRT's choice).

    Returns:
        A float32 array, e.g. logits of shape `(n, classes)`.

    Raises:
        ValueError: for inputs whose shape or number does not match the
            model's, or a `batch_size` under 1.

    Example:
        >>> logits = tfkd.export.predict_tflite(int8_bytes, x_test)
    """
    _check_batch_size(batch_size)
    runner = _Runner(model, num_threads)
    arrays = runner.arrays(x)
    return np.concatenate(
        [
            runner([a[i : i + batch_size] for a in arrays])
            for i in range(0, len(arrays[0]), batch_size)
        ]
    )


def _check_batch_size(batch_size):
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            "Invalid value for argument `batch_size`. Expected a positive "
            f"integer. Received: batch_size={batch_size!r}"
        )


def _labelled_batches(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        for element in data:
            if not isinstance(element, tuple) or len(element) < 2:
                raise ValueError(
                    "`data` must yield `(x, y)` batches with labels to measure "
                    f"accuracy. Received elements: {data.element_spec}"
                )
            yield _numpy(element[0]), np.asarray(element[1])
        return
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise TypeError(
            "`data` must be a `tf.data.Dataset` of `(x, y)` batches or an "
            f"`(x, y)` tuple of arrays. Received: {type(data).__name__}"
        )
    x, y = _numpy(data[0]), np.asarray(data[1])
    first = next(iter(x.values())) if isinstance(x, dict) else x
    first = first[0] if isinstance(first, list) else first
    if y.ndim < 1 or len(y) != len(first):
        raise ValueError(
            "`data` must hold one label per example: the inputs hold "
            f"{len(first)} examples, the labels have shape {y.shape}."
        )
    for start in range(0, len(y), batch_size):
        yield (
            _slice(x, start, start + batch_size),
            y[start : start + batch_size],
        )


def _numpy(x):
    if isinstance(x, dict):
        return {key: np.asarray(value) for key, value in x.items()}
    if isinstance(x, (list, tuple)) and all(
        isinstance(value, (np.ndarray, tf.Tensor)) for value in x
    ):
        return [np.asarray(value) for value in x]  # One array per input.
    return np.asarray(x)


def _slice(x, start, stop):
    if isinstance(x, dict):
        return {key: value[start:stop] for key, value in x.items()}
    if isinstance(x, list):
        return [value[start:stop] for value in x]
    return x[start:stop]


def _predicted_classes(outputs):
    if outputs.shape[-1] == 1:  # One logit: binary classification.
        return (outputs[..., 0] > 0).astype(np.int64)
    return np.argmax(outputs, axis=-1)


def _labels(y, outputs):
    y = np.asarray(y)
    if y.ndim == outputs.ndim and y.shape[-1] == outputs.shape[-1] > 1:
        return np.argmax(y, axis=-1)  # One-hot.
    positions = outputs.shape[:-1]
    if y.size != int(np.prod(positions)) or len(y) != len(outputs):
        raise ValueError(
            "The labels do not match the model's outputs: outputs of shape "
            f"{outputs.shape} take class ids of shape {positions} (or one-hot "
            f"labels of shape {outputs.shape}). Received labels of shape "
            f"{y.shape}."
        )
    return y.reshape(positions).astype(np.int64)


def evaluate_tflite(
    model: bytes | str | os.PathLike,
    data: tf.data.Dataset | Sequence[np.ndarray],
    *,
    batch_size: int = NUMPY_BATCH,
    num_threads: int | None = None,
    latency_examples: int = 100,
    warmup: int = 5,
) -> dict:
    """Accuracy, latency and size of a `.tflite` classifier run by LiteRT.

    Accuracy runs whole batches (the input tensor resized to each batch).
    For outputs with positions, e.g. `(batch, time, classes)`, it is the
    accuracy over every position, as Keras' `"accuracy"` metric computes it.
    Latency is what one example costs on a device: the median wall-clock time
    of one `invoke()` on a single example (batch 1), over the first
    `latency_examples` examples after `warmup` untimed runs; quantizing the
    input and dequantizing the output are not timed.

    ```
    accuracy = mean(argmax(logits, axis=-1) == y)  # over every position
    ```

    Args:
        model: the `.tflite` bytes (from `to_tflite`) or a path to the file.
        data: a `tf.data.Dataset` of `(x, y)` batches, or an `(x, y)` tuple of
            arrays. Labels are class ids, or one-hot. For a model with several
            inputs, `x` is a list of arrays in the order of the Keras model's
            inputs, or a dict keyed by input name (as in `predict_tflite`).
        batch_size: examples per `invoke` for arrays (a dataset keeps its own
            batches). Defaults to `32`.
        num_threads: LiteRT CPU threads. Defaults to `None` (LiteRT's choice).
        latency_examples: examples timed for `latency_ms`. Defaults to `100`.
        warmup: untimed runs before timing. Defaults to `5`.

    Returns:
        A dict with `accuracy` (float in [0, 1]), `latency_ms` (median per
        example, batch 1), `size_bytes` (of the flatbuffer) and
        `num_examples`.

    Raises:
        ImportError: without `ai_edge_litert` (`pip install tfkd[litert]`).
        ValueError: for inputs whose shape does not match the model's,
            labels that do not match its outputs, or a `batch_size` under 1.

    Example:
        >>> tfkd.export.evaluate_tflite(int8_bytes, (x_test, y_test))
        {'accuracy': 0.93, 'latency_ms': 0.05, 'size_bytes': 27360, ...}
    """
    _check_batch_size(batch_size)
    if isinstance(model, (str, os.PathLike)):
        size = os.path.getsize(model)
    else:
        size = len(model)
    runner = _Runner(model, num_threads)
    correct = positions = total = 0
    timing_inputs = []
    for x, y in _labelled_batches(data, batch_size):
        arrays = runner.arrays(x, "data")
        outputs = runner(arrays)
        matches = _predicted_classes(outputs) == _labels(y, outputs)
        correct += int(matches.sum())
        positions += matches.size
        total += len(outputs)
        for i in range(
            min(len(outputs), latency_examples - len(timing_inputs))
        ):
            timing_inputs.append([a[i : i + 1] for a in arrays])
    if not total:
        raise ValueError("`data` holds no example.")
    times = []
    for i, example in enumerate(timing_inputs[:1] * warmup + timing_inputs):
        runner.set_inputs(runner.quantize(example))
        start = time.perf_counter()
        runner.interpreter.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "accuracy": correct / positions,
        "latency_ms": 1000.0 * float(np.median(times)),
        "size_bytes": size,
        "num_examples": total,
    }
