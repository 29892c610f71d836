"""Teachers paid once: cached teacher outputs, and teacher ensembles."""

import itertools
import os
import shutil

import numpy as np
import tensorflow as tf

from tfkd import _keras
from tfkd._keras import keras

# Gap between the smallest kept top-k logit and the logits rebuilt for the
# classes that were not kept: exp(-gap / T) is exactly 0 in float32 for any
# temperature T up to ~9,000 (float32 underflows below exp(-104)).
_TOP_K_GAP = 1e6
_TOP_K_KEYS = ("top_k_values", "top_k_indices", "num_classes")
_SPEC_FILE = "dataset_spec.pb"

# Inputs of a dataset made by `cache_teacher_outputs`: a dict with the
# student's inputs and the teacher's precomputed outputs.
INPUTS_KEY = "inputs"
TEACHER_OUTPUTS_KEY = "tfkd_teacher_outputs"


def split_inputs(x):
    """`(inputs, cached teacher outputs or None)` of a batch's inputs."""
    if isinstance(x, dict) and TEACHER_OUTPUTS_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_OUTPUTS_KEY]
    return x, None


def _is_distiller(teacher):
    # Duck-typed: tfkd.distiller imports this module, not the reverse.
    return isinstance(teacher, keras.Model) and hasattr(
        teacher, "teacher_outputs"
    )


