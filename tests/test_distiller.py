"""The Distiller's contract: losses, frozen teacher, data forms, errors,
saving."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_cnn
from conftest import make_mlp
from conftest import relative_difference
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd._keras import keras


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_losses(teacher_logits, student_logits, y, temperature, weights=None):
    """Independent per-example KD and cross-entropy, in float64."""
    t = teacher_logits.astype("float64") / temperature
    s = student_logits.astype("float64") / temperature
    pt = np.exp(_np_log_softmax(t))
    kd = (pt * (_np_log_softmax(t) - _np_log_softmax(s))).sum(-1)
    kd *= temperature**2
    ce = -_np_log_softmax(student_logits.astype("float64"))[
        np.arange(len(y)), y
    ]
    if weights is None:
        weights = np.ones(len(y))
    return (ce * weights).mean(), (kd * weights).mean()


def _trained_teacher(x, y, epochs=5):
    teacher = make_mlp(32, name="teacher", seed=10)
    teacher.compile("adam", sparse_ce())
    teacher.fit(x, y, epochs=epochs, verbose=0)
    return teacher


def _distiller(alpha=0.3, temperature=3.0, **kwargs):
    x, y = toy_classification()
    teacher = _trained_teacher(x, y)
    student = make_mlp(4, name="student", seed=20)
    distiller = tfkd.Distiller(
        teacher, student, alpha=alpha, temperature=temperature, **kwargs
    )
    distiller.compile(
        keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"]
    )
    return distiller, x, y


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_evaluate_matches_numpy_formula():
    distiller, x, y = _distiller(alpha=0.3, temperature=3.0)
    result = distiller.evaluate(
        x, y, batch_size=32, return_dict=True, verbose=0
    )
    t = distiller.teacher.predict(x, verbose=0)
    s = distiller.student.predict(x, verbose=0)
    ce, kd = _np_losses(t, s, y, temperature=3.0)
    np.testing.assert_allclose(result["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(result["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"], 0.3 * ce + 0.7 * kd, rtol=1e-5, atol=1e-7
    )
    accuracy = np.mean(np.argmax(s, axis=1) == y)
    np.testing.assert_allclose(result["accuracy"], accuracy, rtol=1e-6)


def _np_pearson(a, b, axis):
    a = a - a.mean(axis, keepdims=True)
    b = b - b.mean(axis, keepdims=True)
    return (a * b).sum(axis) / (
        np.sqrt((a * a).sum(axis) * (b * b).sum(axis)) + 1e-8
    )


def _np_dist(teacher_logits, student_logits):
    """DIST at T=1, beta=gamma=1 (Huang et al. 2022, official code)."""
    t = np.exp(_np_log_softmax(teacher_logits.astype("float64")))
    s = np.exp(_np_log_softmax(student_logits.astype("float64")))
    inter = 1 - _np_pearson(s, t, axis=1).mean()
    intra = 1 - _np_pearson(s, t, axis=0).mean()
    return inter + intra


def test_default_method_is_dist_and_temperature_asks_for_hinton_kd():
    """`Distiller(teacher, student)`: alpha 0.1 and DIST, the defaults that
    benchmarks/defaults.py chose; `temperature=` gives Hinton KD."""
    x, y = toy_classification()
    teacher = _trained_teacher(x, y)
    student = make_mlp(4, name="student", seed=20)
    t = teacher.predict(x, verbose=0)
    s = student.predict(x, verbose=0)
    ce, hinton = _np_losses(t, s, y, temperature=2.0)
    for kwargs, kd in (
        ({}, _np_dist(t, s)),  # one batch: DIST relates all examples
        ({"temperature": 2.0}, hinton),
    ):
        distiller = tfkd.Distiller(teacher, student, **kwargs)
        distiller.compile("sgd", loss=sparse_ce())
        result = distiller.evaluate(
            x, y, batch_size=len(x), return_dict=True, verbose=0
        )
        np.testing.assert_allclose(result["distillation_loss"], kd, rtol=1e-5)
        np.testing.assert_allclose(
            result["loss"], 0.1 * ce + 0.9 * kd, rtol=1e-5
        )
    default = tfkd.Distiller(teacher, student)
    assert isinstance(default.distillation_losses[0], tfkd.losses.DIST)
    assert default.base_alpha == 0.1


def test_default_on_a_one_logit_head_is_a_sigmoid_kd():
    x, y = toy_classification()
    teacher = make_mlp(8, name="teacher", classes=1)
    for kwargs, temperature in (({}, 4.0), ({"temperature": 2.0}, 2.0)):
        distiller = tfkd.Distiller(teacher, make_mlp(4, classes=1), **kwargs)
        (method,) = distiller.distillation_losses
        assert isinstance(method, tfkd.losses.KD)
        assert method.activation == "sigmoid"
        assert float(method.temperature) == temperature
        distiller.compile("sgd", loss="binary_crossentropy")
        labels = (y % 2).reshape(-1, 1).astype("float32")
        logs = distiller.evaluate(x, labels, return_dict=True, verbose=0)
        assert logs["distillation_loss"] > 0


def test_fit_history_reports_all_terms_and_validation():
    distiller, x, y = _distiller()
    history = distiller.fit(
        x, y, validation_data=(x, y), epochs=2, batch_size=32, verbose=0
    )
    expected = {"loss", "student_loss", "distillation_loss", "accuracy"}
    expected |= {"val_" + key for key in expected}
    assert expected <= set(history.history)
    losses = history.history
    for epoch in range(2):
        total = 0.3 * losses["student_loss"][epoch]
        total += 0.7 * losses["distillation_loss"][epoch]
        np.testing.assert_allclose(losses["loss"][epoch], total, rtol=1e-5)
    assert losses["loss"][1] < losses["loss"][0]


def test_sample_weights_weigh_both_terms():
    distiller, x, y = _distiller(alpha=0.5, temperature=2.0)
    weights = np.random.default_rng(1).uniform(0, 2, size=len(x))
    result = distiller.evaluate(
        x,
        y,
        sample_weight=weights,
        batch_size=len(x),
        return_dict=True,
        verbose=0,
    )
    t = distiller.teacher.predict(x, verbose=0)
    s = distiller.student.predict(x, verbose=0)
    ce, kd = _np_losses(t, s, y, temperature=2.0, weights=weights)
    np.testing.assert_allclose(result["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(result["distillation_loss"], kd, rtol=1e-5)


def test_zero_sample_weights_remove_examples_from_training():
    x, y = toy_classification(n=64)
    teacher = _trained_teacher(x, y, epochs=2)
    weights = np.array([1.0, 0.0] * 32)
    runs = []
    for keep_all in (False, True):
        keras.utils.set_random_seed(0)
        student = make_mlp(4, name="student", seed=20)
        distiller = tfkd.Distiller(teacher, student, alpha=0.5)
        distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
        if keep_all:  # the kept half alone, with the loss halved
            distiller.fit(
                x[::2],
                y[::2],
                batch_size=32,
                epochs=1,
                sample_weight=np.full(32, 0.5),
                verbose=0,
            )
        else:
            distiller.fit(
                x,
                y,
                sample_weight=weights,
                batch_size=64,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
        runs.append(_weights(student))
    assert relative_difference(runs[0], runs[1]) < 1e-6


def test_teacher_frozen_weights_and_batchnorm_statistics():
    x, y = toy_images(n=64)
    teacher = make_cnn(8, name="teacher", batch_norm=True, seed=1)
    teacher.compile("adam", sparse_ce())
    teacher.fit(x, y, epochs=1, verbose=0)
    student = make_cnn(4, name="student", batch_norm=True, seed=2)
    before = _weights(teacher)
    moving_mean = teacher.get_layer("bn").moving_mean
    mean_before = np.array(moving_mean)
    distiller = tfkd.Distiller(teacher, student)
    distiller.compile("adam", loss=sparse_ce())
    assert not teacher.trainable
    student_ids = {id(v) for v in student.trainable_weights}
    assert {id(v) for v in distiller.trainable_weights} == student_ids
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for old, new in zip(before, _weights(teacher)):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(np.array(moving_mean), mean_before)


def test_predict_and_call_are_the_students():
    distiller, x, _ = _distiller()
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0),
        distiller.student.predict(x, verbose=0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        distiller(x[:4]), distiller.student(x[:4]), rtol=1e-6
    )


def test_tf_data_and_numpy_give_the_same_result():
    results = []
    for use_dataset in (False, True):
        distiller, x, y = _distiller()
        if use_dataset:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
            distiller.fit(data, epochs=1, verbose=0)
        else:
            distiller.fit(
                x, y, batch_size=32, epochs=1, shuffle=False, verbose=0
            )
        results.append(_weights(distiller.student))
    assert relative_difference(results[0], results[1]) < 1e-6


def test_unlabelled_transfer_set_pure_distillation():
    x, y = toy_classification()
    teacher = _trained_teacher(x, y)
    student = make_mlp(4, name="student", seed=20)
    distiller = tfkd.Distiller(teacher, student, alpha=0.0)
    distiller.compile(keras.optimizers.SGD(0.5))
    history = distiller.fit(
        tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=3, verbose=0
    )
    kd = history.history["distillation_loss"]
    assert kd[-1] < kd[0]
    assert history.history["student_loss"] == [0.0] * 3
    np.testing.assert_allclose(history.history["loss"], kd, rtol=1e-6)


def test_labels_missing_is_a_clear_error():
    distiller, x, _ = _distiller()
    with pytest.raises(ValueError, match="no labels"):
        distiller.fit(
            tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=1, verbose=0
        )


def test_alpha_without_loss_is_a_clear_error():
    x, y = toy_classification()
    distiller = tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), alpha=0.5)
    with pytest.raises(ValueError, match="alpha=0.5.*no `loss`"):
        distiller.compile("adam")


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        tfkd.Distiller(
            make_mlp(8, name="t"), make_mlp(4), temperature=temperature
        )


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), alpha=alpha)


def test_output_shape_mismatch_names_both_models():
    teacher = make_mlp(8, classes=5, name="big_teacher")
    student = make_mlp(4, classes=3, name="small_student")
    with pytest.raises(
        ValueError, match=r"big_teacher.*5\).*small_student.*3\)"
    ):
        tfkd.Distiller(teacher, student)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_softmax_outputs_are_refused_with_advice(role):
    inputs = keras.Input((8,))
    probs = keras.layers.Dense(3, activation="softmax")(inputs)
    softmax_model = keras.Model(inputs, probs, name="probs_model")
    models = {"teacher": make_mlp(8, name="t"), "student": make_mlp(4)}
    models[role] = softmax_model
    with pytest.raises(ValueError, match=f"{role} model 'probs_model'.*logits"):
        tfkd.Distiller(**models)


def test_student_loss_validation():
    distiller = tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4))
    with pytest.raises(ValueError, match="from_logits=True"):
        distiller.compile(
            "adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        )
    # Regression losses ("mse", ...) are known since issue 22.
    with pytest.raises(ValueError, match="Unknown student loss 'hinge'.*'mse'"):
        distiller.compile("adam", loss="hinge")
    with pytest.raises(ValueError, match="loss_weights"):
        distiller.compile("adam", loss=sparse_ce(), loss_weights=[1.0])


def test_string_student_loss_is_taken_from_logits():
    distiller, x, y = _distiller()
    expected = distiller.evaluate(x, y, return_dict=True, verbose=0)
    distiller.compile("sgd", loss="sparse_categorical_crossentropy")
    result = distiller.evaluate(x, y, return_dict=True, verbose=0)
    np.testing.assert_allclose(
        result["student_loss"], expected["student_loss"], rtol=1e-6
    )


def test_temperature_belongs_to_the_method_when_one_is_given():
    with pytest.raises(ValueError, match="KD\\(temperature=4.0\\)"):
        tfkd.Distiller(
            make_mlp(8, name="t"),
            make_mlp(4),
            distillation_loss=tfkd.losses.KD(),
            temperature=2.0,
        )


def test_models_of_the_wrong_type_are_refused():
    with pytest.raises(TypeError, match="`student` must be"):
        tfkd.Distiller(make_mlp(8, name="t"), student="not a model")


def test_jit_compile_matches_graph_mode():
    results = []
    for jit in (False, True):
        distiller, x, y = _distiller()
        distiller.compile(
            keras.optimizers.SGD(0.1), loss=sparse_ce(), jit_compile=jit
        )
        distiller.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        results.append(_weights(distiller.student))
    assert relative_difference(results[1], results[0]) < 1e-5


def test_student_saves_alone_in_native_format(tmp_path):
    distiller, x, y = _distiller()
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "student.keras")
    distiller.student.save(path)
    restored = keras.models.load_model(path)
    assert restored.count_params() == distiller.student.count_params()
    assert restored.count_params() < distiller.teacher.count_params()
    np.testing.assert_allclose(
        restored.predict(x, verbose=0),
        distiller.student.predict(x, verbose=0),
        rtol=1e-6,
    )


def test_model_checkpoint_and_weights_round_trip(tmp_path):
    distiller, x, y = _distiller()
    path = str(tmp_path / "distiller.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    distiller.fit(x, y, epochs=1, callbacks=[checkpoint], verbose=0)
    fresh, _, _ = _distiller()
    fresh.load_weights(path)
    np.testing.assert_allclose(
        fresh.student.predict(x, verbose=0),
        distiller.student.predict(x, verbose=0),
        rtol=1e-6,
    )


class _Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("simulated crash")


def test_backup_and_restore_resumes_to_the_same_student(tmp_path):
    def run(callbacks):
        keras.utils.set_random_seed(0)
        distiller, x, y = _distiller()
        distiller.compile(keras.optimizers.Adam(0.01), loss=sparse_ce())
        distiller.fit(
            x,
            y,
            batch_size=32,
            epochs=4,
            shuffle=False,
            callbacks=callbacks,
            verbose=0,
        )
        return _weights(distiller.student)

    uninterrupted = run([])
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run([keras.callbacks.BackupAndRestore(backup), _Crash()])
    resumed = run([keras.callbacks.BackupAndRestore(backup)])
    assert relative_difference(resumed, uninterrupted) < 1e-6


def test_whole_distiller_saves_and_loads(tmp_path):
    distiller, x, y = _distiller()
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.models.load_model(path, compile=False)
    assert isinstance(restored, tfkd.Distiller)
    np.testing.assert_allclose(float(restored.alpha.numpy()), 0.3)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0),
        distiller.predict(x, verbose=0),
        rtol=1e-6,
    )


def test_feature_taps_build_one_forward_model():
    x, y = toy_images(n=32)
    teacher = make_cnn(8, name="teacher", seed=1)
    student = make_cnn(4, name="student", seed=2)

    class Probe(tfkd.losses.DistillationLoss):
        requires_matching_width = True

        def compute(self, teacher, student, labels=None):
            return tf.reduce_mean(tf.square(teacher - student), axis=[1, 2, 3])

    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[
            tfkd.losses.KD(),
            (Probe(teacher_layer="features", student_layer="features"), 0.5),
        ],
    )
    adapter = distiller.adapters[1]
    assert distiller.adapters[0] is None
    assert adapter is not None and adapter.kernel.shape == (1, 1, 4, 8)
    distiller.compile("adam", loss=sparse_ce())
    trainable = {id(v) for v in distiller.trainable_weights}
    expected = {id(v) for v in student.trainable_weights}
    expected |= {id(v) for v in adapter.trainable_weights}
    assert trainable == expected
    before = np.array(adapter.kernel)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.allclose(before, np.array(adapter.kernel))
    student_ids = {id(v) for v in student.weights}
    assert not {id(v) for v in adapter.weights} & student_ids


def test_unknown_tapped_layer_lists_the_layers():
    teacher = make_cnn(8, name="teacher")

    class Probe(tfkd.losses.DistillationLoss):
        def compute(self, teacher, student, labels=None):
            return tf.zeros(tf.shape(teacher)[:1])

    with pytest.raises(ValueError, match="no layer named 'nope'.*'features'"):
        tfkd.Distiller(
            teacher,
            make_cnn(4),
            distillation_loss=Probe(
                teacher_layer="nope", student_layer="features"
            ),
        )


def test_student_is_compiled_to_evaluate_on_its_own():
    distiller, x, y = _distiller()
    distiller.fit(x, y, epochs=1, verbose=0)
    own = distiller.evaluate(x, y, return_dict=True, verbose=0)
    alone = distiller.student.evaluate(x, y, return_dict=True, verbose=0)
    np.testing.assert_allclose(alone["accuracy"], own["accuracy"])
    np.testing.assert_allclose(alone["loss"], own["student_loss"], rtol=1e-5)
    assert distiller.student.optimizer is not distiller.optimizer
