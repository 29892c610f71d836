"""Schedules for distillation hyper-parameters, as Keras callbacks.

Each callback assigns a float32 variable (`distiller.alpha`,
`distiller.loss_weights[i]`, a method's `temperature`, ...) before an epoch
or a step. The compiled train step reads the variable, so a schedule never
retraces it.
"""

from tfkd._keras import keras


def _distiller(model, callback):
    from tfkd.distiller import Distiller

    if not isinstance(model, Distiller):
        raise TypeError(
            f"{type(callback).__name__} schedules a `tfkd.Distiller`, but it "
            f"is attached to {type(model).__name__} {model.name!r}. Pass it "
            "to `distiller.fit(..., callbacks=[...])`."
        )
    return model


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

    Example:
        >>> schedule = tfkd.callbacks.HyperparameterSchedule(
        ...     lambda d: d.distillation_losses[0].temperature,
        ...     lambda epoch: max(1.0, 8.0 - epoch), name="temperature")
        >>> distiller.fit(data, epochs=10, callbacks=[schedule])
    """

    def __init__(self, target, schedule, *, per_step=False, name=None):
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

    def _assign(self, index):
        value = float(self.schedule(index))
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

    def __init__(self, schedule, *, per_step=False):
        super().__init__(
            lambda distiller: distiller.alpha,
            self._checked(schedule),
            per_step=per_step,
            name="alpha",
        )

    @staticmethod
    def _checked(schedule):
        def checked(index):
            alpha = float(schedule(index))
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(
                    f"AlphaSchedule gave alpha={alpha} at {index}; alpha must "
                    "be in [0, 1]."
                )
            return alpha

        return checked


class TemperatureSchedule(HyperparameterSchedule):
    """Schedules the temperature of every method that has one.

    Args:
        schedule: a callable `epoch -> temperature > 0`.
        per_step: schedule by optimizer step instead. Defaults to `False`.

    Example:
        >>> tfkd.callbacks.TemperatureSchedule(lambda e: 8.0 if e < 5 else 4.0)
    """

    def __init__(self, schedule, *, per_step=False):
        def temperatures(distiller):
            found = [
                loss.temperature
                for loss in distiller.distillation_losses
                if hasattr(loss, "temperature")
            ]
            if not found:
                raise ValueError(
                    "TemperatureSchedule: none of the Distiller's methods "
                    f"{[type(l).__name__ for l in distiller.distillation_losses]}"
                    " has a temperature."
                )
            return found

        def checked(index):
            temperature = float(schedule(index))
            if not temperature > 0:
                raise ValueError(
                    f"TemperatureSchedule gave temperature={temperature} at "
                    f"{index}; it must be > 0."
                )
            return temperature

        super().__init__(
            temperatures, checked, per_step=per_step, name="temperature"
        )


class LossWeightSchedule(HyperparameterSchedule):
    """Schedules the weight of the `index`-th distillation method.

    Args:
        index: position of the method in `distillation_loss`.
        schedule: a callable `epoch -> weight >= 0`.
        per_step: schedule by optimizer step instead. Defaults to `False`.

    Example:
        >>> tfkd.callbacks.LossWeightSchedule(1, lambda e: 100.0 * 0.9**e)
    """

    def __init__(self, index, schedule, *, per_step=False):
        self.index = index

        def weight(distiller):
            weights = distiller.loss_weights
            if not -len(weights) <= index < len(weights):
                raise ValueError(
                    f"LossWeightSchedule index={index} is out of range: the "
                    f"Distiller has {len(weights)} distillation method(s)."
                )
            return weights[index]

        super().__init__(
            weight, schedule, per_step=per_step, name=f"loss_weight_{index}"
        )


class LinearWarmup(keras.callbacks.Callback):
    """Ramps methods' weights up linearly over the first epochs (as DKD).

    The weight at epoch `e` (0-based) is `w * min((e + 1) / warmup_epochs, 1)`,
    `w` being the weight when training begins: mdistiller's
    `min(epoch / warmup, 1.0)` with epochs counted from 1.

    Args:
        warmup_epochs: length of the ramp, in epochs (mdistiller uses 20).
        index: the method to warm up; `None` for all. Defaults to `None`.

    Example:
        >>> distiller.fit(data, epochs=240,
        ...               callbacks=[tfkd.callbacks.LinearWarmup(20)])
    """

    def __init__(self, warmup_epochs, index=None):
        super().__init__()
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 1:
            raise ValueError(
                "`warmup_epochs` must be a positive integer. Received: "
                f"warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = int(warmup_epochs)
        self.index = index
        self._targets = None

    def on_train_begin(self, logs=None):
        weights = _distiller(self.model, self).loss_weights
        if self.index is not None and not (
            -len(weights) <= self.index < len(weights)
        ):
            raise ValueError(
                f"LinearWarmup index={self.index} is out of range: the "
                f"Distiller has {len(weights)} distillation method(s)."
            )
        chosen = weights if self.index is None else [weights[self.index]]
        if self._targets is None:
            self._targets = [(w, float(w.numpy())) for w in chosen]

    def on_epoch_begin(self, epoch, logs=None):
        factor = min((epoch + 1) / self.warmup_epochs, 1.0)
        for variable, base in self._targets:
            variable.assign(base * factor)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["warmup"] = min((epoch + 1) / self.warmup_epochs, 1.0)
