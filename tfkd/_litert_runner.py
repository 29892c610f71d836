"""LiteRT interpreters of `.tflite` files, fed batches by input name.

`_Runner` quantizes int8 inputs with the file's own scale and zero point,
dequantizes the output, and feeds a multi-input file by input name in the
Keras order that `to_tflite` keeps (`tfkd._tflite_meta`).
"""

from __future__ import annotations

import os

import numpy as np

from tfkd import _tflite_meta


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
                    f"`tfkd.export.to_tflite`). Pass `{argument}` as a dict "
                    f"keyed by input name: {sorted(self.names)}."
                )
            arrays = [_float_array(array, argument) for array in x]
        else:
            raise ValueError(
                f"The model has {len(self.names)} inputs, {self.names}: "
                f"pass `{argument}` as a list of {len(self.names)} arrays in "
                "that order, or as a dict keyed by input name. Received: "
                f"{describe(x)}"
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
        array = np.asarray(x)
        if not np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`{argument}` must hold numeric arrays. Received: {describe(x)}"
        ) from error
    if array.ndim < 1:
        raise ValueError(
            f"`{argument}` must hold examples along its first axis. Received "
            f"a scalar {x!r}."
        )
    return array


def _quantize(x, detail):
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if dtype == np.float32 or not scale:
        return x.astype(dtype)  # A float input, or integer ids (Embedding).
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _shape(signature):
    return tuple(None if d == -1 else d for d in signature)


def describe(x):
    """`x` in an error message: a list's length, an array's shape, or its
    value and type."""
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} items"
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    return f"{x!r} of type {type(x).__name__}"
