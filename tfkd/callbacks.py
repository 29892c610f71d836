"""Schedules for distillation hyper-parameters, as Keras callbacks.

Each callback assigns a float32 variable (`distiller.alpha`,
`distiller.loss_weights[i]`, a method's `temperature`, ...) before an epoch
or a step. The compiled train step reads the variable, so a schedule never
retraces it.

Schedules compute every value from the epoch (or the optimizer's step) and
the Distiller's configuration, never from a variable's current value: a run
resumed by `keras.callbacks.BackupAndRestore`, which restores the variables
as they were when it stopped, gets the values of an uninterrupted run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from tfkd._keras import keras
from tfkd.distiller import Distiller
from tfkd.losses._self_wrappers import PSKD

__all__ = [
    "AlphaSchedule",
    "HyperparameterSchedule",
    "LinearWarmup",
    "LossWeightSchedule",
    "PSKDSchedule",
    "TemperatureSchedule",
]


def _distiller(model, callback):
    if not isinstance(model, Distiller):
        raise TypeError(
            f"{type(callback).__name__} schedules a `tfkd.Distiller`, but it "
            f"is attached to {type(model).__name__} {model.name!r}. Pass it "
            "to `distiller.fit(..., callbacks=[...])`."
        )
    return model


def _check_index(callback, index, *, optional=False):
    """`index` must be an int (or `None` if `optional`); returns it."""
    if (optional and index is None) or (
        isinstance(index, numbers.Integral) and not isinstance(index, bool)
    ):
        return index if index is None else int(index)
    expected = "an int or None" if optional else "an int"
    raise TypeError(
        f"{callback}: `index` (the position of a method in "
        f"`distillation_loss`) must be {expected}. Received: index={index!r} "
        f"of type {type(index).__name__}"
    )


def _method_in_range(callback, index, weights):
    if not -len(weights) <= index < len(weights):
        raise ValueError(
            f"{callback} index={index} is out of range: the Distiller has "
            f"{len(weights)} distillation method(s)."
        )


class HyperparameterSchedule(keras.callbacks.Callback):
    """Sets variables to `schedule(epoch)` (or `schedule(step)`) during `fit`.

    Args:
        target: a variable, or a callable `distiller -> variable or list of
            variables`, resolved when training begins.
        schedule: a callable `epoch -> float` (0-based epochs), or
            `step -> float` with `per_step=True` (the optimizer's step count).
        per_step: update before every batch instead of every epoch. Defaults
            to `False`.
        name: key under which the current value is logged at each epoch end
            (visible in `History`). Defaults to `None`: not logged.

    Raises:
        TypeError: if `schedule` is not callable, or returns something that is
            not a number (raised during `fit`).
        ValueError: if `schedule` returns a value that is not finite (raised
            during `fit`, naming the epoch or step).

    Example:
        >>> schedule = tfkd.callbacks.HyperparameterSchedule(
        ...     lambda d: d.distillation_losses[0].temperature,
        ...     lambda epoch: max(1.0, 8.0 - epoch), name="temperature")
        >>> distiller.fit(data, epochs=10, callbacks=[schedule])
    """

    # What the scheduled values must be: `_allowed(value)` and the rule that
    # the error message states. Subclasses narrow it.
    _rule = "finite"

    @staticmethod
    def _allowed(value):
        return math.isfinite(value)

    def __init__(
        self,
        target: Any,
        schedule: Callable[[int], float],
        *,
        per_step: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "`schedule` must be a callable `epoch -> float`. Received: "
                f"schedule={schedule!r}"
            )
        self.target = target
        self.schedule = schedule
        self.per_step = bool(per_step)
        self.log_name = name
        self._variables = None

    def _resolve(self, model):
        return self.target(model) if callable(self.target) else self.target

    def on_train_begin(self, logs=None):
        variables = self._resolve(_distiller(self.model, self))
        if not isinstance(variables, (list, tuple)):
            variables = [variables]
        if not variables:
            raise ValueError(
                f"{type(self).__name__} found nothing to schedule on "
                f"{self.model.name!r}."
            )
        self._variables = list(variables)

    def _value(self, index):
        """`schedule(index)` as a float, checked against `_rule`."""
        value = self.schedule(index)
        where = f"{'step' if self.per_step else 'epoch'} {index}"
        label = self.log_name or "value"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{type(self).__name__}: the schedule returned {value!r} of "
                f"type {type(value).__name__} at {where}; it must return a "
                "number."
            ) from None
        if not self._allowed(number):
            raise ValueError(
                f"{type(self).__name__} gave {label}={number} at {where}; "
                f"{label} must be {self._rule}."
            )
        return number

    def _assign(self, index):
        value = self._value(index)
        for variable in self._variables:
            variable.assign(value)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_step:
            self._assign(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per_step:
            self._assign(int(self.model.optimizer.iterations.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.log_name:
            logs[self.log_name] = float(self._variables[0].numpy())


class AlphaSchedule(HyperparameterSchedule):
    """Schedules the Distiller's `alpha` (weight of the hard-label loss).

    Args:
        schedule: a callable `epoch -> alpha` in `[0, 1]`.
        per_step: schedule by optimizer step instead. Defaults to `False`.

    Example:
        >>> tfkd.callbacks.AlphaSchedule(lambda epoch: min(0.5, 0.1 * epoch))
    """

    _rule = "in [0, 1]"

    def __init__(
        self, schedule: Callable[[int], float], *, per_step: bool = False
    ):
        super().__init__(
            lambda distiller: distiller.alpha,
            schedule,
            per_step=per_step,
            name="alpha",
        )

    @staticmethod
    def _allowed(value):
        return 0.0 <= value <= 1.0


class TemperatureSchedule(HyperparameterSchedule):
    """Schedules the temperature of every method that has one.

    Args:
        schedule: a callable `epoch -> temperature > 0`.
        per_step: schedule by optimizer step instead. Defaults to `False`.

    Example:
        >>> tfkd.callbacks.TemperatureSchedule(lambda e: 8.0 if e < 5 else 4.0)
    """

    _rule = "finite and > 0"

    def __init__(
        self, schedule: Callable[[int], float], *, per_step: bool = False
    ):
        def temperatures(distiller):
            found = [
                loss.temperature
                for loss in distiller.distillation_losses
                if hasattr(loss, "temperature")
            ]
            if not found:
                names = [
                    type(term).__name__
                    for term in distiller.distillation_losses
                ]
                raise ValueError(
                    "TemperatureSchedule: none of the Distiller's methods "
                    f"{names} has a temperature."
                )
            return found

        super().__init__(
            temperatures, schedule, per_step=per_step, name="temperature"
        )

    @staticmethod
    def _allowed(value):
        return math.isfinite(value) and value > 0


class LossWeightSchedule(HyperparameterSchedule):
    """Schedules the weight of the `index`-th distillation method.

    Args:
        index: position of the method in `distillation_loss`, an int.
        schedule: a callable `epoch -> weight`, finite and `>= 0`.
        per_step: schedule by optimizer step instead. Defaults to `False`.

    Raises:
        TypeError: if `index` is not an int.
        ValueError: if `index` is out of range (when training begins), or the
            schedule gives a weight that is not finite and `>= 0` (naming the
            epoch or step).

    Example:
        >>> tfkd.callbacks.LossWeightSchedule(1, lambda e: 100.0 * 0.9**e)
    """

    _rule = "finite and >= 0"

    def __init__(
        self,
        index: int,
        schedule: Callable[[int], float],
        *,
        per_step: bool = False,
    ):
        index = _check_index("LossWeightSchedule", index)
        self.index = index

        def weight(distiller):
            weights = distiller.loss_weights
            _method_in_range("LossWeightSchedule", index, weights)
            return weights[index]

        super().__init__(
            weight, schedule, per_step=per_step, name=f"loss_weight_{index}"
        )

    @staticmethod
    def _allowed(value):
        return math.isfinite(value) and value >= 0


class LinearWarmup(keras.callbacks.Callback):
    """Ramps methods' weights up linearly over the first epochs (as DKD).

    The weight at epoch `e` (0-based) is `w * min((e + 1) / warmup_epochs, 1)`,
    `w` being the method's configured weight (`distiller.base_loss_weights`,
    not the variable's current value): mdistiller's `min(epoch / warmup, 1.0)`
    with epochs counted from 1. So a run resumed by
    `keras.callbacks.BackupAndRestore` continues the ramp where it stopped.

    Args:
        warmup_epochs: length of the ramp, in epochs (mdistiller uses 20).
        index: the method to warm up, an int; `None` for all. Defaults to
            `None`.

    Raises:
        TypeError: if `index` is neither an int nor `None`.
        ValueError: if `warmup_epochs` is not a positive integer, or `index`
            is out of range (when training begins).

    Example:
        >>> distiller.fit(data, epochs=240,
        ...               callbacks=[tfkd.callbacks.LinearWarmup(20)])
    """

    def __init__(self, warmup_epochs: int, index: int | None = None):
        super().__init__()
        if not isinstance(warmup_epochs, numbers.Real) or isinstance(
            warmup_epochs, bool
        ):
            raise TypeError(
                "`warmup_epochs` must be a positive integer. Received: "
                f"warmup_epochs={warmup_epochs!r} of type "
                f"{type(warmup_epochs).__name__}"
            )
        if (
            not math.isfinite(warmup_epochs)
            or int(warmup_epochs) != warmup_epochs
            or warmup_epochs < 1
        ):
            raise ValueError(
                "`warmup_epochs` must be a positive integer. Received: "
                f"warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = int(warmup_epochs)
        self.index = _check_index("LinearWarmup", index, optional=True)
        self._targets = None

    def on_train_begin(self, logs=None):
        distiller = _distiller(self.model, self)
        weights = distiller.loss_weights
        bases = distiller.base_loss_weights
        if self.index is None:
            self._targets = list(zip(weights, bases))
        else:
            _method_in_range("LinearWarmup", self.index, weights)
            self._targets = [(weights[self.index], bases[self.index])]

    def on_epoch_begin(self, epoch, logs=None):
        factor = min((epoch + 1) / self.warmup_epochs, 1.0)
        for variable, base in self._targets:
            variable.assign(base * factor)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["warmup"] = min((epoch + 1) / self.warmup_epochs, 1.0)


class PSKDSchedule(keras.callbacks.Callback):
    """PS-KD's linear growth of the past predictions' weight `alpha_t`.

    As the authors' code: at epoch `e` (0-based) of `epochs`,
    `alpha_t = alpha_T * (e + 1) / epochs`, where `alpha_T` is each
    `tfkd.losses.PSKD`'s configured `alpha`; at epoch 0 the targets are
    the labels alone (`alpha_t = 0`: there is no previous epoch yet).
    Logged as `pskd_alpha`.

    Args:
        epochs: the number of training epochs (the paper's `end_epoch`),
            an int `> 0`.

    Raises:
        ValueError: `epochs` not a positive int, or (when training begins)
            a Distiller without a `tfkd.losses.PSKD` method.

    Example:
        >>> distiller.fit(data, epochs=30,
        ...               callbacks=[tfkd.callbacks.PSKDSchedule(30)])
    """

    def __init__(self, epochs: int):
        super().__init__()
        if (
            not isinstance(epochs, numbers.Integral)
            or isinstance(epochs, bool)
            or epochs <= 0
        ):
            raise ValueError(
                "Invalid value for argument `epochs`. Expected an int > 0 "
                f"(the number of training epochs). Received: epochs={epochs!r}"
            )
        self.epochs = int(epochs)
        self._methods = []

    def on_train_begin(self, logs=None):
        distiller = _distiller(self.model, self)
        self._methods = [
            loss
            for loss in distiller.distillation_losses
            if isinstance(loss, PSKD)
        ]
        if not self._methods:
            raise ValueError(
                "PSKDSchedule schedules `tfkd.losses.PSKD`, but the "
                "Distiller's methods are "
                f"{[type(m).__name__ for m in distiller.distillation_losses]}."
            )

    def value(self, method, epoch):
        """`alpha_t` of `method` at `epoch`, a Python float."""
        if epoch == 0:
            return 0.0
        fraction = min(1.0, (epoch + 1) / self.epochs)
        return method.base_value("alpha") * fraction

    def on_epoch_begin(self, epoch, logs=None):
        for method in self._methods:
            method.alpha.assign(self.value(method, epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._methods:
            logs["pskd_alpha"] = float(self._methods[0].alpha.numpy())