def ensemble(teachers, name="teacher_ensemble"):
    """One frozen teacher whose logits average several teachers' logits.

    ```
    t(x) = sum_k w_k * t_k(x),   w_k = weight_k / sum_j weight_j
    ```

    Weights are normalised to sum to 1, so `{a: 2, b: 1}` and
    `{a: 0.5, b: 0.25}` are the same ensemble. The models are set
    `trainable = False` and called with `training=False`, once each per call.

    Args:
        teachers: a list of Keras models that output logits (equal weights),
            a `{model: weight}` dict, or a list of `(model, weight)` pairs
            (for models that cannot be dict keys). All teachers take the
            first teacher's inputs and output logits of one shape.
        name: name of the returned model. Defaults to `"teacher_ensemble"`.

    Returns:
        A Functional `keras.Model` on the first teacher's inputs whose output
        is the weighted mean of the teachers' logits, in float32.

    Raises:
        TypeError: an entry is not a Keras model.
        ValueError: no teacher, a negative, non-finite or all-zero weight,
            a teacher without known inputs, or outputs of different shapes
            (both teachers named).

    Example:
        >>> teacher = tfkd.teachers.ensemble({teacher_a: 2.0, teacher_b: 1.0})
        >>> distiller = tfkd.Distiller([teacher_a, teacher_b], student)

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural
        Network", 2015 (distilling an ensemble into one model).
    """
    if isinstance(teachers, dict):
        pairs = list(teachers.items())
    else:
        pairs = [
            entry if isinstance(entry, tuple) else (entry, 1.0)
            for entry in teachers
        ]
    if not pairs:
        raise ValueError(
            "`teachers` is empty. Received: teachers=[]. Pass at least one "
            "model."
        )
    for model, _ in pairs:
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Each teacher must be a `{_keras.KERAS_NAME}.Model`. "
                f"Received: {model!r} of type {type(model).__name__}"
            )
    weights = np.array([float(weight) for _, weight in pairs])
    if np.any(weights < 0) or not np.isfinite(weights).all():
        raise ValueError(
            "Teacher weights must be finite and >= 0. Received: weights="
            f"{weights.tolist()}"
        )
    if weights.sum() == 0:
        raise ValueError(
            "Teacher weights are all zero. Received: weights="
            f"{weights.tolist()}. Give at least one teacher a weight > 0."
        )
    weights = weights / weights.sum()
    models = [model for model, _ in pairs]
    first = models[0]
    inputs = getattr(first, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Teacher {first.name!r} has no known inputs (subclassed or not "
            "built): build it on a `keras.Input`."
        )
    inputs = inputs[0] if len(inputs) == 1 else inputs
    expected = tuple(first.outputs[0].shape[1:])
    outputs = []
    for model in models:
        model.trainable = False
        logits = model(inputs, training=False)
        if tuple(logits.shape[1:]) != expected:
            raise ValueError(
                f"Teacher {model.name!r} outputs shape {tuple(logits.shape)} "
                f"but teacher {first.name!r} outputs "
                f"{tuple(first.outputs[0].shape)}: an ensemble averages "
                "logits class by class, so all teachers need one shape."
            )
        outputs.append(logits)
    # float32 layers: under a mixed precision policy the mean stays float32.
    scaled = [
        keras.layers.Rescaling(float(w), name=f"weight_{i}", dtype="float32")(
            logits
        )
        for i, (w, logits) in enumerate(zip(weights, outputs))
    ]
    if len(scaled) > 1:
        mean = keras.layers.Add(name="mean_logits", dtype="float32")(scaled)
    else:
        mean = scaled[0]
    model = keras.Model(inputs, mean, name=name)
    model.trainable = False
    return model


def cache_teacher_outputs(
    teacher, dataset, cache_dir=None, *, top_k=None, verbose=1
):
    """Runs the teacher once over `dataset`; returns data that carries it.

    Each element of the returned dataset is
    `({"inputs": x, "tfkd_teacher_outputs": (logits, features)}, y[, w])`
    (keys `tfkd.teachers.INPUTS_KEY` and `TEACHER_OUTPUTS_KEY`), which
    `tfkd.Distiller.fit` / `evaluate` recognise: they then never call the
    teacher. With no augmentation and the same order, training is exactly
    live distillation, at about the cost of training the student alone.

    Storage: in memory by default (batched like `dataset`, which must then
    have one batch size, bar a smaller last batch). With `cache_dir`, the
    batches are streamed to disk with `tf.data.Dataset.save` (one shard, so
    the order is kept; uncompressed) and read back with
    `tf.data.Dataset.load`; the next call with the same `cache_dir` loads
    them and does not run the teacher (delete the folder to refresh it).

    Top-k: `top_k=k` stores only the `k` largest logits of each example
    (`k` float32 values and `k` int32 indices). When read, the logits are
    rebuilt dense with `min(top-k) - 1e6` for the other classes, whose
    teacher probabilities are then exactly 0, so KD is the KL divergence of
    the renormalised top-k teacher distribution from the full student
    softmax:

    ```
    p_i = exp(t_i / T) / sum_{j in top-k} exp(t_j / T)  for i in top-k
    KD = T^2 * sum_{i in top-k} p_i * (log p_i - log_softmax(s / T)_i)
    ```

    This suits methods that read the teacher's softmax (`KD`, `DKD`,
    `DIST`), not `KD(standardize=True)` (its z-score needs every logit).

    When caching is wrong: with random augmentation the teacher must see
    the augmented view the student sees ("a good teacher is patient and
    consistent", Beyer et al. 2022): a cache would pair a new view with the
    teacher's outputs for another one. Distil live instead, with the
    augmentation inside the dataset (or in a preprocessing model applied
    before both models), so both models see one view:

    ```python
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                keras.layers.RandomTranslation(0.1, 0.1)])
    views = train.map(lambda x, y: (augment(x, training=True), y))
    distiller.fit(views, epochs=300)  # live: the teacher sees each view
    ```

    Args:
        teacher: a Keras model (its logits are cached), or a
            `tfkd.Distiller`: `distiller.teacher_outputs(x)` also gives the
            teacher features that its feature methods tap.
        dataset: a finite `tf.data.Dataset` of `(x, y)`, `(x, y, w)` or `x`
            batches, in the order to train on, with no random augmentation.
        cache_dir: a folder to store the cache in. Defaults to `None`
            (memory).
        top_k: keep only the `k` largest logits per example. Defaults to
            `None` (all). Needs a teacher without tapped features.
        verbose: `1` shows a progress bar, `0` nothing. Defaults to `1`.

    Returns:
        A `tf.data.Dataset` for `Distiller.fit` / `evaluate`.

    Raises:
        TypeError: `teacher` is neither a Keras model nor a Distiller.
        ValueError: `top_k` is not a positive integer, `top_k` is asked for
            a Distiller with feature methods, `dataset` is empty or (in
            memory) has several batch sizes, or `cache_dir` holds a cache
            made with another `top_k`.

    Example:
        >>> cached = tfkd.cache_teacher_outputs(distiller, train_ds)
        >>> distiller.fit(cached, epochs=30)  # the teacher never runs

    References:
        Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov. "Knowledge
        distillation: A good teacher is patient and consistent", CVPR 2022.
    """
    if top_k is not None and (
        isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1
    ):
        raise ValueError(
            f"`top_k` must be a positive integer or None. Received: "
            f"top_k={top_k!r}"
        )
    top_k = None if top_k is None else int(top_k)
    if cache_dir is not None and os.path.exists(
        os.path.join(cache_dir, _SPEC_FILE)
    ):
        stored = tf.data.Dataset.load(cache_dir)
        _check_stored_top_k(stored, top_k, cache_dir)
        return _expand(stored)
    if cache_dir is not None and os.path.isdir(cache_dir):
        if os.listdir(cache_dir):
            raise ValueError(
                f"`cache_dir` holds no tfkd cache (no {_SPEC_FILE}) but is "
                "not empty, and tfkd does not overwrite other files. Pass a "
                f"new or empty folder. Received: cache_dir={cache_dir!r}"
            )
    outputs_of = _teacher_function(teacher, top_k)
    batches = _teacher_batches(outputs_of, dataset, top_k, verbose)
    first = next(batches, None)
    if first is None:
        raise ValueError("`dataset` is empty: there is nothing to cache.")
    batches = itertools.chain([first], batches)
    if cache_dir is None:
        return _expand(_in_memory(list(batches)))
    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), first
    )
    partial = cache_dir.rstrip("/\\") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    tf.data.Dataset.from_generator(
        lambda: batches, output_signature=signature
    ).save(partial, shard_func=lambda *_: tf.constant(0, tf.int64))
    if os.path.exists(cache_dir):
        os.rmdir(cache_dir)  # Only an empty folder: no spec file, no cache.
    os.replace(partial, cache_dir)  # Complete caches only.
    return _expand(tf.data.Dataset.load(cache_dir))


