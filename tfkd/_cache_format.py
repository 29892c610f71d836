"""The elements of a cached data set, and the Distiller's checks of them.

A data set made by `tfkd.cache_teacher_outputs` yields
`({"inputs": x, "tfkd_teacher_outputs": (logits, features),
"tfkd_cache": {description: zeros}}, y[, w])`. The description is a JSON
string, used as a key so that it lives in the data set's structure, not in
its values: the Distiller reads it when its step is traced (no cost per
step, no data read) and refuses a cache that this Distiller would learn
wrongly from: another teacher (or other teacher weights), missing tapped
features, or top-k logits for a method that reads every logit. Its value,
one zero byte per example (`(batch,)` uint8; TensorFlow 2.21's `unbatch`
ends the process on an empty `(batch, 0)` tensor), goes through
`unbatch`, `batch`, `shuffle` and `tf.distribute` with the examples.
"""

from __future__ import annotations

import json
import math
import weakref

import tensorflow as tf

from tfkd import _fingerprint

# Inputs of a dataset made by `cache_teacher_outputs`: a dict with the
# student's inputs and the teacher's precomputed outputs.
INPUTS_KEY = "inputs"
TEACHER_OUTPUTS_KEY = "tfkd_teacher_outputs"
DESCRIPTION_KEY = "tfkd_cache"

# Gap between the smallest kept top-k logit and the logits rebuilt for the
# classes that were not kept: exp(-gap / T) is exactly 0 in float32 for any
# temperature T up to ~9,000 (float32 underflows below exp(-104)).
_TOP_K_GAP = 1e6
TOP_K_KEYS = ("top_k_values", "top_k_indices", "num_classes")
# Token ids drawn from the teacher's distribution outside its top-k
# (`cache_teacher_outputs(..., tail_samples=m)`), int32 `(..., m)`.
TAIL_IDS_KEY = "tail_ids"
# Stored by top-k caches since tfkd 0.x+1 (older caches lack it): the
# teacher's `logsumexp` over all its logits, one float32 per position.
LOG_NORMALIZER_KEY = "log_normalizer"

_RECACHE = (
    "Cache the data again with this Distiller: "
    "`tfkd.cache_teacher_outputs(distiller, dataset)` (with a new "
    "`cache_dir`, or after deleting the old one)"
)


def split_inputs(x):
    """`(inputs, cached teacher outputs or None)` of a batch's inputs."""
    if isinstance(x, dict) and TEACHER_OUTPUTS_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_OUTPUTS_KEY]
    return x, None


def description(model, taps, top_k, tail_samples=0):
    """What the Distiller checks of a cache: its teacher, taps and top_k."""
    described = {
        "teacher": model.name,
        **_fingerprint.teacher_fingerprint(model),
        "teacher_taps": sorted(taps),
        "top_k": top_k,
    }
    if tail_samples:
        described["tail_samples"] = tail_samples
    return described


def _dense_from_top_k(values, indices, num_classes, fill=None):
    """`(..., classes)` float32 logits: the top-k values, `fill` elsewhere.

    `fill` (`(..., 1)`) defaults to a floor `1e6` below the smallest kept
    logit. Leading axes (a sequence's `(batch, time)`) are flattened into
    rows and restored. In float32 whatever the stored dtype: in float16 the
    floor would be -inf.
    """
    static = values.shape[:-1].concatenate([num_classes])
    values = tf.cast(values, tf.float32)
    if fill is None:
        fill = tf.reduce_min(values, axis=-1, keepdims=True) - _TOP_K_GAP
    leading = tf.shape(values)[:-1]
    k = tf.shape(values)[-1]
    values = tf.reshape(values, [-1, k])
    indices = tf.reshape(indices, [-1, k])
    fill = tf.reshape(fill, [-1, 1])
    rows = tf.shape(values)[0]
    dense = tf.broadcast_to(fill, tf.stack([rows, num_classes]))
    row_ids = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(indices))
    scatter = tf.stack([row_ids, indices], axis=-1)
    dense = tf.tensor_scatter_nd_update(dense, scatter, values)
    dense = tf.reshape(dense, tf.concat([leading, [num_classes]], axis=0))
    return tf.ensure_shape(dense, static)


