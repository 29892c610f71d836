"""Self-distillation recipes built on `tfkd.Distiller`.

The other self-distillation pieces live where their kind does: the
teacher-free methods in `tfkd.losses` (`TeacherFreeKD`, `PSKD`), the
teachers made from the student in `tfkd.teachers` (`moving_average`,
`snapshot`), PS-KD's schedule in `tfkd.callbacks`. docs/self_distillation.md
says when to use which.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

from tfkd import _keras
from tfkd import _validation
from tfkd import losses
from tfkd import teachers
from tfkd._byot import DeepSelfDistillation
from tfkd._keras import keras
from tfkd.distiller import Distiller

__all__ = ["DeepSelfDistillation", "Generation", "born_again"]


@dataclasses.dataclass
class Generation:
    """One generation of `born_again`.

    Attributes:
        index: 0 for the model trained on the labels, k for generation k.
        model: the trained student (a plain Keras model, compiled).
        history: `fit`'s `History.history` (`{}` for a given `first`).
        test: `model.evaluate(test_data, return_dict=True)`, or None
            without `test_data`.
    """

    index: int
    model: keras.Model
    history: dict
    test: dict | None


def _clone_method(method):
    """A fresh copy of a method (its own variables) from its config."""
    if isinstance(method, tuple):
        return (_clone_method(method[0]),) + tuple(method[1:])
    if isinstance(method, list):
        return [_clone_method(m) for m in method]
    if isinstance(method, dict):
        return {key: _clone_method(m) for key, m in method.items()}
    return type(method).from_config(method.get_config())


def _optimizer(optimizer):
    if isinstance(optimizer, str):
        return optimizer
    return type(optimizer).from_config(optimizer.get_config())


def _hard_label_loss(loss):
    """A loss name as the Distiller reads it (from logits)."""
    if isinstance(loss, str) and loss in _validation.STUDENT_LOSSES:
        return _validation.STUDENT_LOSSES[loss]()
    return loss


def _metrics(metrics):
    return None if metrics is None else _validation.copy_metrics(metrics)


def born_again(
    make_student: Callable[[], keras.Model],
    data: Any,
    *,
    generations: int = 2,
    epochs: int = 1,
    optimizer: Any = "adam",
    loss: Any = "sparse_categorical_crossentropy",
    metrics: list | None = None,
    distillation_loss: Any = None,
    alpha: float = 0.0,
    ensemble: bool = False,
    test_data: Any = None,
    first: keras.Model | None = None,
    seed: int | None = None,
    **fit_kwargs: Any,
) -> list[Generation]:
    """Born-again networks: generation k+1 distils from generation k.

    Generation 0 trains on the labels alone (or is `first`, already
    trained); each later generation is a fresh student of the same
    architecture, trained by a `tfkd.Distiller` whose teacher is the
    generation before it, or with `ensemble=True` the average of the
    logits of all generations before it (BANE,
    `tfkd.teachers.ensemble`). The paper distils on the teacher's outputs
    alone (`alpha=0`, cross-entropy with the teacher's softmax: KD at
    `T = 1`, the default here). Every generation gets the same epochs, a
    fresh optimizer of `optimizer`'s configuration and its own metrics.

    Args:
        make_student: a function that returns a new, untrained student
            (logits), called once per generation.
        data: the training data, as `fit` takes it (a `tf.data.Dataset`
            of `(x, y)`, or arrays with `fit_kwargs`' `y=`).
        generations: the distilled generations after generation 0, an int
            `>= 1`. Defaults to `2`.
        epochs: epochs of each generation. Defaults to `1`.
        optimizer: a Keras optimizer (copied per generation) or its name.
            Defaults to `"adam"`.
        loss: the hard-label loss (generation 0, and `alpha > 0`).
            Defaults to `"sparse_categorical_crossentropy"` (from logits).
        metrics: metrics to compile, copied per generation. Defaults to
            `None`.
        distillation_loss: the Distiller's method (copied per generation).
            Defaults to `tfkd.losses.KD(temperature=1.0)`.
        alpha: the Distiller's hard-label weight. Defaults to `0.0`.
        ensemble: teach generation k with all generations before it
            (BANE). Defaults to `False`.
        test_data: data to evaluate each generation on. Defaults to `None`.
        first: a trained generation 0, not trained again. Defaults to
            `None`.
        seed: if set, `keras.utils.set_random_seed(seed + k)` before
            generation k is made. Defaults to `None`.
        **fit_kwargs: forwarded to each `fit` (e.g. `y`, `batch_size`,
            `validation_data`, `callbacks`, `verbose`).

    Returns:
        The `Generation`s, generation 0 first.

    Raises:
        TypeError: `make_student` is not callable or does not return a
            Keras model.
        ValueError: `generations` or `epochs` not an int `>= 1`.

    Example:
        >>> lineage = tfkd.self_distillation.born_again(
        ...     lambda: build_student(), train, generations=2, epochs=20,
        ...     metrics=["accuracy"], test_data=test)
        >>> [g.test["accuracy"] for g in lineage]

    References:
        Furlanello, Lipton, Tschannen, Itti, Anandkumar. "Born-Again
        Neural Networks", ICML 2018. arXiv:1805.04770.
    """
    if not callable(make_student) or isinstance(make_student, keras.Model):
        raise TypeError(
            "`make_student` must be a function that returns a new student "
            f"model. Received: make_student={make_student!r}"
        )
    for name, value in (("generations", generations), ("epochs", epochs)):
        if (
            not isinstance(value, numbers.Integral)
            or isinstance(value, bool)
            or value < 1
        ):
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an int >= 1. "
                f"Received: {name}={value!r}"
            )
    if distillation_loss is None:
        distillation_loss = losses.KD(temperature=1.0)

    def student(index):
        if seed is not None:
            keras.utils.set_random_seed(seed + index)
        model = make_student()
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"`make_student` must return a `{_keras.KERAS_NAME}.Model`. "
                f"Received: {model!r} of type {type(model).__name__}"
            )
        return model

    def evaluate(model):
        if test_data is None:
            return None
        return model.evaluate(test_data, return_dict=True, verbose=0)

    lineage = []
    if first is None:
        model = student(0)
        model.compile(
            optimizer=_optimizer(optimizer),
            loss=_hard_label_loss(loss),
            metrics=_metrics(metrics),
        )
        history = model.fit(data, epochs=epochs, **fit_kwargs).history
        lineage.append(Generation(0, model, history, evaluate(model)))
    else:
        lineage.append(Generation(0, first, {}, evaluate(first)))
    for index in range(1, generations + 1):
        previous = [g.model for g in lineage]
        teacher = teachers.ensemble(previous) if ensemble else previous[-1]
        model = student(index)
        distiller = Distiller(
            teacher, model, _clone_method(distillation_loss), alpha=alpha
        )
        distiller.compile(
            optimizer=_optimizer(optimizer),
            loss=loss,
            metrics=_metrics(metrics),
        )
        history = distiller.fit(data, epochs=epochs, **fit_kwargs).history
        lineage.append(Generation(index, model, history, evaluate(model)))
    return lineage
