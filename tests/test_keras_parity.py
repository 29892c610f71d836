"""Parity with Keras 3.15's own distiller tests (issue 11).

One test per scenario of `keras/src/distillation/distiller_test.py` and
`keras/src/distillation/distillation_loss_test.py`, each naming the Keras test
it mirrors, written for tfkd's API. Where Keras only checks that training
runs, these check values: losses against NumPy, weights that change, a frozen
teacher, prediction shapes, save/load equality. Then what Keras' implementation
supports but its tests leave out: `FeatureDistillation` without layer names,
resuming a reloaded distiller, and multi-output models.

Keras' names -> tfkd: `distillation_losses` -> `distillation_loss`,
`student_loss_weight` -> `alpha`, `distillation_loss_weights` -> `(method,
weight)` tuples, `LogitsDistillation` -> `tfkd.losses.KD`,
`FeatureDistillation(loss="mse")` -> `tfkd.losses.FitNets`, log `total_loss`
-> `loss`.
"""

import json
import warnings

import numpy as np
import pytest
from conftest import relative_difference
from conftest import sparse_ce

import tfkd
from tfkd._keras import keras

# NumPy references, in float64.


def _np_log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_kd(teacher_logits, student_logits, temperature):
    """Per-example `T^2 * KL(softmax(t/T) || softmax(s/T))`."""
    log_t = _np_log_softmax(teacher_logits / temperature)
    log_s = _np_log_softmax(student_logits / temperature)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)
    return kl * temperature**2


def _np_ce(logits, y):
    """Per-example sparse categorical cross-entropy from logits."""
    return -_np_log_softmax(logits)[np.arange(len(y)), y]


def _np_mse(teacher_features, student_features):
    """Per-example mean squared error over all feature elements."""
    diff = student_features.astype("float64") - teacher_features
    return (diff**2).reshape(len(diff), -1).mean(axis=-1)


def _np_accuracy(logits, y):
    return float(np.mean(np.argmax(logits, axis=-1) == y))


# Models and data shaped like Keras' tests.


class SimpleModel(keras.Model):
    """Keras' `SimpleTeacher` / `SimpleStudent`: a subclassed 2-layer MLP."""

    def __init__(self, vocab_size=10, hidden_dim=32, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = keras.layers.Dense(hidden_dim, activation="relu")
        self.dense2 = keras.layers.Dense(vocab_size)

    def call(self, inputs, training=None):
        return self.dense2(self.dense1(inputs))


def _simple_pair(x):
    """Keras' `TestDistiller.setUp` models, built on `x`."""
    teacher = SimpleModel(hidden_dim=32, name="simple_teacher")
    student = SimpleModel(hidden_dim=16, name="simple_student")
    teacher(x[:2])
    student(x[:2])
    return teacher, student


def _sequential(role, widths, x):
    """Keras' Sequential `{role}_dense_1`, `{role}_dense_2`, `{role}_output`."""
    model = keras.Sequential(
        [
            keras.layers.Dense(
                width, activation="relu", name=f"{role}_dense_{i + 1}"
            )
            for i, width in enumerate(widths)
        ]
        + [keras.layers.Dense(10, name=f"{role}_output")],
        name=role,
    )
    model(x[:2])
    return model


def _data(n, features, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, features)).astype("float32")
    y = rng.integers(0, classes, size=n).astype("int32")
    return x, y


def _features(model, layer_name, x):
    # One input tensor, not the list `model.inputs`: Keras 3 warns when a
    # Functional model built on a list is called with a tensor.
    (inputs,) = model.inputs
    extractor = keras.Model(inputs, model.get_layer(layer_name).output)
    return _logits(extractor, x)


def _logits(model, x):
    """`model`'s outputs on `x` in inference mode, as NumPy (no `predict`:
    each `predict` traces a function, and these tests must stay fast)."""
    outputs = model(x, training=False)
    if isinstance(outputs, dict):
        return {key: np.asarray(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(value) for value in outputs]
    return np.asarray(outputs)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _changed(before, after):
    return any(not np.allclose(b, a, atol=1e-6) for b, a in zip(before, after))


def _assert_total(logs, alpha, key=""):
    """`loss == alpha * student_loss + (1 - alpha) * distillation_loss`."""
    expected = alpha * np.asarray(logs[key + "student_loss"])
    expected += (1 - alpha) * np.asarray(logs[key + "distillation_loss"])
    np.testing.assert_allclose(logs[key + "loss"], expected, rtol=1e-5)


def _compiled(teacher, student, alpha=0.5, optimizer="adam", **kwargs):
    distiller = tfkd.Distiller(teacher, student, alpha=alpha, **kwargs)
    distiller.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return distiller


def _evaluate(distiller, x, y, **kwargs):
    return distiller.evaluate(
        x, y, batch_size=len(x), return_dict=True, verbose=0, **kwargs
    )


# distiller_test.py :: TestDistiller


def _setup_distiller():
    """Keras' `TestDistiller.setUp`: KD(T=2), alpha 0.5, adam, accuracy."""
    x, y = _data(20, 5)
    teacher, student = _simple_pair(x)
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        distillation_loss=tfkd.losses.KD(temperature=2.0),
    )
    return distiller, teacher, student, x, y


