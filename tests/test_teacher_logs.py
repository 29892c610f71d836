"""`Distiller.fit(validation_data=...)` logs the teacher's validation loss
and metrics as `val_teacher_*`, computed once per `fit` call."""

import contextlib
import csv
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import mirrored_strategy
from conftest import sparse_ce
from conftest import toy_classification

import tfkd
from tfkd import _teacher_logs
from tfkd._keras import keras


def _np_ce(logits, y):
    z = logits.astype("float64")
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(y)), y]


def _regularized_teacher(x, y):
    """A trained teacher with an L2 penalty, which `val_teacher_loss`
    leaves out (as `val_student_loss` leaves out the student's)."""
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(
        32, activation="relu", kernel_regularizer=keras.regularizers.L2(0.1)
    )(inputs)
    logits = keras.layers.Dense(3)(hidden)
    teacher = keras.Model(inputs, logits, name="teacher")
    teacher.compile("adam", sparse_ce())
    teacher.fit(x, y, epochs=3, verbose=0)
    return teacher


def _distiller(teacher, strategy=None):
    with strategy.scope() if strategy else contextlib.nullcontext():
        distiller = tfkd.Distiller(
            teacher, make_mlp(4, name="student", seed=20), alpha=0.3
        )
        distiller.compile(
            keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"]
        )
    return distiller


def _data():
    x, y = toy_classification(n=96)
    return x[:64], y[:64], x[64:], y[64:]


@pytest.mark.parametrize("replicas", [1, 2])
def test_teacher_validation_metrics_match_numpy(replicas):
    x, y, x_val, y_val = _data()
    strategy = mirrored_strategy() if replicas == 2 else None
    with strategy.scope() if strategy else contextlib.nullcontext():
        teacher = _regularized_teacher(x, y)
    assert teacher.losses  # the penalty that val_teacher_loss leaves out
    distiller = _distiller(teacher, strategy)
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        batch_size=16,
        epochs=2,
        verbose=0,
    ).history
    logits = teacher.predict(x_val, verbose=0)
    accuracy = np.mean(logits.argmax(axis=1) == y_val)
    loss = _np_ce(logits, y_val).mean()
    # One value per epoch, as the val_ metrics: the frozen teacher's.
    np.testing.assert_allclose(history["val_teacher_accuracy"], [accuracy] * 2)
    np.testing.assert_allclose(
        history["val_teacher_loss"], [loss] * 2, rtol=1e-5
    )
    assert len(history["val_loss"]) == 2


def test_absent_without_validation_data():
    x, y, _, _ = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert not [key for key in history if "teacher" in key]


def test_evaluated_once_per_fit_call(monkeypatch):
    calls = []
    evaluate = _teacher_logs.TeacherValidation._evaluate

    def counted(self):
        calls.append(1)
        return evaluate(self)

    monkeypatch.setattr(_teacher_logs.TeacherValidation, "_evaluate", counted)
    x, y, x_val, y_val = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(8)
    for _ in range(2):
        distiller.fit(x, y, validation_data=validation, epochs=3, verbose=0)
    assert len(calls) == 2


def test_only_epochs_that_validate_log_it():
    x, y, x_val, y_val = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        validation_freq=2,
        epochs=4,
        verbose=0,
    ).history
    assert len(history["val_loss"]) == 2
    assert len(history["val_teacher_accuracy"]) == 2


def test_callbacks_monitoring_val_loss_still_work(tmp_path):
    x, y, x_val, y_val = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    log = str(tmp_path / "log.csv")
    checkpoint = str(tmp_path / "best.weights.h5")
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=3,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=5),
            keras.callbacks.ModelCheckpoint(
                checkpoint,
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
            ),
            keras.callbacks.CSVLogger(log),
        ],
    ).history
    assert len(history["val_teacher_loss"]) == 3
    distiller.load_weights(checkpoint)
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row, value in zip(rows, history["val_teacher_accuracy"]):
        np.testing.assert_allclose(float(row["val_teacher_accuracy"]), value)


def test_cached_validation_data_gives_the_live_values():
    x, y, x_val, y_val = _data()
    teacher = make_mlp(8, name="teacher")
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(8)
    cached = tfkd.cache_teacher_outputs(teacher, validation, verbose=0)
    logs = []
    for data in (validation, cached):
        history = _distiller(teacher).fit(
            x, y, validation_data=data, epochs=1, verbose=0
        )
        logs.append(history.history)
    for key in ("val_teacher_loss", "val_teacher_accuracy"):
        np.testing.assert_allclose(logs[1][key], logs[0][key], rtol=1e-6)


