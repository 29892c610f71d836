"""Calibration (representative) data for int8 conversion, checked.

The converter trusts calibration batches: a batch of the wrong width fails
deep in the calibrator, and one `inf` or NaN makes it compute an infinite
scale and crash the Python process. Every batch is checked here against the
model's inputs before it is fed: arrays before converting, a dataset's
batches as the converter reads them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfkd import _litert
from tfkd._litert_runner import describe


def input_specs(model):
    """`[(name, shape, dtype)]` of the inputs, in Keras order, or None."""
    try:
        inputs = model.inputs
    except AttributeError:
        return None
    if not inputs:
        return None
    names = getattr(model, "input_names", None)
    if not names or len(names) != len(inputs):
        names = [tensor.name.split(":")[0] for tensor in inputs]
    return [
        (name, tuple(tensor.shape), tf.as_dtype(tensor.dtype))
        for name, tensor in zip(names, inputs)
    ]


def batches(data, model, specs, static_batch=False):
    """The checked calibration batches of `data`: a generator function of
    `[array]` (one input) or `{input name: array}` (several), for the
    converter's `representative_dataset`.

    Args:
        data: a `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)` batches, an
            array of inputs, an `(x, y)` tuple, or (several inputs) a list of
            arrays in the model's input order or a dict keyed by input name.
        model: the model, named in errors.
        specs: `input_specs(model)`, or None when unknown.
        static_batch: feed one example at a time (a file with batch 1).
    """
    if isinstance(data, tf.data.Dataset):
        # Read lazily, as the converter asks (a dataset may be large): each
        # batch is checked before it is fed.
        def pieces():
            for element in data:
                x = element[0] if isinstance(element, tuple) else element
                yield _inputs(x, specs, model)

    else:
        x = data
        if isinstance(data, (tuple, list)) and data and _is_x(data[0], specs):
            x = data[0]  # An `(x, y)` tuple.
        piece = _inputs(x, specs, model)
        _check(piece, specs, model, 0)  # Arrays: before converting.

        def pieces():
            yield piece

    size = 1 if static_batch else _litert.NUMPY_BATCH
    names = [name for name, *_ in specs] if specs else None
    multi = names is not None and len(names) > 1

    def generate():
        offset = 0
        for piece in pieces():
            _check(piece, specs, model, offset)
            offset += len(piece[0])
            if specs is not None:  # e.g. int32 ids for an Embedding.
                piece = [
                    array.astype(dtype.as_numpy_dtype)
                    for array, (_, _, dtype) in zip(piece, specs)
                ]
            for start in range(0, len(piece[0]), size):
                arrays = [array[start : start + size] for array in piece]
                yield dict(zip(names, arrays)) if multi else arrays
        if not offset:
            raise ValueError("`representative_data` holds no example.")

    return generate


def _is_x(first, specs):
    """Whether the first item of a tuple is the model's whole input `x`."""
    if specs is not None and len(specs) > 1:
        return isinstance(first, (tuple, list, dict))
    return True


def _inputs(x, specs, model):
    """The float arrays of `x`, one per input in Keras order."""
    count = 1 if specs is None else len(specs)
    received = type(x).__name__
    if isinstance(x, dict):
        names = [name for name, *_ in specs or []]
        if len(x) == 1 and count == 1:
            x = next(iter(x.values()))
        elif sorted(x) != sorted(names):
            raise ValueError(
                "`representative_data` must hold one array per input of "
                f"{model.name!r}, keyed by name: {names}. Received keys: "
                f"{sorted(x)}"
            )
        else:
            x = [x[name] for name in names]
    if count > 1:
        if not isinstance(x, (tuple, list)) or len(x) != count:
            raise ValueError(
                f"{model.name!r} has {count} inputs, "
                f"{[name for name, *_ in specs]}: pass `representative_data` "
                f"as a list of {count} arrays in that order, a dict keyed by "
                "input name, or a dataset of such batches. Received: "
                f"{describe(x)}"
            )
        return [_array(item, received) for item in x]
    if isinstance(x, (tuple, list)) and len(x) == 1:
        x = x[0]
    return [_array(x, received)]


def _array(x, received):
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            "`representative_data` must be a `tf.data.Dataset`, a NumPy array "
            "of inputs or an `(x, y)` tuple of arrays (a list or dict of "
            f"arrays for several inputs). Received: {received} holding "
            f"{type(x).__name__}"
        ) from error


def _check(arrays, specs, model, offset):
    for i, array in enumerate(arrays):
        name = f" {specs[i][0]!r}" if specs and len(specs) > 1 else ""
        if array.ndim < 2 and not (specs and len(specs[i][1]) == array.ndim):
            raise ValueError(
                "`representative_data` must hold examples along its first "
                f"axis, `(examples, ...)`. Received an array of shape "
                f"{array.shape}."
            )
        if specs is not None:
            shape = specs[i][1]
            if len(shape) != array.ndim or any(
                e is not None and e != s
                for e, s in zip(shape[1:], array.shape[1:])
            ):
                raise ValueError(
                    f"Invalid shape for `representative_data`: input{name} of "
                    f"{model.name!r} takes batches of shape {shape}. Received "
                    f"an array of shape {array.shape}."
                )
        finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if not finite.all():
            index = offset + int(np.argmin(finite))
            raise ValueError(
                f"`representative_data` holds a non-finite value (inf or NaN) "
                f"in example {index}{' of input' + name if name else ''}: the "
                "converter would compute an infinite scale from it (and "
                "crash). Remove or clip such examples, e.g. "
                "`x[np.isfinite(x).all(axis=1)]`."
            )
