"""Schedules after a crash (BackupAndRestore) and with bad values or types."""

import ast
import inspect
import re

import numpy as np
import pytest
from conftest import make_mlp
from conftest import sparse_ce
from conftest import toy_classification

import tfkd
from tfkd._keras import keras

EPOCHS = 6


class _Interrupt(keras.callbacks.Callback):
    """Raises at the start of `epoch`, as Keras' BackupAndRestore tests do."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("Interrupted")


class _RecordPerEpoch(keras.callbacks.Callback):
    """`{epoch: read(distiller)}` at each epoch's first batch."""

    def __init__(self, read):
        super().__init__()
        self.read, self.values, self._epoch = read, {}, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.values[self._epoch] = self.read(self.model)


def _distiller(methods):
    keras.utils.set_random_seed(0)
    distiller = tfkd.Distiller(
        make_mlp(16, name="teacher"), make_mlp(4), distillation_loss=methods
    )
    distiller.compile("sgd", loss=sparse_ce())
    return distiller


def _fit(distiller, callbacks):
    x, y = toy_classification(n=64)
    return distiller.fit(
        x,
        y,
        epochs=EPOCHS,
        batch_size=16,
        shuffle=False,  # the resumed epochs see the batches of the first run
        callbacks=callbacks,
        verbose=0,
    ).history


def _uninterrupted_and_resumed(methods, schedules, read, backup_dir):
    """Values per epoch of one run, and of a run killed at epoch 2 then
    resumed by a new `fit` with fresh schedules; the students' weights."""
    record = _RecordPerEpoch(read)
    distiller = _distiller(methods())
    _fit(distiller, schedules() + [record])
    uninterrupted = (record.values, distiller.student.get_weights())

    record = _RecordPerEpoch(read)
    backup = keras.callbacks.BackupAndRestore(str(backup_dir))
    with pytest.raises(RuntimeError, match="Interrupted"):
        _fit(
            _distiller(methods()), [backup, *schedules(), record, _Interrupt(2)]
        )
    assert sorted(record.values) == [0, 1]
    distiller = _distiller(methods())  # a new process would rebuild it
    backup = keras.callbacks.BackupAndRestore(str(backup_dir))
    history = _fit(distiller, [backup, *schedules(), record])
    assert len(history["loss"]) == EPOCHS - 2  # it resumed at epoch 2
    return uninterrupted, (record.values, distiller.student.get_weights())


def test_linear_warmup_resumed_after_a_crash_warms_up_from_the_configuration(
    tmp_path,
):
    (expected, expected_student), (values, student) = (
        _uninterrupted_and_resumed(
            lambda: [(tfkd.losses.KD(), 2.0)],
            lambda: [tfkd.callbacks.LinearWarmup(4)],
            lambda d: float(d.loss_weights[0].numpy()),
            tmp_path,
        )
    )
    ramp = {e: 2.0 * min((e + 1) / 4, 1.0) for e in range(EPOCHS)}
    np.testing.assert_allclose(
        [expected[e] for e in range(EPOCHS)], list(ramp.values()), rtol=1e-6
    )
    # Before the fix, the resumed run took the restored 1.0 as its base:
    # 0.75 at epoch 2 and 1.0 from epoch 3 on.
    np.testing.assert_allclose(
        [values[e] for e in range(EPOCHS)], list(ramp.values()), rtol=1e-6
    )
    for a, b in zip(student, expected_student):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_linear_warmup_ignores_the_variables_current_value():
    record = _RecordPerEpoch(lambda d: float(d.loss_weights[1].numpy()))
    warmup = tfkd.callbacks.LinearWarmup(2, index=1)
    distiller = _distiller([tfkd.losses.KD(), (tfkd.losses.DKD(), 3.0)])
    distiller.loss_weights[1].assign(0.25)  # e.g. left by another schedule
    x, y = toy_classification(n=32)
    distiller.fit(x, y, epochs=2, callbacks=[warmup, record], verbose=0)
    assert record.values == pytest.approx({0: 1.5, 1: 3.0})