def test_a_top_k_cache_logs_the_teachers_top_k_and_its_tail_mass():
    """From a top-k cache the teacher's accuracy is exact, and its loss is
    exact for labels among its top-k; a label outside them costs the
    teacher's tail mass spread evenly (not the 1e6 of a floor)."""
    x, y = toy_classification(n=96, classes=6)
    teacher = make_mlp(8, classes=6, name="teacher")
    validation = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    cached = tfkd.cache_teacher_outputs(teacher, validation, top_k=2, verbose=0)
    distiller = tfkd.Distiller(
        teacher, make_mlp(4, classes=6, name="student", seed=20), alpha=0.3
    )
    distiller.compile("sgd", loss=sparse_ce(), metrics=["accuracy"])
    logs = distiller.fit(
        cached, validation_data=cached, epochs=1, verbose=0
    ).history
    t = teacher.predict(x, verbose=0).astype("float64")
    log_p = t - np.log(np.exp(t).sum(-1, keepdims=True))
    top = np.argsort(-t, axis=1)[:, :2]
    in_top = (top == y[:, None]).any(axis=1)
    tail = 1 - np.exp(np.take_along_axis(log_p, top, 1)).sum(1)
    ce = np.where(in_top, -log_p[np.arange(len(y)), y], -np.log(tail / 4))
    assert not in_top.all()  # Both cases are exercised.
    np.testing.assert_allclose(logs["val_teacher_loss"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        logs["val_teacher_accuracy"], (t.argmax(1) == y).mean(), rtol=1e-6
    )


def test_without_a_loss_only_the_metrics():
    x, _, x_val, y_val = _data()
    distiller = tfkd.Distiller(
        make_mlp(8, name="teacher"), make_mlp(4), alpha=0
    )
    distiller.compile("sgd", metrics=["accuracy"])
    history = distiller.fit(
        x, validation_data=(x_val, y_val), epochs=1, verbose=0
    ).history
    assert "val_teacher_accuracy" in history
    assert "val_teacher_loss" not in history


def _two_heads(name, width):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(3, name="digit")(hidden),
            "large": keras.layers.Dense(1, name="large")(hidden),
        },
        name=name,
    )


def test_multi_output_names_follow_the_distillers():
    x, y, x_val, y_val = _data()

    def labels(x, y):
        return {"digit": y, "large": (x[:, :1] > 0).astype("float32")}

    teacher = _two_heads("teacher", 16)
    distiller = tfkd.Distiller(teacher, _two_heads("student", 4), alpha=0.5)
    distiller.compile(
        "sgd",
        loss={"digit": sparse_ce(), "large": "binary_crossentropy"},
        metrics={
            "digit": ["accuracy"],
            "large": [keras.metrics.BinaryAccuracy(threshold=0.0)],
        },
    )
    history = distiller.fit(
        x,
        labels(x, y),
        validation_data=(x_val, labels(x_val, y_val)),
        epochs=1,
        verbose=0,
    ).history
    teacher_keys = {
        key[12:] for key in history if key.startswith("val_teacher_")
    }
    student_keys = {
        key[4:]
        for key in history
        if key.startswith("val_") and not key.startswith("val_teacher_")
    }
    # The teacher's also has each output's loss.
    assert teacher_keys - {"digit_loss", "large_loss"} == student_keys - {
        "student_loss",
        "distillation_loss",
    }
    outputs = teacher.predict(x_val, verbose=0)
    large = labels(x_val, y_val)["large"]
    np.testing.assert_allclose(
        history["val_teacher_digit_accuracy"],
        [np.mean(outputs["digit"].argmax(axis=1) == y_val)],
    )
    np.testing.assert_allclose(
        history["val_teacher_large_binary_accuracy"],
        [np.mean((outputs["large"] > 0) == (large > 0.5))],
    )


def _tensorboard_scalars(log_dir):
    """`{run: {tag: {epoch: value}}}` of the scalars in `log_dir`'s event
    files, the `train` and `validation` runs of `keras.callbacks.TensorBoard`
    (tags without their `epoch_` prefix)."""
    runs = {}
    for run in ("train", "validation"):
        scalars = runs.setdefault(run, {})
        for name in os.listdir(os.path.join(log_dir, run)):
            for event in tf.compat.v1.train.summary_iterator(
                os.path.join(log_dir, run, name)
            ):
                for value in event.summary.value:
                    if not value.tag.startswith("epoch_"):
                        continue
                    number = float(tf.make_ndarray(value.tensor))
                    tag = value.tag[len("epoch_") :]
                    scalars.setdefault(tag, {})[event.step] = number
    return runs


def test_tensorboard_puts_them_in_the_validation_run(tmp_path):
    # TensorBoard (and CSVLogger's header, and most loggers) sorts logs into
    # runs by the `val_` prefix: the teacher's validation scores are
    # `val_teacher_*`, shown as `teacher_*` in the validation run.
    keras.utils.set_random_seed(0)
    x, y, x_val, y_val = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    log_dir = str(tmp_path / "logs")
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(log_dir, write_graph=False)],
    ).history
    runs = _tensorboard_scalars(log_dir)
    assert not [tag for tag in runs["train"] if "teacher" in tag]
    teacher = {
        tag: steps
        for tag, steps in runs["validation"].items()
        if "teacher" in tag
    }
    assert sorted(teacher) == ["teacher_accuracy", "teacher_loss"]
    for tag, steps in teacher.items():
        np.testing.assert_allclose(
            [steps[epoch] for epoch in (0, 1)], history[f"val_{tag}"]
        )
    # The student's, as before.
    np.testing.assert_allclose(
        [runs["validation"]["accuracy"][epoch] for epoch in (0, 1)],
        history["val_accuracy"],
    )


def test_callbacks_can_monitor_them():
    # A user's callback reads them from the logs like any `val_*`: the
    # teacher's loss does not change, so patience 0 stops at epoch 2.
    x, y, x_val, y_val = _data()
    distiller = _distiller(make_mlp(8, name="teacher"))
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=5,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_teacher_loss", mode="min", patience=0
            )
        ],
    ).history
    assert len(history["val_teacher_loss"]) == 2


def test_a_student_metric_named_like_them_is_refused():
    x, y, x_val, y_val = _data()
    distiller = tfkd.Distiller(make_mlp(8, name="teacher"), make_mlp(4))
    distiller.compile(
        "sgd",
        loss=sparse_ce(),
        metrics=[
            "accuracy",
            keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy"),
        ],
    )
    with pytest.raises(ValueError, match=r"would overwrite.*'val_teacher_acc"):
        distiller.fit(x, y, validation_data=(x_val, y_val), epochs=1, verbose=0)