class TopKLogits:
    """A top-k cache's teacher logits in a step: compact, dense on demand.

    The data set carries, per position, the `k` largest logits, their ids
    and (since the tail-bucket format) the teacher's log-normalizer. The
    methods that read top-k teachers (`accepts_top_k`: the token
    divergences) take them as they are (`compact`), so memory and time stay
    proportional to `k`; the other methods and the teacher's validation
    logs take the `(..., classes)` logits rebuilt with a floor far below
    the top-k (`dense()`, built once, and only when something asks).
    `shape` is the dense logits' static shape, for the shape checks.
    """

    def __init__(self, stored, num_classes):
        self.values = tf.cast(stored[TOP_K_KEYS[0]], tf.float32)
        self.indices = tf.cast(stored[TOP_K_KEYS[1]], tf.int32)
        self.log_normalizer = stored.get(LOG_NORMALIZER_KEY)
        self.tail_ids = stored.get(TAIL_IDS_KEY)
        self.num_classes = num_classes
        self.shape = self.values.shape[:-1].concatenate([num_classes])
        self.dtype = tf.float32
        self._dense = None

    @property
    def compact(self):
        """`{"top_k_values", "top_k_indices", "log_normalizer"[,
        "tail_ids"]}`, or None for a cache made without the
        log-normalizer."""
        if self.log_normalizer is None:
            return None
        compact = {
            TOP_K_KEYS[0]: self.values,
            TOP_K_KEYS[1]: self.indices,
            LOG_NORMALIZER_KEY: tf.cast(self.log_normalizer, tf.float32),
        }
        if self.tail_ids is not None:
            compact[TAIL_IDS_KEY] = self.tail_ids
        return compact

    def dense(self):
        if self._dense is None:
            if self.num_classes is None:
                raise ValueError(
                    "These top-k teacher outputs carry no number of classes "
                    "(a data set built by hand): the dense logits cannot be "
                    f"rebuilt. {_RECACHE}."
                )
            self._dense = _dense_from_top_k(
                self.values, self.indices, self.num_classes
            )
        return self._dense

    def for_logs(self):
        """Dense logits for the teacher's validation logs, or None (the
        teacher must run) for a cache without the log-normalizer.

        The top-k values as they are and, for the other classes, the
        teacher's remaining mass spread evenly over them: the softmax keeps
        the teacher's exact top-k probabilities (so its accuracy is exact,
        and its cross-entropy wherever the label is among the top-k) and
        its exact tail mass. The floor of `dense()` would give labels
        outside the top-k a loss of ~1e6.
        """
        if self.log_normalizer is None or self.num_classes is None:
            return None
        log_z = tf.cast(self.log_normalizer, tf.float32)[..., None]
        log_top = tf.reduce_logsumexp(self.values - log_z, -1, keepdims=True)
        # log(1 - sum p_top), floored: a tail of ~0 stays finite.
        log_tail = tf.maximum(
            tf.math.log(-tf.math.expm1(tf.minimum(log_top, -1e-30))), -69.0
        )
        others = max(self.num_classes - self.values.shape[-1], 1)
        rest = log_z + log_tail - math.log(others)
        # Below the smallest kept logit (equal or above only by rounding, for
        # a near-uniform teacher), so the teacher's argmax stays its own.
        lowest = tf.reduce_min(self.values, -1, keepdims=True)
        rest = tf.minimum(rest, tf.math.nextafter(lowest, lowest - 1.0))
        return _dense_from_top_k(
            self.values, self.indices, self.num_classes, fill=rest
        )

    def for_method(self, method):
        """What `method` reads: `compact` if it accepts a top-k teacher."""
        reads_top_k = getattr(method, "accepts_top_k", False)
        if reads_top_k and self.log_normalizer is not None:
            return self.compact
        return self.dense()


def _is_top_k(logits):
    return isinstance(logits, dict) and TOP_K_KEYS[0] in logits


def cached_logits(x):
    """The cached teacher logits in a batch's inputs `x`, dense (for the
    teacher's logs: `TopKLogits.for_logs`), or None when the teacher must
    run: `x` carries no cache, or an old top-k cache."""
    _, outputs = split_inputs(x)
    if outputs is None:
        return None
    logits = outputs[0]
    if _is_top_k(logits):
        return TopKLogits(logits, _described(x).get("classes")).for_logs()
    return logits


def _described(x):
    """A cache's description (`description` and the number of classes),
    read from the key of its marker; `{}` for a cache built by hand."""
    marker = x.get(DESCRIPTION_KEY) or {}
    if len(marker) != 1:
        return {}
    (key,) = marker
    return json.loads(key)