def test_distiller_initialization():
    # Mirrors TestDistiller.test_distiller_initialization.
    distiller, teacher, student, _, _ = _setup_distiller()
    assert not teacher.trainable
    assert student.trainable
    assert float(distiller.alpha.numpy()) == 0.5
    assert isinstance(distiller.distillation_losses, list)
    assert len(distiller.distillation_losses) == 1
    kd = distiller.distillation_losses[0]
    assert isinstance(kd, tfkd.losses.KD)
    assert float(kd.temperature.numpy()) == 2.0
    assert distiller.base_loss_weights == (1.0,)
    assert distiller.optimizer is not None
    # Compiled: the optimizer trains the student's weights only.
    trainable = {id(v) for v in distiller.trainable_weights}
    assert trainable == {id(v) for v in student.trainable_weights}


def test_distiller_call():
    # Mirrors TestDistiller.test_distiller_call.
    distiller, teacher, student, x, _ = _setup_distiller()
    outputs = np.asarray(distiller(x))
    assert outputs.shape == (20, 10)
    np.testing.assert_allclose(outputs, student(x), rtol=1e-6)
    assert not np.allclose(outputs, teacher(x), atol=1e-3)


def test_teacher_freezing():
    # Mirrors TestDistiller.test_teacher_freezing (that training leaves the
    # teacher's weights as they were: test_full_training_workflow).
    _, teacher, student, x, _ = _setup_distiller()
    assert not teacher.trainable
    assert student.trainable
    new_teacher = SimpleModel(hidden_dim=32, name="new_teacher")
    new_teacher(x[:2])
    assert new_teacher.trainable
    distiller = tfkd.Distiller(new_teacher, student)
    assert not new_teacher.trainable
    assert not new_teacher.trainable_weights
    assert student.trainable
    trainable = {id(v) for v in distiller.trainable_weights}
    assert trainable == {id(v) for v in student.trainable_weights}


def test_model_compatibility_validation():
    # Mirrors TestDistiller.test_model_compatibility_validation. Keras raises
    # ValueError; a wrong type is a TypeError in tfkd (STYLE.md).
    _, teacher, student, _, _ = _setup_distiller()
    with pytest.raises(TypeError, match="`teacher` must be"):
        tfkd.Distiller(teacher="not_a_model", student=student)
    with pytest.raises(TypeError, match="`student` must be"):
        tfkd.Distiller(teacher=teacher, student="not_a_model")


def test_multi_distillation_loss_functionality():
    # Mirrors TestDistiller.test_multi_distillation_loss_functionality: two
    # KD terms with weights 0.7 and 0.3; the term checked against NumPy.
    x, y = _data(10, 5)
    teacher, student = _simple_pair(x)
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        distillation_loss=[
            (tfkd.losses.KD(temperature=3.0), 0.7),
            (tfkd.losses.KD(temperature=2.0), 0.3),
        ],
    )
    assert len(distiller.distillation_losses) == 2
    assert distiller.base_loss_weights == (0.7, 0.3)
    t, s = _logits(teacher, x), _logits(student, x)
    result = _evaluate(distiller, x, y)
    kd = 0.7 * _np_kd(t, s, 3.0).mean() + 0.3 * _np_kd(t, s, 2.0).mean()
    np.testing.assert_allclose(result["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(
        result["student_loss"], _np_ce(s, y).mean(), rtol=1e-5
    )
    _assert_total(result, 0.5)
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert {"loss", "student_loss", "distillation_loss", "accuracy"} <= set(
        history
    )
    _assert_total(history, 0.5)


@pytest.mark.parametrize(
    "entries, error, match",
    [
        (lambda: [], ValueError, "empty list"),
        (lambda: [(tfkd.losses.KD(), -1.0)], ValueError, "loss weight"),
        (lambda: [tfkd.losses.KD(), "kd"], TypeError, "tfkd.losses"),
        (lambda: [(tfkd.losses.KD(), "heavy")], TypeError, "loss weight"),
    ],
    ids=["empty", "negative_weight", "not_a_method", "weight_not_a_number"],
)
def test_multi_distillation_loss_validation(entries, error, match):
    # Mirrors TestDistiller.test_multi_distillation_loss_validation. tfkd
    # pairs each weight with its method in a tuple, so Keras' case (a weights
    # list of the wrong length) cannot be written; malformed entries can.
    _, teacher, student, _, _ = _setup_distiller()
    valid = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[tfkd.losses.KD(3.0), tfkd.losses.KD(2.0)],
    )
    assert len(valid.distillation_losses) == 2
    assert valid.base_loss_weights == (1.0, 1.0)
    with pytest.raises(error, match=match):
        tfkd.Distiller(teacher, student, distillation_loss=entries())


