"""The fingerprint of a teacher cache: what its contents depend on.

`tfkd.cache_teacher_outputs` stores it beside the cache and refuses to reuse
a cache whose fingerprint differs (another teacher, data set, top_k, ...);
the cached data set carries its teacher's part, which `tfkd.Distiller`
checks against its own teacher.
"""

import hashlib
import json

import numpy as np
import tensorflow as tf

from tfkd import _keras
from tfkd._version import __version__

# Config entries that cannot change what a built model outputs in inference:
# two builds of one teacher differ in them (auto-generated layer names are
# replaced separately), as do a teacher and the same one inside a Distiller
# (`trainable`) or compiled.
_INERT_KEYS = frozenset(
    ("trainable", "build_config", "compile_config", "keras_version", "seed")
)
_INERT_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
_FINGERPRINT_LABELS = {
    "tfkd_version": "tfkd version",
    "teacher_architecture": "teacher architecture (config)",
    "teacher_weights": "teacher weights",
    "teacher_taps": "tapped teacher layers",
    "top_k": "top_k",
    "tail_samples": "tail_samples",
    "element_spec": "data set element spec",
    "batches": "number of batches",
    "examples": "number of examples",
    "batch_size": "size of the first batch",
    "data": "data set values (inputs, labels or weights)",
}
_HASHED = ("teacher_architecture", "teacher_weights", "data")
# The value of a key that caches made before it existed lack.
_ABSENT = {"tail_samples": 0}
# What a pass over the data measures (`DataDigest.summary`).
DATA_KEYS = ("batches", "examples", "batch_size", "data")


def _layer_names(model):
    # Every layer's name, input layers and nested models' layers included
    # (`Sequential.layers` leaves its input layer out).
    return {layer.name for layer in _keras.all_layers(model)}


