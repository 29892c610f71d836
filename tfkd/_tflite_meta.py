"""The order of a model's inputs, kept in the `.tflite` file's metadata.

The converter orders a multi-input model's input tensors its own way (by
name, reversed, in TF 2.21), so feeding arrays by index gives wrong outputs.
Its signature names each input by the Keras input's name; `to_tflite` adds
the Keras order of those names as metadata, so that `predict_tflite` and
`evaluate_tflite` take a list of arrays in the order the Keras model takes
them.
"""

from __future__ import annotations

import json

from tensorflow.lite.python import schema_py_generated as _schema
from tensorflow.lite.tools import flatbuffer_utils as _flatbuffer_utils

INPUT_ORDER = "tfkd_input_names"


def with_input_order(content, names):
    """`content` with `names` (the Keras order of the inputs) as metadata."""
    model = _flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = _schema.BufferT()
    buffer.data = list(json.dumps(list(names)).encode("utf-8"))
    model.buffers = (model.buffers or []) + [buffer]
    metadata = _schema.MetadataT()
    metadata.name = INPUT_ORDER
    metadata.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [metadata]
    return _flatbuffer_utils.convert_object_to_bytearray(model)


def input_order(content):
    """The Keras order of the inputs kept by `with_input_order`, or None."""
    try:
        model = _schema.Model.GetRootAsModel(bytearray(content), 0)
        for i in range(model.MetadataLength()):
            metadata = model.Metadata(i)
            if metadata.Name().decode("utf-8") != INPUT_ORDER:
                continue
            data = model.Buffers(metadata.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode("utf-8"))
    except Exception:  # noqa: BLE001 - a file without it is fed by name.
        return None
    return None
