"""Schedules assign variables at the right time and never retrace."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import sparse_ce
from conftest import toy_classification

import tfkd
from tfkd._keras import keras


class _Record(keras.callbacks.Callback):
    """Reads variables at each epoch's first batch, after the schedules."""

    def __init__(self, read):
        super().__init__()
        self.read, self.values = read, []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.values.append(self.read(self.model))


class _CountingKD(tfkd.losses.KD):
    traces = 0

    def compute(self, teacher, student, labels=None):
        type(self).traces += 1  # Python: runs when the step is traced
        return super().compute(teacher, student, labels)


def _fit(callbacks, distillation_loss=None, epochs=4, **kwargs):
    x, y = toy_classification(n=64)
    distiller = tfkd.Distiller(
        make_mlp(16, name="teacher"),
        make_mlp(4),
        distillation_loss=distillation_loss,
        **kwargs,
    )
    distiller.compile("sgd", loss=sparse_ce())
    history = distiller.fit(
        x, y, epochs=epochs, batch_size=16, callbacks=callbacks, verbose=0
    )
    return distiller, history.history


def test_alpha_schedule_sets_each_epoch_and_logs():
    record = _Record(lambda d: float(d.alpha.numpy()))
    schedule = tfkd.callbacks.AlphaSchedule(lambda epoch: 0.1 * epoch)
    _, history = _fit([schedule, record])
    np.testing.assert_allclose(record.values, [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(
        history["alpha"], [0.0, 0.1, 0.2, 0.3], atol=1e-7
    )


def test_temperature_schedule_changes_every_method_without_retracing():
    _CountingKD.traces = 0
    methods = [_CountingKD(temperature=8.0), (tfkd.losses.DKD(), 1.0)]
    record = _Record(
        lambda d: [float(m.temperature.numpy()) for m in d.distillation_losses]
    )
    schedule = tfkd.callbacks.TemperatureSchedule(lambda e: 8.0 / (e + 1))
    _, history = _fit([schedule, record], distillation_loss=methods)
    expected = [8.0, 4.0, 8.0 / 3, 2.0]
    np.testing.assert_allclose(
        record.values, [[t, t] for t in expected], rtol=1e-6
    )
    np.testing.assert_allclose(history["temperature"], expected, rtol=1e-6)
    traces_after_four_epochs = _CountingKD.traces
    _CountingKD.traces = 0
    _fit(
        [schedule],
        distillation_loss=[_CountingKD(), (tfkd.losses.DKD(), 1)],
        epochs=1,
    )
    assert traces_after_four_epochs == _CountingKD.traces <= 2


def test_loss_weight_schedule_and_per_step_updates():
    methods = [tfkd.losses.KD(), (tfkd.losses.KD(temperature=2.0), 0.0)]
    record = _Record(lambda d: float(d.loss_weights[1].numpy()))
    schedule = tfkd.callbacks.LossWeightSchedule(
        1, lambda step: float(step), per_step=True
    )
    distiller, _ = _fit([schedule, record], distillation_loss=methods)
    # 4 steps per epoch: the weight is the step count before each batch.
    assert record.values == [0.0, 4.0, 8.0, 12.0]
    assert float(distiller.loss_weights[1].numpy()) == 15.0


def test_linear_warmup_follows_mdistiller():
    record = _Record(lambda d: float(d.loss_weights[0].numpy()))
    methods = [(tfkd.losses.DKD(), 2.0)]
    _, history = _fit(
        [tfkd.callbacks.LinearWarmup(3), record], distillation_loss=methods
    )
    np.testing.assert_allclose(
        record.values, [2 / 3, 4 / 3, 2.0, 2.0], rtol=1e-6
    )
    np.testing.assert_allclose(history["warmup"], [1 / 3, 2 / 3, 1.0, 1.0])


def test_generic_schedule_assigns_a_variable_and_warmup_picks_an_index():
    rkd = tfkd.losses.RKD("hidden", "hidden")
    schedule = tfkd.callbacks.HyperparameterSchedule(
        rkd.angle_weight, lambda epoch: 10.0 * epoch, name="angle_weight"
    )
    record = _Record(
        lambda d: (
            [float(rkd.angle_weight.numpy())]
            + [float(w.numpy()) for w in d.loss_weights]
        )
    )
    warmup = tfkd.callbacks.LinearWarmup(2, index=1)
    _, history = _fit(
        [schedule, warmup, record],
        distillation_loss=[(tfkd.losses.KD(), 0.5), (rkd, 3.0)],
        epochs=3,
    )
    # Only method 1 is warmed up: 3 * min((epoch + 1) / 2, 1).
    np.testing.assert_allclose(
        record.values,
        [[0.0, 0.5, 1.5], [10.0, 0.5, 3.0], [20.0, 0.5, 3.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(history["angle_weight"], [0.0, 10.0, 20.0])
    np.testing.assert_allclose(history["warmup"], [0.5, 1.0, 1.0])


def test_schedules_refuse_other_models_and_bad_values():
    x, y = toy_classification(n=16)
    model = make_mlp(4)
    model.compile("sgd", sparse_ce())
    with pytest.raises(TypeError, match="schedules a `tfkd.Distiller`"):
        model.fit(
            x,
            y,
            callbacks=[tfkd.callbacks.AlphaSchedule(lambda e: 0.1)],
            verbose=0,
        )
    with pytest.raises(ValueError, match="alpha must be in"):
        _fit([tfkd.callbacks.AlphaSchedule(lambda e: 2.0)])
    with pytest.raises(ValueError, match="out of range"):
        _fit([tfkd.callbacks.LossWeightSchedule(3, lambda e: 1.0)])
    with pytest.raises(ValueError, match="index=-2 is out of range"):
        _fit([tfkd.callbacks.LinearWarmup(2, index=-2)])
    with pytest.raises(ValueError, match="has a temperature"):
        _fit(
            [tfkd.callbacks.TemperatureSchedule(lambda e: 2.0)],
            distillation_loss=tfkd.losses.RKD("hidden", "hidden"),
        )
    with pytest.raises(ValueError, match="positive integer"):
        tfkd.callbacks.LinearWarmup(0)
    with pytest.raises(TypeError, match="callable"):
        tfkd.callbacks.HyperparameterSchedule(tf.Variable(1.0), 3.0)
