"""Teachers paid once: cached teacher outputs, and teacher ensembles.

The cache (`cache_teacher_outputs` and its format: `INPUTS_KEY`,
`TEACHER_OUTPUTS_KEY`, `split_inputs`) is implemented in `tfkd._cache`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfkd import _keras
from tfkd._cache import INPUTS_KEY
from tfkd._cache import TEACHER_OUTPUTS_KEY
from tfkd._cache import cache_teacher_outputs
from tfkd._cache import split_inputs
from tfkd._keras import keras

__all__ = [
    "INPUTS_KEY",
    "TEACHER_OUTPUTS_KEY",
    "cache_teacher_outputs",
    "ensemble",
    "split_inputs",
]


def ensemble(
    teachers: Sequence[keras.Model | tuple[keras.Model, float]]
    | dict[keras.Model, float],
    name: str = "teacher_ensemble",
) -> keras.Model:
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
