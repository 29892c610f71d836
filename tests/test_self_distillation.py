"""Self-distillation (issue 24): Tf-KD, PS-KD, BYOT terms, teachers made
from the student (none, moving average, snapshot), born-again generations.

Losses against NumPy (value and gradient); the Distiller hooks against
NumPy and against one device (two replicas of MirroredStrategy on the two
logical CPUs of conftest.py).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_cnn
from conftest import make_mlp
from conftest import mirrored_strategy
from conftest import relative_difference
from conftest import run_module
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd import losses as L
from tfkd._keras import keras


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _value_and_gradient(function, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = function(x)
    gradient = tape.gradient(
        value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value.numpy(), gradient.numpy()


RNG = np.random.default_rng(0)
TEACHER = RNG.normal(size=(6, 5)).astype("float32") * 3
STUDENT = RNG.normal(size=(6, 5)).astype("float32") * 3
LABELS = np.array([0, 1, 2, 3, 4, 2])
ONE_HOT = np.eye(5, dtype="float32")[LABELS]


# Pure functions.


@pytest.mark.parametrize("labels", [LABELS, ONE_HOT, LABELS[:, None]])
def test_teacher_free_loss_matches_the_authors_formula(labels):
    a, T, multiplier, K = 0.9, 20.0, 10.0, 5
    u = np.where(ONE_HOT > 0, a, (1 - a) / (K - 1))
    q = _softmax(u / T)  # the official code: softmax of probabilities / T
    p = _softmax(STUDENT)
    # nn.KLDivLoss() averages over batch AND classes.
    expected = multiplier * np.mean(q * (np.log(q) - np.log(p)))
    value, gradient = _value_and_gradient(
        lambda s: L.teacher_free_loss(
            labels, s, correct_prob=a, temperature=T, multiplier=multiplier
        ),
        STUDENT,
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(
        gradient, multiplier * (p - q) / (6 * K), rtol=1e-4, atol=1e-7
    )


def test_teacher_free_loss_is_float32_for_float16_logits():
    value = L.teacher_free_loss(LABELS, STUDENT.astype("float16"))
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        value.numpy(), L.teacher_free_loss(LABELS, STUDENT).numpy(), rtol=1e-2
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_pskd_loss_matches_numpy_and_stops_the_target_gradient(alpha):
    target = (1 - alpha) * ONE_HOT + alpha * _softmax(TEACHER)
    expected = -np.mean(np.sum(target * _log_softmax(STUDENT), axis=-1))
    value, gradient = _value_and_gradient(
        lambda s: L.pskd_loss(TEACHER, s, LABELS, alpha=alpha), STUDENT
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(
        gradient, (_softmax(STUDENT) - target) / 6, rtol=1e-4, atol=1e-7
    )
    _, teacher_gradient = _value_and_gradient(
        lambda t: L.pskd_loss(t, STUDENT, LABELS, alpha=alpha), TEACHER
    )
    np.testing.assert_array_equal(teacher_gradient, 0.0)


def test_byot_kd_loss_matches_the_authors_kd_loss_function():
    T = 3.0
    target = _softmax(TEACHER / T)
    expected = -(T**2) * np.mean(
        np.sum(target * _log_softmax(STUDENT / T), axis=-1)
    )
    value, gradient = _value_and_gradient(
        lambda s: L.byot_kd_loss(TEACHER, s, temperature=T), STUDENT
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(
        gradient, T * (_softmax(STUDENT / T) - target) / 6, rtol=1e-4, atol=1e-7
    )


def test_byot_feature_loss_matches_the_authors_masked_squares():
    deep = RNG.normal(size=(4, 3, 3, 2)).astype("float32")
    shallow = RNG.normal(size=(4, 3, 3, 2)).astype("float32")
    mask = ((deep > 0) | (shallow > 0)).astype("float32")
    # feature_loss_function sums over the batch too: here, the batch mean.
    expected = np.sum((shallow - deep) ** 2 * mask) / 4
    value, gradient = _value_and_gradient(
        lambda s: L.byot_feature_loss(deep, s), shallow
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(
        gradient, 2 * (shallow - deep) * mask / 4, rtol=1e-5, atol=1e-7
    )


def test_self_distillation_arguments_are_validated():
    with pytest.raises(ValueError, match=r"`correct_prob`.*correct_prob=1.0"):
        L.teacher_free_loss(LABELS, STUDENT, correct_prob=1.0)
    with pytest.raises(ValueError, match=r"`correct_prob`.*correct_prob=0"):
        L.TeacherFreeKD(correct_prob=0)
    with pytest.raises(ValueError, match=r"`alpha`.*alpha=1.5"):
        L.PSKD(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        L.TeacherFreeKD(temperature=0.0)


# Distiller(teacher=None) with a teacher-free method.


def _teacher_free(student, **kwargs):
    return tfkd.Distiller(
        None,
        student,
        L.TeacherFreeKD(temperature=4.0, multiplier=5.0),
        alpha=0.5,
        **kwargs,
    )


def test_teacher_free_distiller_losses_match_numpy():
    keras.utils.set_random_seed(0)
    x, y = toy_classification(n=32)
    student = make_mlp(16)
    distiller = _teacher_free(student)
    distiller.compile("sgd", loss=sparse_ce())
    logs = distiller.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    logits = student.predict(x, verbose=0)
    ce = -np.mean(_log_softmax(logits)[np.arange(32), y])
    tf_kd = L.teacher_free_loss(y, logits, temperature=4.0, multiplier=5.0)
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], tf_kd, rtol=1e-5)
    np.testing.assert_allclose(
        logs["loss"], 0.5 * ce + 0.5 * float(tf_kd), rtol=1e-5
    )


def test_teacher_free_distiller_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=64)
    student = make_cnn(4, seed=2, batch_norm=True)
    distiller = _teacher_free(student)
    distiller.compile("adam", loss=sparse_ce(), metrics=["accuracy"])
    start = student.get_weights()
    history = distiller.fit(
        x, y, epochs=2, batch_size=16, validation_data=(x, y), verbose=0
    )
    assert relative_difference(student.get_weights(), start) > 1e-3
    # No teacher: no teacher validation logs.
    assert not any(k.startswith("val_teacher") for k in history.history)
    path = str(tmp_path / "teacher_free.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.distillation_losses[0], L.TeacherFreeKD)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), 1e-6
    )
    for a, b in zip(
        loaded.evaluate(x, y, verbose=0), distiller.evaluate(x, y, verbose=0)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_teacher_none_needs_methods_that_read_no_teacher():
    student = make_mlp(8)
    with pytest.raises(ValueError, match=r"teacher=None.*KD need a teacher"):
        tfkd.Distiller(None, student, L.KD())
    with pytest.raises(
        ValueError, match=r"teacher=None.*distillation_loss=None"
    ):
        tfkd.Distiller(None, student)
    with pytest.raises(ValueError, match="DIST need a teacher"):
        tfkd.Distiller(None, student, [L.TeacherFreeKD(), L.DIST()])


# Moving-average teacher.


def _ema_distiller(student, decay, **compile_kwargs):
    teacher = tfkd.teachers.moving_average(student, decay=decay)
    distiller = tfkd.Distiller(teacher, student, L.KD(temperature=2.0))
    distiller.compile(
        keras.optimizers.SGD(0.1), loss=sparse_ce(), **compile_kwargs
    )
    return distiller


class _StudentWeights(keras.callbacks.Callback):
    def __init__(self, student):
        super().__init__()
        self.student = student
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.numpy() for w in self.student.weights])


def test_moving_average_teacher_follows_numpy_ema_at_any_steps_per_execution():
    x, y = toy_images(n=96)
    runs = []
    for steps_per_execution in (1, 3):
        keras.utils.set_random_seed(0)
        student = make_cnn(4, seed=2, batch_norm=True)
        distiller = _ema_distiller(
            student, 0.8, steps_per_execution=steps_per_execution
        )
        start = [w.numpy() for w in distiller.teacher.weights]
        record = _StudentWeights(student)
        distiller.fit(
            x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[record]
        )
        runs.append((distiller, start, record.steps))
    one_step, start, steps = runs[0]
    assert len(steps) == 6
    expected = start
    for weights in steps:
        expected = [0.8 * t + 0.2 * s for t, s in zip(expected, weights)]
    teacher = [w.numpy() for w in one_step.teacher.weights]
    for got, want in zip(teacher, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert relative_difference(teacher, steps[-1]) > 1e-3  # not a copy
    three_steps = runs[1][0]
    assert (
        relative_difference(
            three_steps.teacher.get_weights(), one_step.teacher.get_weights()
        )
        <= 1e-5
    )
    assert not three_steps.teacher.trainable_weights


def test_moving_average_decay_is_a_schedulable_variable():
    x, y = toy_classification(n=32)
    keras.utils.set_random_seed(0)
    student = make_mlp(8)
    distiller = _ema_distiller(student, 0.9)
    decay = tfkd.teachers.moving_average_decay(distiller.teacher)
    schedule = tfkd.callbacks.HyperparameterSchedule(
        lambda d: tfkd.teachers.moving_average_decay(d.teacher),
        lambda epoch: 0.0,  # a decay of 0 copies the student
        name="decay",
    )
    history = distiller.fit(
        x, y, batch_size=16, verbose=0, callbacks=[schedule]
    )
    assert history.history["decay"] == [0.0]
    assert float(decay.numpy()) == 0.0
    assert relative_difference(
        distiller.teacher.get_weights(), student.get_weights()
    ) == pytest.approx(0.0, abs=1e-7)
    # The configured decay is saved, not the scheduled one.
    assert distiller.get_config()["self_teacher"] == {
        "kind": "moving_average",
        "decay": 0.9,
    }


def test_moving_average_distiller_saves_and_loads(tmp_path):
    x, y = toy_classification(n=32)
    keras.utils.set_random_seed(0)
    student = make_mlp(8)
    distiller = _ema_distiller(student, 0.5)
    distiller.fit(x, y, batch_size=16, verbose=0)
    path = str(tmp_path / "ema.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert float(tfkd.teachers.moving_average_decay(loaded.teacher)) == 0.5
    np.testing.assert_allclose(
        loaded.teacher.predict(x, verbose=0),
        distiller.teacher.predict(x, verbose=0),
        rtol=1e-6,
    )
    # The loaded teacher goes on following the loaded student.
    loaded.fit(x, y, batch_size=16, verbose=0)
    distiller.fit(x, y, batch_size=16, verbose=0)
    assert (
        relative_difference(
            loaded.teacher.get_weights(), distiller.teacher.get_weights()
        )
        <= 1e-5
    )


def test_self_teachers_are_checked():
    student, other = make_mlp(8), make_mlp(8, name="other")
    with pytest.raises(ValueError, match=r"`decay`.*decay=1.5"):
        tfkd.teachers.moving_average(student, decay=1.5)
    with pytest.raises(ValueError, match="made from the model 'other'"):
        tfkd.Distiller(tfkd.teachers.moving_average(other), student)
    with pytest.raises(TypeError, match="`student` must be"):
        tfkd.teachers.snapshot("student")
    with pytest.raises(ValueError, match="moving_average"):
        tfkd.teachers.moving_average_decay(other)


# PS-KD: snapshot teacher and schedule.


def test_snapshot_teacher_is_the_student_of_the_previous_epoch():
    x, y = toy_classification(n=32)
    keras.utils.set_random_seed(0)
    student = make_mlp(8)
    distiller = tfkd.Distiller(
        tfkd.teachers.snapshot(student), student, L.PSKD(0.8), alpha=0.0
    )
    distiller.compile("adam", loss=sparse_ce())
    ends = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: ends.append(student.get_weights())
    )
    schedule = tfkd.callbacks.PSKDSchedule(4)
    history = distiller.fit(
        x, y, epochs=3, batch_size=16, verbose=0, callbacks=[record, schedule]
    )
    # alpha_t = 0.8 * (e + 1) / 4, and 0 at epoch 0 (the labels alone).
    np.testing.assert_allclose(
        history.history["pskd_alpha"], [0.0, 0.4, 0.6], rtol=1e-6
    )
    assert relative_difference(distiller.teacher.get_weights(), ends[1]) == 0
    assert relative_difference(ends[2], ends[1]) > 1e-4


def test_pskd_schedule_is_checked():
    with pytest.raises(ValueError, match=r"`epochs`.*epochs=0"):
        tfkd.callbacks.PSKDSchedule(0)
    student = make_mlp(8)
    distiller = _teacher_free(student)
    distiller.compile("adam", loss=sparse_ce())
    x, y = toy_classification(n=16)
    with pytest.raises(ValueError, match="PSKDSchedule schedules"):
        distiller.fit(
            x, y, verbose=0, callbacks=[tfkd.callbacks.PSKDSchedule(3)]
        )


# Two replicas train like one device.


def _self_distillers():
    def none():
        student = make_cnn(4, name="student", seed=2, batch_norm="sync")
        return _teacher_free(student)

    def moving_average():
        student = make_cnn(4, name="student", seed=2, batch_norm="sync")
        teacher = tfkd.teachers.moving_average(student, decay=0.7)
        return tfkd.Distiller(teacher, student, L.KD(), alpha=0.5)

    def snapshot():
        student = make_cnn(4, name="student", seed=2, batch_norm="sync")
        teacher = tfkd.teachers.snapshot(student)
        return tfkd.Distiller(teacher, student, L.PSKD(0.5), alpha=0.0)

    return {
        "none": none,
        "moving_average": moving_average,
        "snapshot": snapshot,
    }


@pytest.mark.heavy  # 10-25 s each on 2 busy cores
@pytest.mark.parametrize("kind", ["none", "moving_average", "snapshot"])
def test_two_replicas_train_like_one_device(kind):
    x, y = toy_images(n=32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    runs = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), None):
        strategy = strategy or mirrored_strategy()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            distiller = _self_distillers()[kind]()
            distiller.compile(
                keras.optimizers.SGD(0.1, momentum=0.9), loss=sparse_ce()
            )
        if runs:
            distiller.set_weights(runs[0][1])
        start = distiller.get_weights()
        student_start = distiller.student.get_weights()
        history = distiller.fit(data, epochs=2, verbose=0)
        runs.append((distiller, start, history.history))
    (single, _, single_logs), (replicated, _, mirrored_logs) = runs
    trained = single.student.get_weights()
    assert relative_difference(trained, student_start) > 1e-4
    for model in ("student", "teacher")[: 1 if kind == "none" else 2]:
        a = getattr(single, model).get_weights()
        b = getattr(replicated, model).get_weights()
        assert relative_difference(b, a) <= 1e-5, model
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(
            mirrored_logs[key], single_logs[key], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["none", "moving_average"])
def test_mixed_precision_trains_to_finite_float32_losses(policy, kind):
    policy("mixed_float16")
    x, y = toy_images(n=32)
    keras.utils.set_random_seed(0)
    distiller = _self_distillers()[kind]()
    distiller.compile("adam", loss=sparse_ce())
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(w.dtype == "float32" for w in distiller.teacher.weights)


# Born-again generations.


def _born_again_data():
    x, y = toy_classification(n=64)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def test_born_again_generation_is_a_distiller_from_the_one_before():
    data = _born_again_data()
    lineage = tfkd.self_distillation.born_again(
        lambda: make_mlp(8),
        data,
        generations=2,
        epochs=2,
        optimizer=keras.optimizers.SGD(0.1),
        metrics=["accuracy"],
        test_data=data,
        seed=5,
        verbose=0,
    )
    assert [g.index for g in lineage] == [0, 1, 2]
    for generation in lineage:
        assert len(generation.history["loss"]) == 2
        assert set(generation.test) >= {"loss", "accuracy"}
    # Generation 2 by hand: seed 5 + 2, KD at T=1 from generation 1.
    keras.utils.set_random_seed(7)
    student = make_mlp(8)
    distiller = tfkd.Distiller(
        lineage[1].model, student, L.KD(temperature=1.0), alpha=0.0
    )
    distiller.compile(
        keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"]
    )
    distiller.fit(data, epochs=2, verbose=0)
    assert (
        relative_difference(
            lineage[2].model.get_weights(), student.get_weights()
        )
        <= 1e-5
    )
    np.testing.assert_allclose(
        lineage[2].test["accuracy"],
        student.evaluate(data, return_dict=True, verbose=0)["accuracy"],
    )


def test_born_again_ensemble_teaches_with_all_earlier_generations():
    data = _born_again_data()
    first = make_mlp(8, name="first", seed=3)
    lineage = tfkd.self_distillation.born_again(
        lambda: make_mlp(8),
        data,
        generations=2,
        ensemble=True,
        first=first,
        seed=0,
        verbose=0,
    )
    assert lineage[0].model is first and lineage[0].history == {}
    keras.utils.set_random_seed(2)
    student = make_mlp(8)
    teacher = tfkd.teachers.ensemble([first, lineage[1].model])
    distiller = tfkd.Distiller(
        teacher, student, L.KD(temperature=1.0), alpha=0.0
    )
    distiller.compile("adam", loss=sparse_ce())
    distiller.fit(data, epochs=1, verbose=0)
    assert (
        relative_difference(
            lineage[2].model.get_weights(), student.get_weights()
        )
        <= 1e-5
    )


def test_born_again_arguments_are_checked():
    data = _born_again_data()
    with pytest.raises(ValueError, match=r"`generations`.*generations=0"):
        tfkd.self_distillation.born_again(
            lambda: make_mlp(8), data, generations=0
        )
    with pytest.raises(TypeError, match="`make_student` must be a function"):
        tfkd.self_distillation.born_again(make_mlp(8), data)
    with pytest.raises(TypeError, match="`make_student` must return"):
        tfkd.self_distillation.born_again(lambda: "model", data, verbose=0)


# The example script, end to end on the offline mnist_5k.


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tf_kd", "pskd", "ema", "born_again"])
def test_self_distill_example_runs_each_method(method, data_dir, tmp_path):
    stdout = run_module(
        "examples.self_distill",
        f"--method={method}",
        "--student=student_cnn",
        "--epochs=1",
        f"--data_dir={data_dir}",
        "--train_examples=64",
        "--test_examples=32",
        "--verbose=0",
        f"--output_dir={tmp_path}",
    )
    assert f"self-distilled with {method}: test accuracy" in stdout
    assert (tmp_path / "student.keras").exists()
    with open(tmp_path / "history.json") as f:
        history = json.load(f)
    if method == "born_again":
        assert sorted(history) == ["generation_0", "generation_1"]
    else:
        assert len(history["val_accuracy"]) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TFKD_SOURCE_DIR"),
    reason="needs the local Fashion-MNIST files ($TFKD_SOURCE_DIR)",
)
def test_self_distillation_benchmark_writes_each_recipe(tmp_path):
    recipes = ["alone", "tf_kd", "pskd", "ema", "born_again"]
    run_module(
        "benchmarks.self_distillation",
        "--datasets=fashion_mnist",
        "--seeds=1",
        "--epochs=1",
        "--train_examples=256",
        f"--recipes={','.join(recipes)}",
        f"--output_dir={tmp_path}",
    )
    with open(tmp_path / "self_distillation.json") as f:
        run = json.load(f)["results"]["fashion_mnist"]
    assert list(run["recipes"]) == recipes
    for entry in run["recipes"].values():
        assert len(entry["accuracy"]) == len(entry["seconds"]) == 1
    with open(tmp_path / "self_distillation.md") as f:
        rows = [line for line in f if line.startswith("| fashion_mnist")]
    assert [row.split(" | ")[2] for row in rows] == recipes


# Be Your Own Teacher: auxiliary heads.


def _byot_student():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1")(inputs)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="block2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, activation="relu", name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_byot_loss_matches_the_authors_total():
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=16)
    student = _byot_student()
    byot = tfkd.self_distillation.DeepSelfDistillation(
        student,
        ["relu1", "block2"],
        feature_layer="embedding",
        alpha=0.3,
        beta=0.01,
    )
    byot.compile("sgd", metrics=["accuracy"])
    logs = byot.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    final, h1, h2, feature, f1, f2 = [
        np.asarray(o) for o in byot.network(x, training=False)
    ]

    def ce(logits):
        return -_log_softmax(logits)[np.arange(16), y]

    def kd(head, T=3.0):
        return -(T**2) * np.sum(
            _softmax(final / T) * _log_softmax(head / T), axis=-1
        )

    def hint(f):
        mask = (feature > 0) | (f > 0)
        return np.sum((f - feature) ** 2 * mask, axis=-1)

    expected = np.mean(
        0.7 * (ce(final) + ce(h1) + ce(h2))
        + 0.3 * (kd(h1) + kd(h2))
        + 0.01 * (hint(f1) + hint(f2))
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    assert h1.shape == h2.shape == final.shape == (16, 3)


def test_byot_trains_heads_and_exports_the_student_without_them():
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=64)
    student = _byot_student()
    count = len(student.weights)
    byot = tfkd.self_distillation.DeepSelfDistillation(
        student, ["relu1"], feature_layer="embedding"
    )
    byot.compile(keras.optimizers.Adam(0.01), metrics=["accuracy"])
    (exit_model,) = byot.early_exits()
    before = exit_model.get_weights()
    history = byot.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(student.weights) == count  # no head in the student
    assert relative_difference(exit_model.get_weights(), before) > 1e-3
    np.testing.assert_allclose(
        byot.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6
    )
    assert exit_model.predict(x, verbose=0).shape == (64, 3)


def test_byot_arguments_are_checked():
    student = _byot_student()
    with pytest.raises(ValueError, match=r"no layer 'block9'.*layers='block9'"):
        tfkd.self_distillation.DeepSelfDistillation(student, ["block9"])
    with pytest.raises(ValueError, match=r"`layers`.*layers=\[\]"):
        tfkd.self_distillation.DeepSelfDistillation(student, [])
    with pytest.raises(ValueError, match=r"`alpha`.*alpha=2"):
        tfkd.self_distillation.DeepSelfDistillation(
            student, ["block1"], alpha=2
        )


@pytest.mark.heavy
def test_byot_two_replicas_train_like_one_device():
    x, y = toy_images(n=32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    runs = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), None):
        strategy = strategy or mirrored_strategy()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            byot = tfkd.self_distillation.DeepSelfDistillation(
                _byot_student(), ["relu1", "block2"], feature_layer="embedding"
            )
            byot.compile(keras.optimizers.SGD(0.1))
        if runs:
            byot.network.set_weights(runs[0][1])
        start = byot.network.get_weights()
        history = byot.fit(data, epochs=2, verbose=0)
        runs.append((byot, start, history.history))
    (single, start, one), (replicated, _, two) = runs
    trained = single.network.get_weights()
    assert relative_difference(trained, start) > 1e-4
    assert (
        relative_difference(replicated.network.get_weights(), trained) <= 1e-5
    )
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)


def test_byot_trains_to_finite_float32_losses_under_mixed_precision(policy):
    policy("mixed_float16")
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=32)
    byot = tfkd.self_distillation.DeepSelfDistillation(
        _byot_student(), ["relu1"], feature_layer="embedding"
    )
    byot.compile("adam")
    history = byot.fit(x, y, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert byot.early_exits()[0](x[:2]).dtype == tf.float32


def test_byot_saves_and_loads_as_a_whole_and_resumes(tmp_path):
    """The wrapper round-trips through `save` / `load_model`: the same
    student and early-exit outputs, the settings, and the optimizer's
    state (the next epoch equals the uninterrupted run's)."""
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=32)
    byot = tfkd.self_distillation.DeepSelfDistillation(
        _byot_student(),
        ["relu1"],
        feature_layer="embedding",
        alpha=0.3,
        temperature=2.0,
    )
    byot.compile(keras.optimizers.Adam(0.01), metrics=["accuracy"])
    byot.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "byot.keras")
    byot.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(byot)
    assert (loaded.layer_names, loaded.feature_layer) == (
        ["relu1"],
        "embedding",
    )
    assert (loaded.alpha, loaded.temperature) == (0.3, 2.0)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), byot.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        loaded.early_exits()[0].predict(x, verbose=0),
        byot.early_exits()[0].predict(x, verbose=0),
        rtol=1e-6,
    )
    byot.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert (
        relative_difference(
            loaded.network.get_weights(), byot.network.get_weights()
        )
        < 1e-5
    )
