"""The fingerprint of a teacher cache: what its contents depend on.

`tfkd.cache_teacher_outputs` stores it beside the cache and refuses to reuse
a cache whose fingerprint differs (another teacher, data set, top_k, ...).
"""

import hashlib
import json

import numpy as np

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
    "element_spec": "data set element spec",
    "batches": "number of batches",
    "examples": "number of examples",
}
_HASHED = ("teacher_architecture", "teacher_weights")


def _layer_names(layer):
    names = {layer.name}
    for sublayer in getattr(layer, "layers", None) or []:
        names |= _layer_names(sublayer)
    return names


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


def fingerprint(model, taps, top_k, dataset):
    """What the cache depends on, known without a teacher or data pass."""
    from tfkd import __version__  # Here: tfkd/__init__ imports this module.

    fingerprint = {
        "tfkd_version": __version__,
        "teacher_architecture": _architecture_hash(model),
        "teacher_weights": _weights_hash(model),
        "teacher_taps": sorted(taps),
        "top_k": top_k,
        "element_spec": str(dataset.element_spec),
    }
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:  # Unknown (e.g. after `filter`): counted on save.
        fingerprint["batches"] = cardinality
    return fingerprint


def differences(stored, fingerprint):
    differences = []
    for key, label in _FINGERPRINT_LABELS.items():
        if key not in fingerprint or stored.get(key) == fingerprint[key]:
            continue
        if key in _HASHED:
            differences.append(f"{label} differ")
        else:
            differences.append(
                f"{label}: cached {stored.get(key)!r}, received "
                f"{fingerprint[key]!r}"
            )
    return differences