def expand(stored, described):
    """Maps cached elements to the Distiller's input structure.

    `described`: the cache's `description`, completed here with the
    teacher's number of classes.
    """
    num_classes, tail = None, False
    if isinstance(stored.element_spec[1], dict):
        # A static class count (read from the first batch) gives the rebuilt
        # logits a static shape, as the Distiller's shape checks need.
        first = next(iter(stored.take(1)))
        num_classes = int(first[1][TOP_K_KEYS[2]][0])
        tail = LOG_NORMALIZER_KEY in stored.element_spec[1]
    key = json.dumps(
        dict(described, classes=num_classes, top_k_tail=tail), sort_keys=True
    )

    def expand_element(x, outputs, *rest):
        if num_classes is not None:
            # Compact, `k` numbers per position: the step rebuilds the dense
            # logits only for what reads them (`TopKLogits`).
            keys = TOP_K_KEYS[:2] + ((LOG_NORMALIZER_KEY,) if tail else ())
            keys += tuple(k for k in (TAIL_IDS_KEY,) if k in outputs)
            outputs = ({key: outputs[key] for key in keys}, {})
        rows = tf.shape(tf.nest.flatten(x)[0])[:1]
        marker = {key: tf.zeros(rows, tf.uint8)}
        inputs = {
            INPUTS_KEY: x,
            TEACHER_OUTPUTS_KEY: outputs,
            DESCRIPTION_KEY: marker,
        }
        return (inputs,) + rest

    return stored.map(
        expand_element, num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


# The Distiller's checks, made when its train or test step is traced.


def checked_split(distiller, x, in_step=True):
    """`split_inputs(x)`, after checking a cache against `distiller`.

    Raises a `ValueError` (when the step is traced, before any update) for
    a cache made with another teacher or other teacher weights, without the
    teacher features that the Distiller's methods tap, or with top-k logits
    for a method that reads every logit. A cache built by hand (without
    the `tfkd_cache` entry) is taken as it is. A step run eagerly
    (`run_eagerly=True`) checks a cache once, not at every step (its
    teacher's hash would cost each step a pass over the teacher's
    weights); `fit` checks it again each time (`check_data`).
    """
    inputs, outputs = split_inputs(x)
    if outputs is None:
        return inputs, outputs
    described = _described(x)
    if described:
        key = next(iter(x[DESCRIPTION_KEY]))
        checked = _EAGERLY_CHECKED.setdefault(distiller, set())
        if not (in_step and tf.executing_eagerly() and key in checked):
            _check_teacher(distiller, described)
            _check_top_k(distiller, described)
            checked.add(key)
    _check_taps(distiller, outputs)
    if in_step and _is_top_k(outputs[0]):
        top_k = TopKLogits(outputs[0], described.get("classes"))
        outputs = (top_k,) + tuple(outputs[1:])
    return inputs, outputs


# Caches that a Distiller checked (`checked_split`), for its eager steps.
_EAGERLY_CHECKED = weakref.WeakKeyDictionary()


def check_data(distiller, *datasets):
    """`checked_split` on the element spec of each `tf.data.Dataset` given.

    Before `fit` traces its step: under tf_keras an error raised while the
    first step is traced leaves that step unusable for the next `fit` of
    the same Distiller. Reads no data.
    """
    _EAGERLY_CHECKED.pop(distiller, None)  # The teacher may have changed.
    for data in datasets:
        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            checked_split(
                distiller,
                spec[0] if isinstance(spec, tuple) else spec,
                in_step=False,
            )


def _check_teacher(distiller, described):
    teacher = distiller.teacher
    own = _fingerprint.teacher_fingerprint(teacher)
    differ = [
        part
        for key, part in (
            ("teacher_architecture", "architecture"),
            ("teacher_weights", "weights"),
        )
        if described.get(key) != own[key]
    ]
    if differ:
        raise ValueError(
            "The data carries teacher outputs cached from teacher "
            f"{described.get('teacher')!r}, but this Distiller's teacher "
            f"{teacher.name!r} differs from it in its "
            f"{' and '.join(differ)}: the student would learn another "
            f"teacher's outputs. {_RECACHE}, or pass the teacher that made "
            "the cache to the Distiller."
        )


def _check_taps(distiller, outputs):
    features = outputs[1] if isinstance(outputs, (tuple, list)) else {}
    cached = sorted(features) if isinstance(features, dict) else []
    missing = [tap for tap in distiller.teacher_taps if tap not in cached]
    if missing:
        raise ValueError(
            "This Distiller's methods read the teacher layers "
            f"{distiller.teacher_taps}, but the cached teacher outputs hold "
            f"the features of {cached} only (missing: {missing}): a cache "
            "made from the teacher model stores its logits alone. "
            f"{_RECACHE}: a Distiller's cache also stores the features its "
            "methods tap."
        )


def _method_label(method):
    config = method.get_config()
    settings = [
        f"{key}={config[key]!r}"
        for key, plain in (("standardize", False), ("activation", "softmax"))
        if key in config and config[key] != plain
    ]
    return f"{type(method).__name__}({', '.join(settings)}) {method.name!r}"


def _check_top_k(distiller, described):
    top_k, classes = described.get("top_k"), described.get("classes")
    if top_k is None or classes is None or top_k >= classes:
        return  # Every logit is kept: the cache is exact for any method.
    for method in distiller.distillation_losses:
        if method.teacher_layer is not None:
            continue
        if getattr(method, "accepts_top_k", False):
            if not described.get("top_k_tail"):
                raise ValueError(
                    f"The method {_method_label(method)} reads a top-k "
                    "cache with the teacher's log-normalizer (its tail "
                    f"mass), but this top_k={top_k} cache was made by an "
                    "older tfkd without it. "
                    f"{_RECACHE}."
                )
            continue
        if getattr(method, "needs_all_logits", True):
            raise ValueError(
                f"The cached teacher outputs keep the top_k={top_k} largest "
                f"of the teacher's {classes} logits (the others rebuilt as a "
                f"floor far below them), but the method "
                f"{_method_label(method)} reads every teacher logit "
                "(`needs_all_logits`): its loss would differ from the live "
                "teacher's. Cache without `top_k` "
                "(`tfkd.cache_teacher_outputs(teacher, dataset)`), or use a "
                "method that reads the teacher's softmax only (`KD()`, "
                "`DKD()`, `DIST()`)."
            )


def split_element(element):
    """`(x, (y[, w]))` of a data set element or element spec."""
    if isinstance(element, tuple):
        return element[0], tuple(element[1:])
    return element, ()
