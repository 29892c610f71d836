"""Cached teacher outputs: the teacher pass, its storage and its checks.

The public names are re-exported by `tfkd.teachers` (and
`tfkd.cache_teacher_outputs`). This module imports nothing from
`tfkd.distiller`, which imports it: a Distiller is recognised by its
`teacher_outputs` method.
"""

from __future__ import annotations

import itertools
import os

import tensorflow as tf

from tfkd import _cache_files
from tfkd import _cache_format
from tfkd import _fingerprint
from tfkd import _keras
from tfkd._keras import keras

# The format of the cached elements, re-exported by `tfkd.teachers`.
INPUTS_KEY = _cache_format.INPUTS_KEY
TEACHER_OUTPUTS_KEY = _cache_format.TEACHER_OUTPUTS_KEY
split_inputs = _cache_format.split_inputs


def is_distiller(teacher):
    # Duck-typed: tfkd.distiller imports this module, not the reverse.
    return isinstance(teacher, keras.Model) and hasattr(
        teacher, "teacher_outputs"
    )


def cache_teacher_outputs(
    teacher: keras.Model,
    dataset: tf.data.Dataset,
    cache_dir: str | os.PathLike | None = None,
    *,
    top_k: int | None = None,
    tail_samples: int = 0,
    verbose: int = 1,
) -> tf.data.Dataset:
    """Runs the teacher once over `dataset`; returns data that carries it.

    Each element of the returned dataset is
    `({"inputs": x, "tfkd_teacher_outputs": (logits, features),
    "tfkd_cache": {...}}, y[, w])` (keys `tfkd.teachers.INPUTS_KEY` and
    `TEACHER_OUTPUTS_KEY`; `logits` is a tuple for a teacher with several
    outputs, and a dict of the top-k values and ids for `top_k`), which
    `tfkd.Distiller.fit` / `evaluate` recognise: they then never call the
    teacher. With no augmentation and the same order,
    training is exactly live distillation, at about the cost of training
    the student alone. The examples keep their inputs, outputs and labels
    together through `shuffle`, `unbatch` and `batch`.

    The Distiller's check: `"tfkd_cache"` describes the cache (its
    teacher's name and hashes, tapped layers, `top_k`, number of classes)
    in the data set's structure. At `fit` and when its step is traced (no
    data read, no cost per step; it hashes its own teacher's weights, 0.2 s
    for ResNet-50), a Distiller refuses with a `ValueError` a cache made
    by another teacher (architecture or weights; layer names do not
    count), one without the teacher features its methods tap, and a top-k
    cache (`top_k` below the number of classes) for a method that reads
    every teacher logit (`needs_all_logits`: `KD(standardize=True)`,
    `KD(activation="sigmoid")` and so the default method of binary and
    multi-label heads, logit matching `FitNets()`, methods that do not
    declare it).

    Storage: in memory by default (batched like `dataset`, which must then
    have one batch size, bar a smaller last batch). With `cache_dir`, the
    batches are streamed to disk with `tf.data.Dataset.save` (one shard, so
    the order is kept; uncompressed) and read back with
    `tf.data.Dataset.load`; the next call with the same `cache_dir` loads
    them and does not run the teacher. Each pass over the returned data set
    checks the folder: deleted, rebuilt or cut while training, it raises an
    error (at the first batch of the epoch, or at its end for a cut file)
    instead of training on zero or other batches.

    Fingerprint: the folder also holds `tfkd_fingerprint.json`: SHA-256
    hashes of the teacher's architecture (its config JSON, without layer
    and model names, `trainable` flags, initializers, regularizers,
    constraints and compile settings, which cannot change its outputs) and
    of its weights (dtype, shape and bytes of each), the tapped teacher
    layers, `top_k`, the data set's `element_spec`, its numbers of batches
    and examples, the size of its first batch, a digest of its values and
    the tfkd version. The digest sums (mod 2^64, in two lanes) a 64-bit
    farmhash of each example (its inputs, label and weight: bytes, shape
    and dtype), so it does not depend on the order of the examples (a data
    set shuffled before batching gives one digest) but changes with any
    value (missed with odds of about 2^-64). Reusing the folder
    first compares what needs no data (the teacher's hashes: 0.2-0.3 s for
    ResNet-50's 25.6M weights; the number of batches when
    `dataset.cardinality()` is known), then reads the folder once (no
    teacher) to check its examples against their count and digest (a
    truncated, damaged or replaced file is refused), then reads `dataset`
    once (no teacher) and refuses other values, batch sizes or counts. The
    same examples reshuffled reuse the cache, in its stored order.

    Concurrency: the cache is written into a uniquely named folder beside
    `cache_dir` (`.<name>.tfkd-<random>`), then renamed to `cache_dir` in
    one atomic step, so `cache_dir` only ever holds a complete cache. When
    several processes fill one `cache_dir` at once, the first rename wins;
    the others discard their copy and return the winner's (after checking
    its fingerprint). A killed process can leave its `.<name>.tfkd-*`
    folder behind; it is safe to delete.

    Top-k: `top_k=k` stores only the `k` largest logits of each example
    (`k` float32 values and `k` int32 indices) and the teacher's
    log-normalizer; the data set carries them as the dict
    `{"top_k_values", "top_k_indices", "log_normalizer"}` (memory in
    proportion to `k`). The token divergences (`tfkd.losses.ForwardKL`,
    ...) read it as `k + 1` buckets (docs/language_models.md). For the
    other methods the step rebuilds the logits dense (only when one of its
    methods reads them) with `min(top-k) - 1e6` for the other classes, whose
    teacher probabilities are then exactly 0, so KD is the KL divergence of
    the renormalised top-k teacher distribution from the full student
    softmax:

    ```
    p_i = exp(t_i / T) / sum_{j in top-k} exp(t_j / T)  for i in top-k
    KD = T^2 * sum_{i in top-k} p_i * (log p_i - log_softmax(s / T)_i)
    ```

    This suits methods that read the teacher's softmax (`KD`, `DKD`,
    `DIST`); a Distiller refuses it for methods that read every logit
    (above). The logits are rebuilt in float32 (in float16, as a
    mixed-precision teacher outputs them, the floor would be -inf).

    When caching is wrong: with random augmentation the teacher must see
    the augmented view the student sees ("a good teacher is patient and
    consistent", Beyer et al. 2022): a cache would pair a new view with the
    teacher's outputs for another one. Distil live instead, with the
    augmentation in the Distiller (which refuses it on a cache), so both
    models see one view:

    ```python
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                keras.layers.RandomTranslation(0.1, 0.1)])
    distiller = tfkd.Distiller(teacher, student, augment=augment)
    distiller.fit(train, epochs=300)  # live: the teacher sees each view
    ```

    Args:
        teacher: a Keras model (its logits are cached), or a
            `tfkd.Distiller`: `distiller.teacher_outputs(x)` also gives the
            teacher features that its feature methods tap.
        dataset: a finite `tf.data.Dataset` of `(x, y)`, `(x, y, w)` or `x`
            batches (every tensor with a batch axis), in the order to train
            on, with no random augmentation. For NumPy arrays, pass
            `tf.data.Dataset.from_tensor_slices((x, y)).batch(32)`. To cache
            a repeated data set, cache it before `.repeat()` and repeat the
            result.
        cache_dir: a folder (`str` or path) to store the cache in: a new or
            empty folder, or one that this function filled. Defaults to
            `None` (memory).
        top_k: keep only the `k` largest logits per example. Defaults to
            `None` (all). Needs a teacher with one output and no tapped
            features.
        tail_samples: with `top_k`, also store this many token ids per
            position drawn from the teacher's distribution outside its
            top-k (at temperature 1, seeded: the same cache each time),
            from which `ForwardKL()` takes an unbiased estimate of its
            gradient on the tail (docs/language_models.md). Defaults to
            `0` (none).
        verbose: `1` shows a progress bar, `0` nothing. Defaults to `1`.

    Returns:
        A `tf.data.Dataset` for `Distiller.fit` / `evaluate`.

    Raises:
        TypeError: `teacher` is neither a Keras model nor a Distiller, or
            `dataset` is not a `tf.data.Dataset` (e.g. NumPy arrays).
        ValueError: raised before the teacher runs when `top_k` is not a
            positive integer, exceeds the teacher's number of classes, or is
            asked for a teacher with several outputs or a Distiller with
            feature methods; when `dataset` is infinite (`.repeat()`),
            empty or unbatched, or (in memory) has several batch sizes; when
            `cache_dir` is a file or a non-empty folder without a tfkd
            cache; and when a cache in `cache_dir` has another fingerprint
            (the message lists the differences: teacher, settings, data
            set values or batching), has no fingerprint, or holds fewer
            or other examples than its fingerprint says (truncated or
            replaced).

    Example:
        >>> cached = tfkd.cache_teacher_outputs(distiller, train_ds)
        >>> distiller.fit(cached, epochs=30)  # the teacher never runs

    References:
        Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov. "Knowledge
        distillation: A good teacher is patient and consistent", CVPR 2022.
    """
    top_k = _checked_top_k(top_k)
    tail_samples = _checked_tail_samples(tail_samples, top_k)
    model, taps = _teacher_model_and_taps(teacher)
    if top_k is not None and taps:
        raise ValueError(
            f"`top_k` caches logits only, but the Distiller's methods "
            f"tap teacher layers {taps}. Received: top_k={top_k}. Use "
            "top_k=None."
        )
    _check_dataset(dataset, model)
    outputs_of = tf.function(
        teacher.teacher_outputs if is_distiller(teacher) else _logits_of(model)
    )
    if top_k is not None:
        # A trace on the element spec gives the output shape; no data read.
        x_spec = _cache_format.split_element(dataset.element_spec)[0]
        logits = outputs_of.get_concrete_function(x_spec).structured_outputs
        _check_top_k_fits(top_k, logits[0], tail_samples)
    # The teacher's hashes, once: the data set carries them, and a
    # Distiller checks them against its own teacher.
    described = _cache_format.description(model, taps, top_k, tail_samples)
    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        _cache_files.check_cache_dir(cache_dir)
        fingerprint = _fingerprint.fingerprint(
            described, taps, top_k, dataset, tail_samples
        )
        if _cache_files.holds_cache(cache_dir):
            loaded = _cache_files.load(cache_dir, fingerprint, dataset)
            return _cache_format.expand(loaded, described)
    batches = _teacher_batches(
        outputs_of, dataset, top_k, tail_samples, verbose
    )
    first = next(batches, None)
    if first is None:
        raise ValueError("`dataset` is empty: there is nothing to cache.")
    batches = itertools.chain([first], batches)
    if cache_dir is None:
        stored = _in_memory(list(batches))
    else:
        stored = _cache_files.save(batches, first, cache_dir, fingerprint)
    return _cache_format.expand(stored, described)