def test_student_loss_weighting():
    # Mirrors TestDistiller.test_student_loss_weighting: alpha 0 trains on
    # the distillation term alone, alpha 1 exactly like the student alone.
    x, y = _data(20, 5)
    teacher, student = _simple_pair(x)
    only_kd = _compiled(
        teacher,
        student,
        alpha=0.0,
        optimizer=keras.optimizers.SGD(0.5),
        distillation_loss=tfkd.losses.KD(temperature=2.0),
    )
    history = only_kd.fit(x, y, epochs=3, batch_size=20, verbose=0).history
    np.testing.assert_allclose(
        history["loss"], history["distillation_loss"], rtol=1e-6
    )
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]

    x, y = _data(20, 5, seed=1)
    teacher, student = _simple_pair(x)
    alone = SimpleModel(hidden_dim=16, name="alone")
    alone(x[:2])
    alone.set_weights(student.get_weights())
    only_labels = _compiled(
        teacher,
        student,
        alpha=1.0,
        optimizer=keras.optimizers.SGD(0.5),
        distillation_loss=tfkd.losses.KD(temperature=2.0),
    )
    alone.compile(keras.optimizers.SGD(0.5), loss=sparse_ce())
    history = only_labels.fit(
        x, y, epochs=2, batch_size=10, shuffle=False, verbose=0
    ).history
    np.testing.assert_allclose(
        history["loss"], history["student_loss"], rtol=1e-6
    )
    alone.fit(x, y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    assert relative_difference(_weights(student), _weights(alone)) < 1e-6


def test_full_training_workflow():
    # Mirrors TestDistiller.test_full_training_workflow.
    x, y = _data(100, 5, seed=42)
    x_val, y_val = _data(20, 5, seed=43)
    teacher, student = _simple_pair(x)
    teacher_before = _weights(teacher)
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        optimizer=keras.optimizers.Adam(0.01),
        distillation_loss=tfkd.losses.KD(temperature=2.0),
    )
    history = distiller.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=3,
        batch_size=16,
        verbose=0,
    ).history
    keys = {"loss", "student_loss", "distillation_loss", "accuracy"}
    assert keys | {"val_" + key for key in keys} <= set(history)
    for key in history:
        assert len(history[key]) == 3
        assert np.all(np.isfinite(history[key]))
    _assert_total(history, 0.5)
    _assert_total(history, 0.5, key="val_")
    assert history["loss"][-1] < history["loss"][0]
    # The last validation pass is an evaluate of the trained student.
    s, t = _logits(student, x_val), _logits(teacher, x_val)
    np.testing.assert_allclose(
        history["val_student_loss"][-1], _np_ce(s, y_val).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        history["val_distillation_loss"][-1],
        _np_kd(t, s, 2.0).mean(),
        rtol=1e-5,
    )
    predictions = distiller.predict(x_val[:5], verbose=0)
    assert predictions.shape == (5, 10)
    np.testing.assert_allclose(predictions, s[:5], rtol=1e-5, atol=1e-6)
    before = _weights(student)
    distiller.fit(x[:10], y[:10], epochs=1, verbose=0)
    assert _changed(before, _weights(student))
    for old, new in zip(teacher_before, _weights(teacher)):
        np.testing.assert_array_equal(old, new)