def test_other_schedules_resumed_after_a_crash_match_an_uninterrupted_run(
    tmp_path,
):
    """Per-epoch schedules assign from the epoch, per-step ones from
    `optimizer.iterations`, which BackupAndRestore restores."""
    rkd = []

    def methods():
        rkd[:] = [tfkd.losses.RKD("hidden", "hidden")]
        return [tfkd.losses.KD(temperature=2.0), (rkd[0], 1.0)]

    def schedules():
        return [
            tfkd.callbacks.AlphaSchedule(lambda e: 0.1 * e),
            tfkd.callbacks.TemperatureSchedule(lambda e: 8.0 - e),
            tfkd.callbacks.LossWeightSchedule(
                1, lambda step: 0.5 * step, per_step=True
            ),
            tfkd.callbacks.HyperparameterSchedule(
                lambda d: rkd[0].angle_weight, lambda e: 10.0 + e
            ),
        ]

    def read(d):
        return [
            float(d.alpha.numpy()),
            float(d.distillation_losses[0].temperature.numpy()),
            float(d.loss_weights[1].numpy()),
            float(rkd[0].angle_weight.numpy()),
            int(d.optimizer.iterations.numpy()),
        ]

    (expected, expected_student), (values, student) = (
        _uninterrupted_and_resumed(methods, schedules, read, tmp_path)
    )
    # 4 steps per epoch: the per-step weight is half the step count.
    np.testing.assert_allclose(
        [expected[e] for e in range(EPOCHS)],
        [[0.1 * e, 8.0 - e, 2.0 * e, 10.0 + e, 4 * e] for e in range(EPOCHS)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        [values[e] for e in range(EPOCHS)],
        [expected[e] for e in range(EPOCHS)],
        rtol=1e-6,
    )
    for a, b in zip(student, expected_student):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Values and types.


def _fit_briefly(callbacks, methods=None, epochs=2):
    x, y = toy_classification(n=32)
    distiller = _distiller(methods or [tfkd.losses.KD(), tfkd.losses.DKD()])
    distiller.fit(
        x, y, epochs=epochs, batch_size=16, callbacks=callbacks, verbose=0
    )
    return distiller


@pytest.mark.parametrize(
    "value, where",
    [(-0.5, "epoch 1"), (float("nan"), "epoch 1"), (float("inf"), "epoch 1")],
)
def test_loss_weight_schedule_rejects_negative_and_non_finite_weights(
    value, where
):
    schedule = tfkd.callbacks.LossWeightSchedule(
        1, lambda epoch: 1.0 if epoch == 0 else value
    )
    with pytest.raises(
        ValueError,
        match=rf"LossWeightSchedule gave loss_weight_1={value} at {where}; "
        r"loss_weight_1 must be finite and >= 0\.",
    ):
        _fit_briefly([schedule])


def test_per_step_loss_weight_schedule_names_the_step():
    schedule = tfkd.callbacks.LossWeightSchedule(
        0, lambda step: 1.0 - 0.4 * step, per_step=True
    )
    with pytest.raises(
        ValueError, match=r"gave loss_weight_0=-0\.2\d* at step 3;"
    ):
        _fit_briefly([schedule])


def test_loss_weight_schedule_accepts_zero():
    distiller = _fit_briefly(
        [tfkd.callbacks.LossWeightSchedule(0, lambda epoch: 0.0)]
    )
    assert float(distiller.loss_weights[0].numpy()) == 0.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_hyperparameter_schedule_rejects_non_finite_values(value):
    rkd = tfkd.losses.RKD("hidden", "hidden")
    schedule = tfkd.callbacks.HyperparameterSchedule(
        rkd.angle_weight, lambda epoch: value, name="angle_weight"
    )
    with pytest.raises(
        ValueError,
        match=rf"HyperparameterSchedule gave angle_weight={value} at epoch 0;"
        r" angle_weight must be finite\.",
    ):
        _fit_briefly([schedule], methods=rkd)
    assert float(rkd.angle_weight.numpy()) == 50.0  # never assigned


def test_hyperparameter_schedule_rejects_a_schedule_that_returns_no_number():
    schedule = tfkd.callbacks.HyperparameterSchedule(
        lambda d: d.alpha, lambda epoch: None
    )
    with pytest.raises(
        TypeError,
        match=r"the schedule returned None of type NoneType at epoch 0; it "
        "must return a number",
    ):
        _fit_briefly([schedule])


@pytest.mark.parametrize("index", ["1", 1.0, True, None, [0]])
def test_loss_weight_schedule_index_must_be_an_int(index):
    with pytest.raises(
        TypeError,
        match=rf"LossWeightSchedule: `index` .* must be an int\. Received: "
        rf"{re.escape(f'index={index!r}')} of type {type(index).__name__}",
    ):
        tfkd.callbacks.LossWeightSchedule(index, lambda epoch: 1.0)


@pytest.mark.parametrize("index", ["0", 0.0, False])
def test_linear_warmup_index_must_be_an_int_or_none(index):
    with pytest.raises(
        TypeError,
        match=rf"LinearWarmup: `index` .* must be an int or None\. "
        rf"Received: index={index!r}",
    ):
        tfkd.callbacks.LinearWarmup(2, index=index)


def test_integer_indices_of_any_integer_type_are_accepted():
    schedule = tfkd.callbacks.LossWeightSchedule(np.int64(1), lambda e: 0.5)
    warmup = tfkd.callbacks.LinearWarmup(2, index=np.int32(0))
    assert type(schedule.index) is int and type(warmup.index) is int
    distiller = _fit_briefly([schedule, warmup], epochs=1)
    assert float(distiller.loss_weights[1].numpy()) == 0.5
    assert float(distiller.loss_weights[0].numpy()) == 0.5  # 1.0 * 1 / 2


@pytest.mark.parametrize("warmup_epochs", ["4", None])
def test_linear_warmup_epochs_of_the_wrong_type(warmup_epochs):
    with pytest.raises(TypeError, match="must be a positive integer"):
        tfkd.callbacks.LinearWarmup(warmup_epochs)


@pytest.mark.parametrize("warmup_epochs", [float("nan"), float("inf"), 2.5])
def test_linear_warmup_epochs_must_be_a_positive_integer(warmup_epochs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        tfkd.callbacks.LinearWarmup(warmup_epochs)


def test_alpha_and_temperature_schedules_name_the_epoch():
    with pytest.raises(
        ValueError,
        match=r"AlphaSchedule gave alpha=nan at epoch 0; alpha must be in "
        r"\[0, 1\]\.",
    ):
        _fit_briefly([tfkd.callbacks.AlphaSchedule(lambda e: float("nan"))])
    with pytest.raises(
        ValueError,
        match=r"TemperatureSchedule gave temperature=inf at epoch 0; "
        r"temperature must be finite and > 0\.",
    ):
        _fit_briefly(
            [tfkd.callbacks.TemperatureSchedule(lambda e: float("inf"))]
        )


def test_callbacks_import_the_distiller_at_module_level():
    """No import inside a function: `tfkd.distiller` does not import
    `tfkd.callbacks`, so there is no cycle to break."""
    tree = ast.parse(inspect.getsource(tfkd.callbacks))
    nested = [
        node.lineno
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert nested == []
    assert tfkd.callbacks.Distiller is tfkd.Distiller