def _architecture_hash(model):
    """A hash of the config, blind to names and to what cannot change it."""
    try:
        config = json.loads(model.to_json())
    except NotImplementedError:  # A subclassed model without `get_config`.
        config = f"{type(model).__module__}.{type(model).__qualname__}"
    names = _layer_names(model)
    placeholders = {}

    def canonical(value):
        if isinstance(value, dict):
            return {
                key: canonical(item)
                for key, item in value.items()
                if key not in _INERT_KEYS and not key.endswith(_INERT_SUFFIXES)
            }
        if isinstance(value, list):
            return [canonical(item) for item in value]
        if isinstance(value, str) and value in names:
            # Numbered in order of appearance: one place, one placeholder.
            return placeholders.setdefault(
                value, f"<layer {len(placeholders)}>"
            )
        return value

    text = json.dumps(canonical(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_hash(model):
    # One weight at a time: a large teacher's weights are never all copied.
    digest = hashlib.sha256()
    for variable in model.weights:
        weight = np.ascontiguousarray(variable.numpy())
        digest.update(f"{weight.dtype.str}{weight.shape}".encode())
        digest.update(weight.data)
    return digest.hexdigest()


def teacher_fingerprint(model):
    """`{"teacher_architecture": ..., "teacher_weights": ...}` hashes.

    Neither depends on layer or model names (auto-generated names differ
    between two builds of one teacher), `trainable` flags, initializers,
    regularizers, constraints or compile settings: only on what the
    teacher computes (layer classes, their configs, the graph, dtype
    policies) and on its weights (dtype, shape and bytes of each, in
    order).
    """
    # Eagerly, also from inside a `tf.function` trace (the Distiller's step
    # checks a cache's teacher there): the weights, and a compiled model's
    # config (its optimizer's variables), are read as NumPy values.
    with tf.init_scope():
        return {
            "teacher_architecture": _architecture_hash(model),
            "teacher_weights": _weights_hash(model),
        }


def fingerprint(teacher, taps, top_k, dataset, tail_samples=0):
    """What the cache depends on, known without a teacher or data pass.

    `teacher`: the teacher's `teacher_fingerprint` (or a dict holding it).
    """
    fingerprint = {
        "tfkd_version": __version__,
        "teacher_architecture": teacher["teacher_architecture"],
        "teacher_weights": teacher["teacher_weights"],
        "teacher_taps": sorted(taps),
        "top_k": top_k,
        "element_spec": str(dataset.element_spec),
    }
    fingerprint["tail_samples"] = tail_samples
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:  # Unknown (e.g. after `filter`): counted on save.
        fingerprint["batches"] = cardinality
    return fingerprint


def differences(stored, fingerprint):
    differences = []
    for key, label in _FINGERPRINT_LABELS.items():
        cached = stored.get(key, _ABSENT.get(key))
        if key not in fingerprint or cached == fingerprint[key]:
            continue
        if key in _HASHED:
            differences.append(f"{label} differ")
        else:
            differences.append(
                f"{label}: cached {cached!r}, received {fingerprint[key]!r}"
            )
    return differences


# The data: a hash of every example's values, whatever their order.


_MASK = (1 << 64) - 1


@tf.function(reduce_retracing=True)
def _example_hashes(components):
    """Two independent 64-bit hashes of each example, shape `(2, batch)`.

    An example's hash covers, for each tensor, its bytes (farmhash64 of its
    row, `tf.fingerprint`), its shape and its dtype.
    """
    rows = tf.shape(components[0])[0]
    parts = []
    for tensor in components:
        parts.append(tf.fingerprint(tf.reshape(tensor, [rows, -1])))
        shape = tf.cast(tf.shape(tensor)[1:], tf.int64)
        described = tf.concat(
            [
                tf.reshape(tf.bitcast(shape, tf.uint8), [-1]),
                tf.constant([tensor.dtype.as_datatype_enum], tf.uint8),
            ],
            axis=0,
        )
        parts.append(tf.tile(described[None], [rows, 1]))
    joined = tf.concat(parts, axis=1)
    salted = tf.concat([joined, tf.ones([rows, 1], tf.uint8)], axis=1)
    return tf.stack(
        [
            tf.bitcast(tf.fingerprint(joined), tf.uint64),
            tf.bitcast(tf.fingerprint(salted), tf.uint64),
        ]
    )


def example_hashes(x, rest):
    """`_example_hashes` of a batch's inputs `x` and `(y[, w])`."""
    components = [tf.convert_to_tensor(t) for t in tf.nest.flatten((x, rest))]
    return _example_hashes(components)


class DataDigest:
    """A pass over a data set's batches: their count, the number of
    examples, the first batch's size, and the sum (mod 2^64, two lanes) of
    the examples' hashes.

    The sum does not depend on the order of the examples (a data set
    reshuffled each epoch gives one digest), but any changed, added or
    removed example (inputs, label or weight) changes it, but with odds of
    about 2^-64 (the chance that two rows' 64-bit farmhashes collide).
    """

    def __init__(self):
        self.batches = 0
        self.examples = 0
        self.batch_size = None
        self._sums = [0, 0]

    def add(self, hashes):
        """Adds one batch, given its `example_hashes`."""
        hashes = np.asarray(hashes)
        self.batches += 1
        self.examples += hashes.shape[1]
        if self.batch_size is None:
            self.batch_size = int(hashes.shape[1])
        for lane, values in enumerate(hashes):
            total = int(np.sum(values, dtype=np.uint64))
            self._sums[lane] = (self._sums[lane] + total) & _MASK

    def summary(self):
        """The `DATA_KEYS` entries of a fingerprint."""
        return {
            "batches": self.batches,
            "examples": self.examples,
            "batch_size": self.batch_size,
            "data": "".join(f"{value:016x}" for value in self._sums),
        }


def digest_of(dataset, split):
    """The `DataDigest` summary of one pass over `dataset`.

    `split(*element)` gives a batch's `(x, (y[, w]))`.
    """
    digest = DataDigest()

    def hashes(*element):
        return example_hashes(*split(*element))

    for batch in dataset.map(hashes, num_parallel_calls=tf.data.AUTOTUNE):
        digest.add(batch)
    return digest.summary()