def test_evaluation_workflow():
    # Mirrors TestDistiller.test_evaluation_workflow: `evaluate` returns a
    # list, here checked value by value against NumPy.
    x, y = _data(30, 5, seed=42)
    teacher, student = _simple_pair(x)
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        optimizer=keras.optimizers.Adam(0.01),
        distillation_loss=tfkd.losses.KD(temperature=2.0),
    )
    distiller.fit(x[:10], y[:10], epochs=1, verbose=0)
    results = distiller.evaluate(x, y, batch_size=30, verbose=0)
    assert isinstance(results, list)
    t, s = _logits(teacher, x), _logits(student, x)
    ce, kd = _np_ce(s, y).mean(), _np_kd(t, s, 2.0).mean()
    expected = {
        "loss": 0.5 * ce + 0.5 * kd,
        "student_loss": ce,
        "distillation_loss": kd,
        "accuracy": _np_accuracy(s, y),
    }
    as_dict = _evaluate(distiller, x, y)
    assert set(as_dict) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(as_dict[key], value, rtol=1e-5)
    assert sorted(results) == pytest.approx(sorted(as_dict.values()))


def test_prediction_workflow():
    # Mirrors TestDistiller.test_prediction_workflow: `predict` works on a
    # distiller that was never compiled, and gives the student's logits.
    x, _ = _data(20, 5, seed=42)
    teacher, student = _simple_pair(x)
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=tfkd.losses.KD(temperature=2.0),
        alpha=0.5,
    )
    predictions = distiller.predict(x, verbose=0)
    assert predictions.shape == (20, 10)
    assert np.all(np.isfinite(predictions))
    np.testing.assert_allclose(predictions, _logits(student, x), rtol=1e-6)


def _serialization_pair():
    """Keras' `test_distiller_serialization_and_saving` models."""
    x, y = _data(32, 20)
    teacher = _sequential("teacher", (32, 16), x)
    student = _sequential("student", (16, 8), x)
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=tfkd.losses.KD(temperature=3.0),
        alpha=0.7,
    )
    return distiller, x, y


def test_distiller_serialization_and_saving(tmp_path):
    # Mirrors TestDistiller.test_distiller_serialization_and_saving (its
    # get_config / JSON / from_config half; the save / load half is
    # test_saved_distiller_reloads_compiled_and_resumes below).
    distiller, x, _ = _serialization_pair()
    assert distiller(x[:2]).shape == (2, 10)
    config = distiller.get_config()
    assert {"teacher", "student", "distillation_loss", "alpha"} <= set(config)
    config = json.loads(json.dumps(config))
    rebuilt = tfkd.Distiller.from_config(config)
    assert isinstance(rebuilt, tfkd.Distiller)
    assert float(rebuilt.alpha.numpy()) == pytest.approx(0.7)
    assert isinstance(rebuilt.distillation_losses[0], tfkd.losses.KD)
    temperature = rebuilt.distillation_losses[0].temperature
    assert float(temperature.numpy()) == 3.0
    assert not rebuilt.teacher.trainable
    assert rebuilt(x[:2]).shape == (2, 10)
    for original, copy in ((distiller, rebuilt), (rebuilt, distiller)):
        assert [layer.name for layer in original.student.layers] == [
            layer.name for layer in copy.student.layers
        ]
    assert rebuilt.student.count_params() == distiller.student.count_params()
    assert rebuilt.teacher.count_params() == distiller.teacher.count_params()


def test_saved_distiller_reloads_compiled_and_resumes(tmp_path):
    # Mirrors TestDistiller.test_distiller_serialization_and_saving (save,
    # `load_model` with its default compile=True); adds equal evaluation and
    # training that resumes from the saved optimizer state.
    distiller, x, y = _serialization_pair()
    distiller.compile(
        keras.optimizers.Adam(0.01), loss=sparse_ce(), metrics=["accuracy"]
    )
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    iterations = int(distiller.optimizer.iterations.numpy())
    assert iterations == 2
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.models.load_model(path)
    # Keras warns when it drops a saved optimizer's state.
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    assert not skipped, skipped
    assert isinstance(restored, tfkd.Distiller)
    assert float(restored.alpha.numpy()) == pytest.approx(0.7)
    temperature = restored.distillation_losses[0].temperature
    assert float(temperature.numpy()) == 3.0
    assert not restored.teacher.trainable
    np.testing.assert_allclose(_logits(restored, x), _logits(distiller, x))
    expected = _evaluate(distiller, x, y)
    result = _evaluate(restored, x, y)
    assert set(result) == set(expected)
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-6)
    assert int(restored.optimizer.iterations.numpy()) == iterations
    # Adam's moments came back: one more epoch matches the original's.
    for model in (distiller, restored):
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert int(restored.optimizer.iterations.numpy()) == iterations + 2
    difference = relative_difference(
        _weights(restored.student), _weights(distiller.student)
    )
    assert difference < 1e-6
    for old, new in zip(
        _weights(distiller.teacher), _weights(restored.teacher)
    ):
        np.testing.assert_array_equal(old, new)