# Checks made before the teacher runs.


def _checked_top_k(top_k):
    if top_k is not None and (
        isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1
    ):
        raise ValueError(
            f"`top_k` must be a positive integer or None. Received: "
            f"top_k={top_k!r}"
        )
    return None if top_k is None else int(top_k)


def _teacher_model_and_taps(teacher):
    """`(the Keras model whose outputs are cached, tapped layer names)`."""
    if is_distiller(teacher):
        return teacher.teacher, list(teacher.teacher_taps)
    if isinstance(teacher, keras.Model):
        return teacher, []
    raise TypeError(
        f"`teacher` must be a `{_keras.KERAS_NAME}.Model` or a "
        f"`tfkd.Distiller`. Received: teacher={teacher!r} of type "
        f"{type(teacher).__name__}"
    )


def _logits_of(model):
    def logits_only(x):
        # Mapped: `tf.stop_gradient` would stack a multi-output model's list.
        outputs = model(x, training=False)
        return tf.nest.map_structure(tf.stop_gradient, outputs), {}

    return logits_only


def _describe(value):
    if isinstance(value, (tuple, list)):
        parts = ", ".join(type(part).__name__ for part in value)
        return f"a {type(value).__name__} of ({parts})"
    return f"{value!r} of type {type(value).__name__}"


