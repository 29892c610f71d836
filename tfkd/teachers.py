"""Teachers paid once: cached teacher outputs, and teacher ensembles."""

import os

import numpy as np
import tensorflow as tf

from tfkd import _keras
from tfkd._keras import keras
from tfkd.distiller import INPUTS_KEY
from tfkd.distiller import TEACHER_OUTPUTS_KEY
from tfkd.distiller import Distiller


def ensemble(teachers, name="teacher_ensemble"):
    """One frozen teacher whose logits average several teachers' logits.

    ```
    t(x) = sum_k w_k * t_k(x),   sum_k w_k = 1
    ```

    Args:
        teachers: a list of Keras models (equal weights), a `{model: weight}`
            dict, or a list of `(model, weight)` pairs. Weights are
            normalised to sum to 1. All teachers take the same inputs and
            output logits of the same shape.
        name: name of the returned model. Defaults to `"teacher_ensemble"`.

    Returns:
        A Functional `keras.Model` on the first teacher's inputs; each teacher
        runs once per call, frozen.

    Raises:
        ValueError: no teacher, a negative or all-zero weight, or outputs of
            different shapes (both named).

    Example:
        >>> distiller = tfkd.Distiller([teacher_a, teacher_b], student)
        >>> distiller = tfkd.Distiller({teacher_a: 2.0, teacher_b: 1.0}, student)
    """
    if isinstance(teachers, dict):
        pairs = list(teachers.items())
    else:
        pairs = [
            entry if isinstance(entry, tuple) else (entry, 1.0)
            for entry in teachers
        ]
    if not pairs:
        raise ValueError("`teachers` is empty: pass at least one model.")
    weights = np.array([float(weight) for _, weight in pairs])
    if np.any(weights < 0) or not np.isfinite(weights).all():
        raise ValueError(
            "Teacher weights must be finite and >= 0. Received: "
            f"{weights.tolist()}"
        )
    if weights.sum() == 0:
        raise ValueError("Teacher weights are all zero: give one a weight > 0.")
    weights = weights / weights.sum()
    models = [model for model, _ in pairs]
    for model in models:
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Each teacher must be a `{_keras.KERAS_NAME}.Model`. "
                f"Received: {model!r}"
            )
        model.trainable = False
    first = models[0]
    inputs = getattr(first, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Teacher {first.name!r} has no known inputs (subclassed or not "
            "built): build it on a `keras.Input`, or call it once on data."
        )
    inputs = inputs[0] if len(inputs) == 1 else inputs
    outputs = []
    for model in models:
        logits = model(inputs, training=False)
        if tuple(logits.shape[1:]) != tuple(first.outputs[0].shape[1:]):
            raise ValueError(
                f"Teacher {model.name!r} outputs shape {tuple(logits.shape)} "
                f"but teacher {first.name!r} outputs "
                f"{tuple(first.outputs[0].shape)}: an ensemble averages "
                "logits class by class."
            )
        outputs.append(logits)
    mixed = keras.layers.Add(name="weighted_logits")(
        [
            keras.layers.Rescaling(float(w), name=f"weight_{i}")(logits)
            for i, (w, logits) in enumerate(zip(weights, outputs))
        ]
    )
    model = keras.Model(inputs, mixed, name=name)
    model.trainable = False
    return model


def _batch(x):
    return int(tf.shape(tf.nest.flatten(x)[0])[0])


def _split_element(element):
    if isinstance(element, tuple):
        return element[0], element[1:]
    return element, ()


def _dense_from_top_k(values, indices, num_classes):
    """Dense logits with the top-k values and a floor elsewhere.

    The floor (`min(top-k) - 1e4`) makes the other classes' teacher
    probabilities exactly 0 in float32 at any temperature up to ~100, so KD
    becomes the KL divergence of the renormalised top-k teacher distribution
    from the full student softmax, with no NaN.
    """
    floor = tf.reduce_min(values, axis=-1, keepdims=True) - 1e4
    batch = tf.shape(values)[0]
    dense = tf.broadcast_to(floor, [batch, num_classes])
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    scatter = tf.stack([rows, indices], axis=-1)
    return tf.tensor_scatter_nd_update(dense, scatter, values)


def cache_teacher_outputs(
    teacher, dataset, cache_dir=None, *, top_k=None, verbose=1
):
    """Runs the teacher once over `dataset`; returns data that carries it.

    A `tfkd.Distiller` fitted on the returned dataset never calls its teacher:
    each element is `({"inputs": x, "tfkd_teacher_outputs": (logits,
    features)}, y[, sample_weight])`, which the Distiller recognises. With no
    augmentation and the same order, it trains exactly like live
    distillation, at the cost of the student alone.

    When caching is wrong: with random augmentation the teacher must see the
    augmented view the student sees (Beyer et al. 2022, "Knowledge
    distillation: A good teacher is patient and consistent"). Then distil
    live, with the augmentation inside the dataset (or in a preprocessing
    model applied before both), so both models get the same view:

    ```python
    augmented = train.map(lambda x, y: (augment(x), y))  # one view, shared
    distiller.fit(augmented, epochs=...)                 # no cache
    ```

    Args:
        teacher: a Keras model (logits only), or a `tfkd.Distiller`, whose
            `teacher_outputs` also gives the teacher features its feature
            methods tap.
        dataset: a finite `tf.data.Dataset` of `(x, y)`, `(x, y, w)` or `x`
            batches, in the order to train on (no random augmentation).
        cache_dir: `None` keeps the outputs in memory. A directory stores
            them with `tf.data.Dataset.save`; if it already holds a cache,
            it is loaded and the teacher is not run.
        top_k: keep only the teacher's `k` largest logits per example (for
            large output spaces); stored as `k` values and `k` int32
            indices and rebuilt when read (see `_dense_from_top_k`). Needs
            a model teacher or a Distiller without feature taps.
        verbose: `1` shows a progress bar. Defaults to `1`.

    Returns:
        A `tf.data.Dataset` to pass to `Distiller.fit` / `evaluate`.

    Example:
        >>> cached = tfkd.cache_teacher_outputs(distiller, train_ds)
        >>> distiller.fit(cached, epochs=30)  # the teacher never runs
    """
    if cache_dir is not None and os.path.exists(
        os.path.join(cache_dir, "dataset_spec.pb")
    ):
        stored = tf.data.Dataset.load(cache_dir)
        return _expand(stored, top_k)
    if isinstance(teacher, Distiller):
        outputs_of = teacher.teacher_outputs
    elif isinstance(teacher, keras.Model):

        def outputs_of(x):
            return tf.stop_gradient(teacher(x, training=False)), {}

    else:
        raise TypeError(
            "`teacher` must be a Keras model or a `tfkd.Distiller`. "
            f"Received: {teacher!r}"
        )
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer. Got {top_k!r}")

    @tf.function
    def run(x):
        return outputs_of(x)

    elements = []
    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(
        cardinality if cardinality > 0 else None,
        verbose=verbose,
        unit_name="batch",
    )
    for step, element in enumerate(dataset):
        x, rest = _split_element(element)
        logits, features = run(x)
        if top_k is not None:
            if features:
                raise ValueError(
                    "`top_k` caches logits only, but the Distiller's methods "
                    f"tap teacher layers {sorted(features)}."
                )
            values, indices = tf.math.top_k(logits, k=int(top_k))
            classes = tf.fill(tf.shape(logits)[:1], tf.shape(logits)[-1])
            stored = {
                "top_k_values": values,
                "top_k_indices": indices,
                "num_classes": classes,
            }
        else:
            stored = (logits, dict(features))
        if (
            elements
            and _batch(x) != _batch(elements[0][0])
            and (_batch(elements[-1][0]) != _batch(elements[0][0]))
        ):
            raise ValueError(
                "`dataset` has batches of several sizes before its last one; "
                "cache a dataset batched with one batch size."
            )
        elements.append((x, stored) + tuple(rest))
        progress.update(step + 1)
    if not elements:
        raise ValueError("`dataset` is empty: nothing to cache.")
    cached = _from_elements(elements)
    if cache_dir is not None:
        cached.save(cache_dir)
        cached = tf.data.Dataset.load(cache_dir)
    return _expand(cached, top_k)


def _from_elements(elements):
    """One dataset of the cached batches, batched as the source was."""
    columns = tf.nest.map_structure(
        lambda *parts: tf.concat(parts, axis=0), *elements
    )
    batch_size = int(tf.shape(tf.nest.flatten(elements[0])[0])[0])
    return tf.data.Dataset.from_tensor_slices(columns).batch(batch_size)


def _expand(stored, top_k):
    """Maps cached elements to the Distiller's input structure."""

    def expand(x, outputs, *rest):
        if isinstance(outputs, dict) and "top_k_values" in outputs:
            logits = _dense_from_top_k(
                outputs["top_k_values"],
                outputs["top_k_indices"],
                outputs["num_classes"][0],
            )
            outputs = (logits, {})
        return ({INPUTS_KEY: x, TEACHER_OUTPUTS_KEY: outputs},) + rest

    return stored.map(expand)