# distillation_loss_test.py :: TestLogitsDistillation, TestFeatureDistillation

# The teacher and student logits of Keras' tests.
_TEACHER_LOGITS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "float32")
_STUDENT_LOGITS = np.array([[2.0, 1.0, 4.0], [3.0, 6.0, 2.0]], "float32")


def _one_output(name, seed=0):
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(
        3,
        name="output",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(inputs)
    return keras.Model(inputs, logits, name=name)


def _two_outputs(name, second="extra", dict_outputs=False):
    """One Dense head `"a"` and a second one, as a list or a dict."""
    inputs = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name=second)(inputs)
    outputs = {"a": a, second: b} if dict_outputs else [a, b]
    return keras.Model(inputs, outputs, name=name)


def test_logits_distillation_basic(legacy):
    # Mirrors TestLogitsDistillation.test_logits_distillation_basic: the KD
    # value on Keras' logits, and an error when the output structures differ.
    # Keras' own mismatch (a tensor against `{"output": tensor}`) is not one
    # in tfkd, which pairs one output with one output whatever its container.
    expected = _np_kd(_TEACHER_LOGITS, _STUDENT_LOGITS, 3.0).mean()
    value = tfkd.losses.kd_loss(
        _TEACHER_LOGITS, _STUDENT_LOGITS, temperature=3.0
    )
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    kd = tfkd.losses.KD(temperature=3.0)
    np.testing.assert_allclose(
        float(kd(_TEACHER_LOGITS, _STUDENT_LOGITS)), expected, rtol=1e-6
    )
    if not legacy:
        # Keras' own term agrees when given a KLDivergence instance (its
        # default, the string "kl_divergence", skips the softmax and T^2).
        keras_kd = keras.distillation.LogitsDistillation(
            temperature=3.0, loss=keras.losses.KLDivergence()
        )
        keras_value = keras_kd.compute_loss(_TEACHER_LOGITS, _STUDENT_LOGITS)
        np.testing.assert_allclose(float(keras_value), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="mismatched_student"):
        tfkd.Distiller(
            _one_output("teacher"), _two_outputs("mismatched_student")
        )
    with pytest.raises(ValueError, match="'c'"):
        tfkd.Distiller(
            _two_outputs("teacher", "b", dict_outputs=True),
            _two_outputs("mismatched_student", "c", dict_outputs=True),
        )


def test_feature_distillation_basic():
    # Mirrors TestFeatureDistillation.test_feature_distillation_basic:
    # Keras' `FeatureDistillation(loss="mse")` without layer names is
    # `tfkd.losses.FitNets()`, the MSE of the final outputs; checked on Keras'
    # features, then in a Distiller, then with a structure mismatch.
    teacher_features = _TEACHER_LOGITS
    student_features = teacher_features + 0.1
    expected = _np_mse(teacher_features, student_features).mean()
    np.testing.assert_allclose(expected, 0.01, rtol=1e-5)
    np.testing.assert_allclose(
        float(tfkd.losses.hint_loss(teacher_features, student_features)),
        expected,
        rtol=1e-5,
    )
    fitnets = tfkd.losses.FitNets()
    assert fitnets.teacher_layer is None and fitnets.student_layer is None
    np.testing.assert_allclose(
        float(fitnets(teacher_features, student_features)), expected, rtol=1e-5
    )

    x, y = _data(16, 4, classes=3)
    teacher, student = _one_output("teacher", 1), _one_output("student", 2)
    distiller = tfkd.Distiller(
        teacher, student, distillation_loss=tfkd.losses.FitNets(), alpha=0.5
    )
    distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
    result = _evaluate(distiller, x, y)
    t, s = _logits(teacher, x), _logits(student, x)
    np.testing.assert_allclose(
        result["distillation_loss"], _np_mse(t, s).mean(), rtol=1e-5
    )
    _assert_total(result, 0.5)
    with pytest.raises(ValueError, match="mismatched_student"):
        tfkd.Distiller(
            teacher,
            _two_outputs("mismatched_student"),
            distillation_loss=tfkd.losses.FitNets(),
        )