def _teacher_function(teacher, top_k):
    """A compiled `x -> (logits, {layer_name: features})` of the teacher."""
    if _is_distiller(teacher):
        taps = teacher.teacher_taps
        if top_k is not None and taps:
            raise ValueError(
                f"`top_k` caches logits only, but the Distiller's methods "
                f"tap teacher layers {taps}. Received: top_k={top_k}. Use "
                "top_k=None."
            )
        return tf.function(teacher.teacher_outputs)
    if isinstance(teacher, keras.Model):

        @tf.function
        def logits_only(x):
            return tf.stop_gradient(teacher(x, training=False)), {}

        return logits_only
    raise TypeError(
        f"`teacher` must be a `{_keras.KERAS_NAME}.Model` or a "
        f"`tfkd.Distiller`. Received: teacher={teacher!r} of type "
        f"{type(teacher).__name__}"
    )


def _teacher_batches(outputs_of, dataset, top_k, verbose):
    """Yields `(x, stored_outputs, *rest)`, one element per batch."""
    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(
        cardinality if cardinality > 0 else None,
        verbose=verbose,
        unit_name="batch",
    )
    for step, element in enumerate(dataset):
        x, rest = (
            (element[0], tuple(element[1:]))
            if isinstance(element, tuple)
            else (element, ())
        )
        logits, features = outputs_of(x)
        if top_k is None:
            stored = (logits, dict(features))
        else:
            values, indices = tf.math.top_k(logits, k=top_k)
            stored = dict(
                zip(
                    _TOP_K_KEYS,
                    (
                        values,
                        indices,
                        tf.fill(tf.shape(logits)[:1], tf.shape(logits)[-1]),
                    ),
                )
            )
        yield (x, stored) + rest
        progress.update(step + 1, finalize=step + 1 == cardinality)


def _batch_size(element):
    return int(tf.shape(tf.nest.flatten(element)[0])[0])


def _in_memory(elements):
    """One dataset of the cached batches, batched as the source was."""
    sizes = [_batch_size(element) for element in elements]
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


def _check_stored_top_k(stored, top_k, cache_dir):
    outputs = stored.element_spec[1]
    stored_k = (
        outputs[_TOP_K_KEYS[0]].shape[-1] if isinstance(outputs, dict) else None
    )
    if stored_k != top_k:
        raise ValueError(
            f"cache_dir={cache_dir!r} holds a cache made with top_k="
            f"{stored_k}. Received: top_k={top_k}. Pass the same top_k, or "
            "another (or emptied) cache_dir."
        )


def _dense_from_top_k(values, indices, num_classes):
    """`(batch, classes)` logits: the top-k values, a floor elsewhere."""
    floor = tf.reduce_min(values, axis=-1, keepdims=True) - _TOP_K_GAP
    batch = tf.shape(values)[0]
    dense = tf.broadcast_to(floor, tf.stack([batch, num_classes]))
    dense = tf.ensure_shape(dense, [None, num_classes])
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    scatter = tf.stack([rows, indices], axis=-1)
    return tf.tensor_scatter_nd_update(dense, scatter, values)


def _expand(stored):
    """Maps cached elements to the Distiller's input structure."""
    num_classes = None
    if isinstance(stored.element_spec[1], dict):
        # A static class count (read from the first batch) gives the rebuilt
        # logits a static shape, as the Distiller's shape checks need.
        first = next(iter(stored.take(1)))
        num_classes = int(first[1][_TOP_K_KEYS[2]][0])

    def expand(x, outputs, *rest):
        if num_classes is not None:
            values, indices = (outputs[k] for k in _TOP_K_KEYS[:2])
            outputs = (_dense_from_top_k(values, indices, num_classes), {})
        return ({INPUTS_KEY: x, TEACHER_OUTPUTS_KEY: outputs},) + rest

    return stored.map(expand, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