def _check_dataset(dataset, model):
    """Refuses what is not a finite, non-empty data set of batches."""
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "`dataset` must be a `tf.data.Dataset` of batches. Received: "
            f"dataset={_describe(dataset)}. For NumPy arrays pass "
            "`tf.data.Dataset.from_tensor_slices((x, y)).batch(32)` (the "
            "batches to train on, in their order)."
        )
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "`dataset` is infinite (a `.repeat()` without a count): the "
            "teacher pass would never end. Cache a finite number of batches, "
            "e.g. `dataset.take(n)`, or cache before `.repeat()` and repeat "
            "the result: `tfkd.cache_teacher_outputs(teacher, data).repeat()`."
        )
    if cardinality == 0:
        raise ValueError("`dataset` is empty: there is nothing to cache.")
    spec = dataset.element_spec
    x_spec = _cache_format.split_element(spec)[0]
    unbatched = any(s.shape.rank == 0 for s in tf.nest.flatten(spec))
    inputs = getattr(model, "inputs", None) or []
    flat_x = tf.nest.flatten(x_spec)
    if len(inputs) == len(flat_x):
        # One axis short of what the teacher takes: the batch axis.
        unbatched = unbatched or any(
            None not in (s.shape.rank, tf.TensorShape(i.shape).rank)
            and s.shape.rank == tf.TensorShape(i.shape).rank - 1
            for s, i in zip(flat_x, inputs)
        )
    if unbatched:
        expected = [tuple(i.shape) for i in inputs]
        raise ValueError(
            "`dataset` yields unbatched elements (a tensor without a batch "
            f"axis): element_spec={spec}"
            + (f"; the teacher takes batches {expected}" if expected else "")
            + ". Batch it, e.g. `dataset.batch(32)`."
        )