# distillation_loss_test.py :: TestEndToEndDistillation


def _end_to_end_setup():
    """Keras' `TestEndToEndDistillation.setUp`: two 32-16-10 Sequentials."""
    x, y = _data(32, 20)
    return (
        _sequential("teacher", (32, 16), x),
        _sequential("student", (32, 16), x),
        x,
        y,
    )


def test_logits_distillation_end_to_end():
    # Mirrors TestEndToEndDistillation.test_logits_distillation_end_to_end.
    teacher, student, x, y = _end_to_end_setup()
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        distillation_loss=tfkd.losses.KD(temperature=3.0),
    )
    t, s = _logits(teacher, x), _logits(student, x)
    history = distiller.fit(
        x, y, epochs=2, batch_size=32, shuffle=False, verbose=0
    ).history
    # The first step's logs are the untrained student's losses.
    np.testing.assert_allclose(
        history["student_loss"][0], _np_ce(s, y).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        history["distillation_loss"][0], _np_kd(t, s, 3.0).mean(), rtol=1e-5
    )
    _assert_total(history, 0.5)
    assert np.isfinite(history["loss"][-1]) and history["loss"][-1] > 0
    predictions = distiller.predict(x[:5], verbose=0)
    assert predictions.shape == (5, 10)
    assert isinstance(distiller.student, keras.Model)
    assert distiller.student is student


def test_feature_distillation_end_to_end():
    # Mirrors TestEndToEndDistillation.test_feature_distillation_end_to_end:
    # Keras counts its feature extractors' outputs; tfkd taps one teacher
    # layer, and the FitNets term equals NumPy's MSE of the two layers.
    teacher, student, x, y = _end_to_end_setup()
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        distillation_loss=tfkd.losses.FitNets(
            "teacher_dense_1", "student_dense_1"
        ),
    )
    assert distiller.teacher_taps == ["teacher_dense_1"]
    assert distiller.adapters == [None]  # equal widths: no regressor
    mse = _np_mse(
        _features(teacher, "teacher_dense_1", x),
        _features(student, "student_dense_1", x),
    ).mean()
    result = _evaluate(distiller, x, y)
    np.testing.assert_allclose(result["distillation_loss"], mse, rtol=1e-5)
    _assert_total(result, 0.5)
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert {"loss", "student_loss", "distillation_loss", "accuracy"} <= set(
        history
    )
    _assert_total(history, 0.5)


def test_multi_distillation_loss_distillation_end_to_end():
    # Mirrors TestEndToEndDistillation
    # .test_multi_distillation_loss_distillation_end_to_end: KD + two FitNets
    # terms weighted 1.0, 0.5, 0.3; Keras only checks the losses are finite,
    # here the term matches NumPy and the loss goes down.
    teacher, student, x, y = _end_to_end_setup()
    distiller = _compiled(
        teacher,
        student,
        alpha=0.5,
        optimizer=keras.optimizers.Adam(0.01),
        distillation_loss=[
            (tfkd.losses.KD(temperature=3.0), 1.0),
            (tfkd.losses.FitNets("teacher_dense_1", "student_dense_1"), 0.5),
            (tfkd.losses.FitNets("teacher_dense_2", "student_dense_2"), 0.3),
        ],
    )
    assert distiller.teacher_taps == ["teacher_dense_1", "teacher_dense_2"]
    t, s = _logits(teacher, x), _logits(student, x)
    expected = _np_kd(t, s, 3.0).mean()
    for layer, weight in (("dense_1", 0.5), ("dense_2", 0.3)):
        expected += weight * (
            _np_mse(
                _features(teacher, f"teacher_{layer}", x),
                _features(student, f"student_{layer}", x),
            ).mean()
        )
    result = _evaluate(distiller, x, y)
    np.testing.assert_allclose(result["distillation_loss"], expected, rtol=1e-5)
    _assert_total(result, 0.5)
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    _assert_total(history, 0.5)
    assert history["loss"][-1] < history["loss"][0]


# Multi-output models. Keras' `LogitsDistillation` and `FeatureDistillation`
# take a nested structure of losses, one per output (`None` skips one), but
# its tests never train a multi-output model; these do, with tfkd's API.


