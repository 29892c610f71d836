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

from tfkd import _tflite_meta

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
    """Runs a LiteRT model with one output on float batches of its inputs.

    A multi-input file is fed by input name: its signature names each input
    tensor by the Keras input's name, and `to_tflite` keeps their Keras
    order, so a list of arrays is fed in the order the Keras model takes.
    """

    def __init__(self, model, num_threads=None):
        self.interpreter = interpreter(model, num_threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(outputs) != 1:
            raise ValueError(
                "tfkd.export runs models with one output; this one has "
                f"{len(outputs)} outputs."
            )
        self.output = outputs[0]
        self.names = None  # Input names, for multi-input files.
        self.ordered = True  # Whether a list of arrays can be fed.
        if len(inputs) > 1:
            inputs, self.names, self.ordered = _named_inputs(
                self.interpreter, _content(model), inputs
            )
        self.inputs = inputs
        self.dynamic_batch = all(
            detail["shape_signature"][0] == -1 for detail in inputs
        )
        self.shapes = None

    def arrays(self, x, argument="x"):
        """The float arrays of `x`, one per input in feeding order."""
        if self.names is None:
            if isinstance(x, dict) and len(x) == 1:
                x = next(iter(x.values()))
            elif isinstance(x, (list, tuple)) and len(x) == 1:
                x = x[0]
            arrays = [_float_array(x, argument)]
        elif isinstance(x, dict):
            if set(x) != set(self.names):
                raise ValueError(
                    f"`{argument}` must hold one array per input of the "
                    f"model, keyed by name: {sorted(self.names)}. Received "
                    f"keys: {sorted(x)}"
                )
            arrays = [_float_array(x[name], argument) for name in self.names]
        elif isinstance(x, (list, tuple)) and len(x) == len(self.names):
            if not self.ordered:
                raise ValueError(
                    f"This .tflite file has {len(self.names)} inputs and does "
                    "not record their Keras order (it was not written by "
                    "`tfkd.export.to_tflite`). Pass `{argument}` as a dict "
                    f"keyed by input name: {sorted(self.names)}."
                )
            arrays = [_float_array(array, argument) for array in x]
        else:
            raise ValueError(
                f"The model has {len(self.names)} inputs, {self.names}: "
                f"pass `{argument}` as a list of {len(self.names)} arrays in "
                "that order, or as a dict keyed by input name. Received: "
                f"{_describe(x)}"
            )
        for array, detail in zip(arrays, self.inputs):
            expected = [int(d) for d in detail["shape_signature"]]
            shape = list(array.shape)
            if len(shape) != len(expected) or any(
                e not in (-1, s) for e, s in zip(expected[1:], shape[1:])
            ):
                name = "" if self.names is None else f" {detail['key']!r}"
                raise ValueError(
                    f"Invalid shape for `{argument}`: the model's input{name} "
                    f"takes batches of shape {_shape(expected)}. Received an "
                    f"array of shape {tuple(shape)}."
                )
        if len({len(array) for array in arrays}) > 1:
            raise ValueError(
                f"The arrays of `{argument}` must hold the same number of "
                "examples. Received shapes: "
                f"{[tuple(a.shape) for a in arrays]}"
            )
        return arrays

    def _resize(self, arrays):
        shapes = [list(array.shape) for array in arrays]
        if self.shapes != shapes:
            for detail, shape in zip(self.inputs, shapes):
                self.interpreter.resize_tensor_input(
                    detail["index"], shape, strict=True
                )
            self.interpreter.allocate_tensors()
            self.shapes = shapes

    def quantize(self, arrays):
        return [_quantize(x, d) for x, d in zip(arrays, self.inputs)]

    def _dequantize(self, y):
        if self.output["dtype"] == np.float32:
            return y
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale

    def set_inputs(self, q):
        self._resize(q)
        # A fused LSTM keeps its state in variable tensors: each batch starts
        # from zeros, as in Keras.
        self.interpreter.reset_all_variables()
        for detail, array in zip(self.inputs, q):
            self.interpreter.set_tensor(detail["index"], array)

    def invoke(self, q):
        """Runs quantized batches; returns the raw (quantized) output."""
        self.set_inputs(q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def __call__(self, arrays):
        q = self.quantize(arrays)
        if self.dynamic_batch:
            return self._dequantize(self.invoke(q))
        return np.concatenate(
            [
                self._dequantize(self.invoke([a[i : i + 1] for a in q]))
                for i in range(len(q[0]))
            ]
        )


def _content(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def _named_inputs(interpreter, content, inputs):
    """The input details of a multi-input file in Keras order, their names,
    and whether that order is known."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(
            f"This .tflite file has {len(inputs)} inputs and "
            f"{len(signatures)} signatures: tfkd.export runs multi-input "
            "files with exactly one signature, which names their inputs."
        )
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_name = runner.get_input_details()
    order = _tflite_meta.input_order(content)
    ordered = order is not None and sorted(order) == sorted(by_name)
    names = list(order) if ordered else sorted(by_name)
    details = []
    for name in names:
        detail = dict(by_name[name])
        detail["key"] = name
        details.append(detail)
    return details, names, ordered


def _float_array(x, argument):
    try:
        array = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`{argument}` must hold numeric arrays. Received: {_describe(x)}"
        ) from error
    if array.ndim < 1:
        raise ValueError(
            f"`{argument}` must hold examples along its first axis. Received "
            f"a scalar {x!r}."
        )
    return array


def _quantize(x, detail):
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _shape(signature):
    return tuple(None if d == -1 else d for d in signature)


def _describe(x):
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} items"
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    return f"{x!r} of type {type(x).__name__}"


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