def _checked_tail_samples(tail_samples, top_k):
    if isinstance(tail_samples, bool) or (
        int(tail_samples) != tail_samples or tail_samples < 0
    ):
        raise ValueError(
            "`tail_samples` must be a non-negative integer. Received: "
            f"tail_samples={tail_samples!r}"
        )
    if tail_samples and top_k is None:
        raise ValueError(
            "`tail_samples` samples the tokens outside the top-k: pass "
            f"`top_k` too. Received: tail_samples={tail_samples}, top_k=None"
        )
    return int(tail_samples)


def _sample_tail(logits, top_ids, samples, seed):
    """`(..., samples)` int32 ids drawn from `softmax(logits)` restricted
    to the ids outside `top_ids` (stateless: the same ids each run)."""
    logits = tf.cast(logits, tf.float32)
    classes = tf.shape(logits)[-1]
    rows = tf.reshape(logits, [-1, classes])
    top = tf.reshape(top_ids, [tf.shape(rows)[0], -1])
    row_ids = tf.broadcast_to(
        tf.range(tf.shape(rows)[0])[:, None], tf.shape(top)
    )
    rows = tf.tensor_scatter_nd_update(
        rows,
        tf.stack([row_ids, top], axis=-1),
        tf.fill(tf.shape(top), float("-inf")),
    )
    ids = tf.random.stateless_categorical(
        rows, samples, seed=[seed, 20250], dtype=tf.int32
    )
    return tf.reshape(ids, tf.concat([tf.shape(logits)[:-1], [samples]], 0))


def _check_top_k_fits(top_k, outputs, tail_samples=0):
    flat = tf.nest.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(
            f"`top_k` needs a teacher with one logits output, but it has "
            f"{len(flat)}. Received: top_k={top_k}. Use top_k=None."
        )
    classes = flat[0].shape[-1]
    if classes is not None and tail_samples and top_k >= classes:
        raise ValueError(
            f"`tail_samples` needs tokens outside the top-k, but top_k={top_k} "
            f"keeps all the teacher's {classes} classes. Pass top_k < "
            f"{classes}, or tail_samples=0."
        )
    if classes is not None and top_k > classes:
        raise ValueError(
            f"`top_k` exceeds the teacher's {classes} classes (its logits "
            f"have shape {tuple(flat[0].shape)}). Received: top_k={top_k}. "
            f"Pass top_k <= {classes}, or top_k=None to keep every logit."
        )


# The teacher pass and the cached elements.


def _teacher_batches(outputs_of, dataset, top_k, tail_samples, verbose):
    """Yields `(x, stored_outputs, *rest)`, one element per batch."""
    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(
        cardinality if cardinality > 0 else None,
        verbose=verbose,
        unit_name="batch",
    )
    for step, element in enumerate(dataset):
        x, rest = _cache_format.split_element(element)
        logits, features = outputs_of(x)
        if top_k is None:
            stored = (_lists_as_tuples(logits), dict(features))
        else:
            values, indices = tf.math.top_k(logits, k=top_k)
            stored = dict(
                zip(
                    _cache_format.TOP_K_KEYS,
                    (
                        values,
                        indices,
                        tf.fill(tf.shape(logits)[:1], tf.shape(logits)[-1]),
                    ),
                )
            )
            # The teacher's log-normalizer (float32, one per position): the
            # top-k probabilities stay exact and the tail's mass is known.
            stored[_cache_format.LOG_NORMALIZER_KEY] = tf.reduce_logsumexp(
                tf.cast(logits, tf.float32), axis=-1
            )
            if tail_samples:
                stored[_cache_format.TAIL_IDS_KEY] = _sample_tail(
                    logits, indices, tail_samples, seed=step
                )
        yield (x, stored) + rest
        progress.update(step + 1, finalize=step + 1 == cardinality)


def _lists_as_tuples(outputs):
    # tf.data takes a list for one tensor to stack: a multi-output model's
    # list of logits (of several shapes) is kept as a tuple.
    if isinstance(outputs, list):
        return tuple(_lists_as_tuples(output) for output in outputs)
    if isinstance(outputs, dict):
        return {key: _lists_as_tuples(value) for key, value in outputs.items()}
    return outputs


def _in_memory(elements):
    """One dataset of the cached batches, batched as the source was."""
    sizes = [_cache_files.batch_size(element) for element in elements]
    if any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
        raise ValueError(
            "In memory, `dataset` must have one batch size (the last batch "
            f"may be smaller). Received batch sizes {sorted(set(sizes))}. "
            "Batch it with one size, or pass `cache_dir`, which keeps any "
            "batching."
        )
    columns = tf.nest.map_structure(
        lambda *parts: tf.concat(parts, axis=0), *elements
    )
    return tf.data.Dataset.from_tensor_slices(columns).batch(sizes[0])