def _two_heads(name, width, *, dict_outputs=False, seed=0):
    """`x (8) -> hidden (width) -> a (3 classes), b (4 classes)` logits."""

    def init(offset):
        return keras.initializers.GlorotUniform(seed=seed + offset)

    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        width, activation="relu", kernel_initializer=init(0), name="hidden"
    )(inputs)
    a = keras.layers.Dense(3, kernel_initializer=init(1), name="a")(hidden)
    b = keras.layers.Dense(4, kernel_initializer=init(2), name="b")(hidden)
    outputs = {"a": a, "b": b} if dict_outputs else [a, b]
    return keras.Model(inputs, outputs, name=name)


def _two_head_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = (2.0 * rng.normal(size=(n, 8))).astype("float32")
    return x, rng.integers(0, 3, size=n), rng.integers(0, 4, size=n)


def _two_head_pair(dict_outputs=False):
    teacher = _two_heads("teacher", 16, dict_outputs=dict_outputs, seed=10)
    student = _two_heads("student", 4, dict_outputs=dict_outputs, seed=20)
    return teacher, student


def _heads(model, x):
    """`(a_logits, b_logits)` of a list- or dict-output model."""
    outputs = _logits(model, x)
    if isinstance(outputs, dict):
        return outputs["a"], outputs["b"]
    return tuple(outputs)


def test_multi_output_total_matches_numpy():
    # The total of a 2-output model: each output's weighted methods (here one
    # tuple on `a`, a list of a method and a tuple on `b`) summed, and each
    # output's hard-label loss summed, as Keras sums multi-output losses.
    teacher, student = _two_head_pair()
    x, ya, yb = _two_head_data()
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[
            (tfkd.losses.KD(temperature=2.0), 0.5),
            [tfkd.losses.KD(temperature=4.0), (tfkd.losses.KD(1.0), 0.25)],
        ],
        alpha=0.3,
    )
    distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
    ta, tb = _heads(teacher, x)
    sa, sb = _heads(student, x)
    student_term = _np_ce(sa, ya).mean() + _np_ce(sb, yb).mean()
    distillation_term = 0.5 * _np_kd(ta, sa, 2.0).mean()
    distillation_term += _np_kd(tb, sb, 4.0).mean()
    distillation_term += 0.25 * _np_kd(tb, sb, 1.0).mean()
    result = _evaluate(distiller, x, [ya, yb])
    np.testing.assert_allclose(result["student_loss"], student_term, rtol=1e-5)
    np.testing.assert_allclose(
        result["distillation_loss"], distillation_term, rtol=1e-5
    )
    np.testing.assert_allclose(
        result["loss"], 0.3 * student_term + 0.7 * distillation_term, rtol=1e-5
    )
    teacher_before = _weights(teacher)
    student_before = _weights(student)
    history = distiller.fit(
        x, [ya, yb], epochs=3, batch_size=8, verbose=0
    ).history
    _assert_total(history, 0.3)
    assert history["loss"][-1] < history["loss"][0]
    assert _changed(student_before, _weights(student))
    for old, new in zip(teacher_before, _weights(teacher)):
        np.testing.assert_array_equal(old, new)
    predictions = distiller.predict(x[:5], verbose=0)
    assert [p.shape for p in predictions] == [(5, 3), (5, 4)]


@pytest.mark.parametrize(
    "distillation_loss, temperature",
    [(lambda: None, 3.0), (lambda: tfkd.losses.KD(temperature=3.0), None)],
    ids=["default", "one_method"],
)
def test_multi_output_one_method_applies_to_every_output(
    distillation_loss, temperature
):
    # `distillation_loss=None` (KD) or a single method: the same term on
    # every output, summed.
    teacher, student = _two_head_pair()
    x, ya, yb = _two_head_data()
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=distillation_loss(),
        temperature=temperature,
        alpha=0.5,
    )
    distiller.compile("sgd", loss=sparse_ce())
    (ta, tb), (sa, sb) = _heads(teacher, x), _heads(student, x)
    result = _evaluate(distiller, x, [ya, yb])
    expected = _np_kd(ta, sa, 3.0).mean() + _np_kd(tb, sb, 3.0).mean()
    np.testing.assert_allclose(result["distillation_loss"], expected, rtol=1e-5)
    _assert_total(result, 0.5)


def test_multi_output_none_skips_an_output():
    # Keras' `LogitsDistillation(loss=["kl_divergence", None])` and
    # `compile(loss=[..., None])`: `None` leaves an output out of a term.
    teacher, student = _two_head_pair()
    x, ya, yb = _two_head_data()
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[None, tfkd.losses.KD(temperature=2.0)],
        alpha=0.5,
    )
    distiller.compile("sgd", loss=[sparse_ce(), None])
    (_, tb), (sa, sb) = _heads(teacher, x), _heads(student, x)
    result = _evaluate(distiller, x, [ya, yb])
    np.testing.assert_allclose(
        result["distillation_loss"], _np_kd(tb, sb, 2.0).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        result["student_loss"], _np_ce(sa, ya).mean(), rtol=1e-5
    )
    _assert_total(result, 0.5)


def test_multi_output_dict_losses_and_metrics_per_output():
    # Dict outputs: a `{output_name: entry}` distillation loss, and `compile`
    # losses and metrics per output, named as Keras names them on the student
    # alone.
    teacher, student = _two_head_pair(dict_outputs=True)
    x, ya, yb = _two_head_data()
    y = {"a": ya, "b": yb}
    reference = keras.models.clone_model(student)
    reference.set_weights(student.get_weights())
    losses = {
        "a": sparse_ce(),
        "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    metrics = {"a": ["accuracy"], "b": ["accuracy"]}
    reference.compile("sgd", loss=losses, metrics=metrics)
    expected = _evaluate(reference, x, y)
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss={
            "a": tfkd.losses.KD(temperature=2.0),
            "b": (tfkd.losses.KD(temperature=4.0), 0.5),
        },
        alpha=0.4,
    )
    distiller.compile(
        "sgd",
        loss={"a": sparse_ce(), "b": sparse_ce()},
        metrics={"a": ["accuracy"], "b": ["accuracy"]},
    )
    result = _evaluate(distiller, x, y)
    (ta, tb), (sa, sb) = _heads(teacher, x), _heads(student, x)
    kd = _np_kd(ta, sa, 2.0).mean() + 0.5 * _np_kd(tb, sb, 4.0).mean()
    np.testing.assert_allclose(result["distillation_loss"], kd, rtol=1e-5)
    # Keras' own total for the student alone: the sum over outputs.
    np.testing.assert_allclose(
        result["student_loss"], expected["loss"], rtol=1e-5
    )
    _assert_total(result, 0.4)
    metric_names = {key for key in expected if not key.endswith("loss")}
    assert metric_names == {"a_accuracy", "b_accuracy"}
    assert metric_names <= set(result)
    np.testing.assert_allclose(result["a_accuracy"], _np_accuracy(sa, ya))
    np.testing.assert_allclose(result["b_accuracy"], _np_accuracy(sb, yb))
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    _assert_total(history, 0.4)
    predictions = distiller.predict(x[:5], verbose=0)
    assert {key: v.shape for key, v in predictions.items()} == {
        "a": (5, 3),
        "b": (5, 4),
    }


def test_multi_output_list_metrics_are_named_as_in_keras():
    # `metrics` as a list of lists, one per output, logged under the names
    # Keras gives them when the student is compiled alone.
    teacher, student = _two_head_pair()
    x, ya, yb = _two_head_data()
    reference = keras.models.clone_model(student)
    reference.set_weights(student.get_weights())
    reference.compile(
        "sgd",
        loss=[sparse_ce(), sparse_ce()],
        metrics=[["accuracy"], ["accuracy"]],
    )
    expected = _evaluate(reference, x, [ya, yb])
    distiller = tfkd.Distiller(teacher, student, alpha=0.5)
    distiller.compile(
        "sgd",
        loss=[sparse_ce(), sparse_ce()],
        metrics=[["accuracy"], ["accuracy"]],
    )
    result = _evaluate(distiller, x, [ya, yb])
    for key in expected:
        if not key.endswith("loss"):
            np.testing.assert_allclose(result[key], expected[key], rtol=1e-6)
    np.testing.assert_allclose(
        result["student_loss"], expected["loss"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "dict_outputs, entries",
    [
        (False, lambda: [tfkd.losses.KD(), tfkd.losses.KD(), None]),
        (True, lambda: {"a": tfkd.losses.KD(), "c": tfkd.losses.KD()}),
        (False, lambda: [None, None]),
    ],
    ids=["three_for_two", "unknown_name", "all_skipped"],
)
def test_multi_output_entries_must_match_the_outputs(dict_outputs, entries):
    # Keras' `FeatureDistillation.validate_outputs` "Loss structure mismatch"
    # and "at least one non-None" checks: per-output entries must name the
    # model's outputs, and leave at least one term.
    teacher, student = _two_head_pair(dict_outputs=dict_outputs)
    with pytest.raises(ValueError, match="output"):
        tfkd.Distiller(teacher, student, distillation_loss=entries())
