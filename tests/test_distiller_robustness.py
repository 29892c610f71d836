"""The Distiller on users' own models: the right result or a clear error.

Each case here was silently wrong, or failed with an unhelpful error, before
issue 11 (save/resume, binary heads, masks, probabilities, unlabelled data,
multi-output models, mis-fed inputs).
"""

import functools
import json
import logging
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import METHODS
from conftest import REPO_ROOT
from conftest import make_cnn
from conftest import make_mlp
from conftest import mirrored_strategy
from conftest import relative_difference
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd import _loss_scale
from tfkd._keras import IS_LEGACY
from tfkd._keras import keras


def _teacher_student(classes=3, features=8):
    teacher = make_mlp(16, classes=classes, features=features, name="t", seed=1)
    student = make_mlp(4, classes=classes, features=features, name="s", seed=2)
    return teacher, student


# 1. Save, load, resume.


def test_reloaded_distiller_evaluates_and_resumes_with_optimizer_state(
    tmp_path,
):
    x, y = toy_classification()
    teacher, student = _teacher_student()
    distiller = tfkd.Distiller(teacher, student, alpha=0.3)
    distiller.compile(
        keras.optimizers.Adam(0.01), loss=sparse_ce(), metrics=["accuracy"]
    )
    distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)

    restored = keras.models.load_model(path)  # compile=True, as users do.
    assert isinstance(restored, tfkd.Distiller)
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = restored.evaluate(x, y, verbose=0, return_dict=True)
    assert set(got) == set(expected)
    assert got["student_loss"] > 0
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)
    assert int(restored.optimizer.iterations.numpy()) == 8
    # Adam's moments came back: one more step from the restored Distiller
    # equals one more step from the original.
    restored.fit(x, y, epochs=1, batch_size=32, verbose=0)
    distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert int(restored.optimizer.iterations.numpy()) == 12
    assert (
        relative_difference(
            restored.student.get_weights(), distiller.student.get_weights()
        )
        < 1e-5
    )


# 2. Binary and multi-label heads.


def _np_bernoulli_kd(t, s, temperature):
    p = 1 / (1 + np.exp(-t.astype("float64") / temperature))
    q = 1 / (1 + np.exp(-s.astype("float64") / temperature))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    return temperature**2 * kl.mean(-1)


def test_one_logit_head_distils_with_the_bernoulli_kl():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")[:, None]
    teacher, student = _teacher_student(classes=1)
    distiller = tfkd.Distiller(teacher, student, alpha=0.5, temperature=2.0)
    distiller.compile("sgd", loss="binary_crossentropy")
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    t = teacher.predict(x, verbose=0)
    s = student.predict(x, verbose=0)
    expected = _np_bernoulli_kd(t, s, 2.0).mean()
    assert expected > 1e-4
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)


def test_binary_loss_makes_the_default_kd_a_sigmoid_kd_for_multi_label():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = (rng.uniform(size=(32, 3)) > 0.5).astype("float32")
    teacher, student = _teacher_student(classes=3)
    distiller = tfkd.Distiller(teacher, student, alpha=0.0)
    distiller.compile(
        "sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True)
    )
    method = distiller.distillation_losses[0]
    assert method.activation == "sigmoid" and not method.standardize
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    expected = _np_bernoulli_kd(  # at T=4, as in tfkd 0.1
        teacher.predict(x, verbose=0), student.predict(x, verbose=0), 4.0
    ).mean()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)


def test_softmax_kd_on_one_logit_is_an_error():
    teacher, student = _teacher_student(classes=1)
    with pytest.raises(ValueError, match="one logit.*activation='sigmoid'"):
        tfkd.Distiller(teacher, student, distillation_loss=tfkd.losses.KD())


# 3. Sequence logits with a per-position mask.


def _sequence_model(name, units, seed):
    inputs = keras.Input((5, 4))
    x = keras.layers.Dense(
        units, kernel_initializer=keras.initializers.GlorotUniform(seed)
    )(inputs)
    logits = keras.layers.Dense(
        6, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(x)
    return keras.Model(inputs, logits, name=name)


def _np_kd(t, s, temperature):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    t = t.astype("float64") / temperature
    s = s.astype("float64") / temperature
    return temperature**2 * (
        np.exp(log_softmax(t)) * (log_softmax(t) - log_softmax(s))
    ).sum(-1)


def _sequence_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 5, 4)).astype("float32")
    y = rng.integers(0, 6, size=(8, 5)).astype("int32")
    lengths = rng.integers(1, 6, size=8)
    mask = (np.arange(5)[None] < lengths[:, None]).astype("float32")
    return x, y, mask


def _expected_sequence_losses(teacher, student, x, y, mask, temperature):
    t = teacher.predict(x, verbose=0)
    s = student.predict(x, verbose=0)
    kd = _np_kd(t, s, temperature)
    s64 = s.astype("float64")
    log_probs = s64 - s64.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    # Keras' convention: weighted sum over the number of entries.
    return (ce * mask).sum() / mask.size, (kd * mask).sum() / mask.size


def test_per_position_sample_weights_mask_padding():
    x, y, mask = _sequence_data()
    teacher = _sequence_model("t", 8, 3)
    student = _sequence_model("s", 3, 5)
    distiller = tfkd.Distiller(teacher, student, alpha=0.4, temperature=2.0)
    distiller.compile("sgd", loss=sparse_ce())
    logs = distiller.evaluate(
        x, y, sample_weight=mask, batch_size=8, verbose=0, return_dict=True
    )
    ce, kd = _expected_sequence_losses(teacher, student, x, y, mask, 2.0)
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.4 * ce + 0.6 * kd, rtol=1e-5)


def test_per_position_sample_weights_train_alike_on_two_replicas():
    x, y, mask = _sequence_data()

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            teacher = _sequence_model("t", 8, 3)
            student = _sequence_model("s", 3, 5)
            distiller = tfkd.Distiller(teacher, student, alpha=0.4)
            distiller.compile(keras.optimizers.SGD(0.5), loss=sparse_ce())
        data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(8)
        distiller.fit(data, epochs=3, verbose=0)
        return student.get_weights()

    one = train(tf.distribute.get_strategy())
    two = train(mirrored_strategy())
    assert relative_difference(two, one) < 1e-5


# 7. Probabilities taken for logits.


def test_teacher_ending_in_a_softmax_op_is_refused():
    inputs = keras.Input((8,))
    logits = keras.layers.Dense(3)(inputs)
    if IS_LEGACY:
        probabilities = tf.nn.softmax(logits)
    else:
        probabilities = keras.ops.softmax(logits)
    teacher = keras.Model(inputs, probabilities, name="probabilities")
    with pytest.raises(ValueError, match="ends in a softmax"):
        tfkd.Distiller(teacher, make_mlp(4))


def test_sigmoid_output_is_refused():
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    teacher = keras.Model(inputs, outputs, name="sigmoid_head")
    with pytest.raises(ValueError, match="ends in a sigmoid"):
        tfkd.Distiller(teacher, make_mlp(4, classes=1))


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.sparse_categorical_crossentropy,
        keras.losses.categorical_crossentropy,
        keras.losses.binary_crossentropy,
    ],
)
def test_plain_keras_loss_function_on_probabilities_is_refused(loss):
    distiller = tfkd.Distiller(*_teacher_student())
    with pytest.raises(ValueError, match="from_logits=False.*logits"):
        distiller.compile("sgd", loss=loss)


def test_plain_loss_function_from_logits_is_accepted_and_exact():
    x, y = toy_classification()
    loss = functools.partial(
        keras.losses.sparse_categorical_crossentropy, from_logits=True
    )
    a = tfkd.Distiller(*_teacher_student(), alpha=0.5)
    a.compile("sgd", loss=loss)
    b = tfkd.Distiller(a.teacher, a.student, alpha=0.5)
    b.compile("sgd", loss=sparse_ce())
    np.testing.assert_allclose(
        a.evaluate(x, y, verbose=0), b.evaluate(x, y, verbose=0), rtol=1e-6
    )


# 10. Unlabelled data with alpha=0 although compile got a loss.


def test_unlabelled_data_trains_with_alpha_zero_and_a_compiled_loss():
    x, y = toy_classification()
    teacher, student = _teacher_student()
    distiller = tfkd.Distiller(teacher, student, alpha=0.0)
    distiller.compile(
        keras.optimizers.SGD(0.5), loss=sparse_ce(), metrics=["accuracy"]
    )
    history = distiller.fit(
        tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=3, verbose=0
    )
    kd = history.history["distillation_loss"]
    assert kd[-1] < kd[0]
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["student_loss"] > 0 and "accuracy" in logs


def test_unlabelled_data_with_alpha_above_zero_is_a_clear_error():
    x, _ = toy_classification()
    distiller = tfkd.Distiller(*_teacher_student(), alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce())
    with pytest.raises(ValueError, match="no labels.*alpha=0.5"):
        distiller.fit(
            tf.data.Dataset.from_tensor_slices(x).batch(32), verbose=0
        )


# Confusing errors.


def test_teacher_passed_as_student_is_a_clear_error():
    teacher, _ = _teacher_student()
    with pytest.raises(ValueError, match="student is the teacher itself"):
        tfkd.Distiller(teacher, teacher)


def test_frozen_student_is_a_clear_error():
    teacher, student = _teacher_student()
    student.trainable = False
    with pytest.raises(ValueError, match="no trainable weights"):
        tfkd.Distiller(teacher, student)


def test_weighted_entry_of_three_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(method, weight\)` pair.*3"):
        tfkd.Distiller(
            *_teacher_student(),
            distillation_loss=[(tfkd.losses.KD(), 1.0, "extra")],
        )


def test_teacher_and_student_inputs_as_a_pair_are_refused():
    x, y = toy_classification()
    distiller = tfkd.Distiller(*_teacher_student())
    distiller.compile("sgd", loss=sparse_ce())
    data = tf.data.Dataset.from_tensor_slices(((x * 255, x), y)).batch(32)
    with pytest.raises(ValueError, match="takes one input.*Rescaling"):
        distiller.fit(data, verbose=0)


def test_single_key_dict_output_distils_like_a_tensor():
    x, y = toy_classification()

    def dict_model(name, width, seed):
        base = make_mlp(width, name=f"{name}_base", seed=seed)
        return keras.Model(base.inputs, {"logits": base.outputs[0]}, name=name)

    teacher, student = dict_model("t", 16, 1), dict_model("s", 4, 2)
    distiller = tfkd.Distiller(teacher, student, alpha=0.5, temperature=2.0)
    distiller.compile("sgd", loss=sparse_ce())
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    kd = _np_kd(
        teacher.predict(x, verbose=0)["logits"],
        student.predict(x, verbose=0)["logits"],
        2.0,
    ).mean()
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)


# Multi-output models (parity with keras.distillation).


def _two_headed(name, width, seed):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        width,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(inputs)
    a = keras.layers.Dense(
        3,
        name="a",
        kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
    )(hidden)
    b = keras.layers.Dense(
        5,
        name="b",
        kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
    )(hidden)
    return keras.Model(inputs, [a, b], name=name)


def test_multi_output_losses_sum_over_outputs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 8)).astype("float32")
    ya = rng.integers(0, 3, size=32).astype("int32")
    yb = rng.integers(0, 5, size=32).astype("int32")
    teacher, student = _two_headed("t", 16, 1), _two_headed("s", 4, 7)
    distiller = tfkd.Distiller(
        teacher,
        student,
        distillation_loss=[tfkd.losses.KD(temperature=2.0), None],
        alpha=0.3,
    )
    distiller.compile(
        "sgd", loss=[sparse_ce(), sparse_ce()], metrics=[["accuracy"], []]
    )
    logs = distiller.evaluate(
        x, [ya, yb], batch_size=32, verbose=0, return_dict=True
    )
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)

    def ce(logits, labels):
        z = logits.astype("float64")
        z = z - z.max(-1, keepdims=True)
        z -= np.log(np.exp(z).sum(-1, keepdims=True))
        return -z[np.arange(len(labels)), labels].mean()

    student_loss = ce(s[0], ya) + ce(s[1], yb)
    kd = _np_kd(t[0], s[0], 2.0).mean()
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(
        logs["loss"], 0.3 * student_loss + 0.7 * kd, rtol=1e-5
    )
    history = distiller.fit(x, [ya, yb], epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_multi_output_list_of_the_wrong_length_is_a_clear_error():
    with pytest.raises(ValueError, match="one entry per output"):
        tfkd.Distiller(
            _two_headed("t", 16, 1),
            _two_headed("s", 4, 7),
            distillation_loss=[tfkd.losses.KD()] * 3,
        )


# Found by trying tfkd as a new user (issue 11, "the next ones").


def test_keras_masks_are_refused_with_the_fix():
    x = np.array([[3, 4, 0, 0], [5, 0, 0, 0]], "int32")
    y = np.zeros((2, 4), "int32")

    def model(name):
        inputs = keras.Input((4,), dtype="int32")
        h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)

    distiller = tfkd.Distiller(model("t"), model("s"))
    distiller.compile("sgd", loss=sparse_ce())
    with pytest.raises(ValueError, match="Keras mask.*sample_weight"):
        distiller.evaluate(x, y, verbose=0)


def test_ignore_class_is_refused_with_the_fix():
    if IS_LEGACY:
        pytest.skip("tf_keras losses have no ignore_class")
    distiller = tfkd.Distiller(*_teacher_student())
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1
    )
    with pytest.raises(ValueError, match="ignore_class.*sample_weight"):
        distiller.compile("sgd", loss=loss)


def test_regularization_counts_in_evaluate_as_in_keras():
    x, y = toy_classification()
    teacher, _ = _teacher_student()
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(
        3, kernel_regularizer=keras.regularizers.L2(1.0)
    )(inputs)
    student = keras.Model(inputs, outputs, name="regularized")
    distiller = tfkd.Distiller(teacher, student, alpha=1.0)
    distiller.compile("sgd", loss=sparse_ce())
    student.compile("sgd", loss=sparse_ce())
    np.testing.assert_allclose(
        distiller.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        student.evaluate(x, y, verbose=0),
        rtol=1e-5,
    )


# 11. Mixed float16 on several replicas: a gradient overflow on one replica
# (issue 22). Keras 3's LossScaleOptimizer asks replica 0 only whether the
# gradients are finite; the Distiller's step must skip on every replica.


class _OverflowOnReplica(keras.layers.Layer):
    """The identity, whose gradient is inf on replica `replica` while the
    `armed` weight is 1 (as a float16 overflow there would be)."""

    def __init__(self, replica, **kwargs):
        super().__init__(**kwargs)
        self.replica = replica

    def build(self, input_shape):
        self.armed = self.add_weight(
            name="armed", shape=(), initializer="ones", trainable=False
        )

    def call(self, inputs):
        armed = tf.cast(self.armed, "bool")
        replica = self.replica

        @tf.custom_gradient
        def identity(x):
            def grad(dy):
                context = tf.distribute.get_replica_context()
                here = tf.equal(context.replica_id_in_sync_group, replica)
                factor = tf.where(armed & here, float("inf"), 1.0)
                return dy * tf.cast(factor, dy.dtype)

            return tf.identity(x), grad

        return identity(inputs)


def _overflowing_student(replica):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(
        6, kernel_initializer=keras.initializers.GlorotUniform(seed=2)
    )(inputs)
    x = _OverflowOnReplica(replica, name="overflow")(x)
    outputs = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotUniform(seed=3)
    )(x)
    return keras.Model(inputs, outputs, name="s")


def _scale_of(optimizer):
    # Keras 3's `dynamic_scale` variable; tf_keras' `loss_scale` tensor.
    value = optimizer.loss_scale if IS_LEGACY else optimizer.dynamic_scale
    return float(np.asarray(value))


def _trainable(model):
    return [np.array(w) for w in model.trainable_weights]


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("replica", [0, 1])
def test_overflow_on_one_replica_skips_the_step_on_every_replica(
    mixed_float16, replica
):
    x, y = toy_classification(n=16)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def distiller_on(strategy, start=None):
        with strategy.scope():
            teacher = make_mlp(16, name="t", seed=1)
            student = _overflowing_student(replica)
            distiller = tfkd.Distiller(teacher, student, alpha=0.5)
            distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
        if start is not None:
            for weight, value in zip(student.trainable_weights, start):
                weight.assign(value)
        return distiller

    distiller = distiller_on(mirrored_strategy())
    assert "LossScale" in type(distiller.optimizer).__name__
    start = _trainable(distiller.student)
    initial_scale = float(distiller.optimizer.initial_scale)
    logs = distiller.fit(data, epochs=1, verbose=0).history
    # Skipped on both replicas: the weights are as they were (finite), the
    # loss scale halved, as on one device.
    for before, after in zip(start, _trainable(distiller.student)):
        np.testing.assert_array_equal(after, before)
    assert _scale_of(distiller.optimizer) == initial_scale / 2
    assert np.isfinite(logs["loss"][0])

    # The next step, without overflow, trains as one device does.
    distiller.student.get_layer("overflow").armed.assign(0.0)
    distiller.fit(data, epochs=1, verbose=0)
    trained = _trainable(distiller.student)
    assert all(np.all(np.isfinite(w)) for w in trained)
    assert relative_difference(trained, start) > 1e-3
    single = distiller_on(tf.distribute.get_strategy(), start)
    single.student.get_layer("overflow").armed.assign(0.0)
    single.fit(data, epochs=1, verbose=0)
    expected = _trainable(single.student)
    update = [a - b for a, b in zip(trained, start)]
    expected_update = [a - b for a, b in zip(expected, start)]
    assert relative_difference(update, expected_update) < 2e-3
    assert _scale_of(distiller.optimizer) == initial_scale / 2


@pytest.mark.parametrize("replica", [0, 1, None])
def test_replicas_agree_on_finite_gradients_in_both_keras(replica):
    # tfkd's own agreement, whatever the optimizer then does with it.
    strategy = mirrored_strategy()
    with strategy.scope():
        optimizer = keras.mixed_precision.LossScaleOptimizer(
            keras.optimizers.SGD()
        )
    dense = tf.constant([[1.0, -0.0], [3.0, 4.0]])
    sparse = tf.IndexedSlices(
        tf.constant([[5.0, 6.0]]), tf.constant([1]), tf.constant([4, 2])
    )

    def step():
        here = tf.distribute.get_replica_context().replica_id_in_sync_group
        bad = replica is not None and here == replica
        grads = [None, sparse, dense * (float("inf") if bad else 1.0)]
        agreed = _loss_scale.agree_on_finite(optimizer, grads)
        assert agreed[0] is None
        return agreed[1].values, agreed[2]

    for values, grad in zip(
        *(
            strategy.experimental_local_results(result)
            for result in tf.function(lambda: strategy.run(step))()
        )
    ):
        if replica is None:  # untouched, bit for bit (-0.0 too)
            np.testing.assert_array_equal(values, sparse.values)
            np.testing.assert_array_equal(grad, dense)
            assert np.signbit(grad[0, 1])
        else:
            assert not (np.isfinite(values).all() and np.isfinite(grad).all())


# Issue 22: a NaN student surfaces in the logs.


def _reads_logits(entry):
    terms = entry if isinstance(entry, list) else [entry]
    methods = [term[0] if isinstance(term, tuple) else term for term in terms]
    return any(method.teacher_layer is None for method in methods)


# The methods of the table that read the logits. (A NaN before a ReLU does
# not reach the taps: in compiled steps on CPU, TensorFlow's fused oneDNN
# Conv2D+ReLU and MatMul+ReLU kernels give 0 for NaN. The feature methods'
# NaN propagation is tested on the losses, tests/test_losses_robustness.py.)
_LOGIT_METHODS = sorted(
    name for name, make in METHODS.items() if _reads_logits(make())
)


@pytest.mark.parametrize("method", _LOGIT_METHODS)
def test_terminate_on_nan_stops_a_nan_student_at_the_first_batch(method):
    # With alpha=0 (no hard-label term) a NaN student logged DIST's finite
    # 1.91 epoch after epoch; `TerminateOnNaN` never stopped it.
    x, y = toy_images(32)
    teacher = make_cnn(8, name="teacher", seed=1)
    student = make_cnn(4, name="student", seed=2)
    bias = student.get_layer("logits").bias
    bias.assign(np.full(bias.shape, np.nan, "float32"))
    distiller = tfkd.Distiller(teacher, student, METHODS[method](), alpha=0.0)
    distiller.compile(keras.optimizers.SGD(0.1))
    batches = []
    distiller.fit(
        x,
        y,  # DKD reads them; no hard-label loss is compiled.
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs=None: batches.append(
                    dict(logs)
                )
            ),
        ],
    )
    assert len(batches) == 1
    assert np.isnan(batches[0]["loss"])
    assert np.isnan(batches[0]["distillation_loss"])


# Issue 22: saving.


def _saved_distiller(tmp_path):
    x, y = toy_classification(32)
    distiller = tfkd.Distiller(*_teacher_student(), alpha=0.3)
    distiller.compile(keras.optimizers.Adam(0.01), loss=sparse_ce())
    distiller.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(str(path))
    return distiller, path


def test_a_failed_save_leaves_the_file_saved_before_intact(
    tmp_path, monkeypatch
):
    # Keras writes into the target: a save that failed half-way left a
    # truncated file (0 bytes) where the good one was.
    distiller, path = _saved_distiller(tmp_path)
    good = path.read_bytes()
    layer = distiller.student.get_layer("logits")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(layer, "save_own_variables", fail, raising=False)
    monkeypatch.setattr(layer, "save_weights", fail, raising=False)
    distiller.fit(*toy_classification(32), epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match="disk full"):
        distiller.save(str(path))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    monkeypatch.undo()
    distiller.save(path)  # A `pathlib.Path` too; replaces the old file.
    restored = keras.models.load_model(path)
    for saved, weight in zip(
        restored.student.get_weights(), distiller.student.get_weights()
    ):
        np.testing.assert_array_equal(saved, weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# Issue 22. Regression outputs: distilled by matching outputs.


def _regressor(name, width, seed, bias):
    model = make_mlp(width, classes=1, name=name, seed=seed)
    model.get_layer("logits").bias.assign([bias])
    return model


def _regression_data(n=32):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (100.0 + 10.0 * x[:, 0]).astype("float32")


def _np_huber(error, delta):
    absolute = np.abs(error)
    return np.where(
        absolute <= delta, 0.5 * error**2, delta * absolute - 0.5 * delta**2
    )


REGRESSION_LOSSES = [
    pytest.param("mse", lambda e: e**2, id="mse"),
    pytest.param("mean_squared_error", lambda e: e**2, id="long_name"),
    pytest.param("mae", lambda e: np.abs(e), id="mae"),
    pytest.param(
        lambda: keras.losses.MeanSquaredError(),
        lambda e: e**2,
        id="MeanSquaredError",
    ),
    pytest.param(
        lambda: keras.losses.Huber(delta=2.0),
        lambda e: _np_huber(e, 2.0),
        id="Huber",
    ),
    pytest.param(
        lambda: keras.losses.LogCosh(),
        lambda e: np.log(np.cosh(e.astype("float64"))),
        id="LogCosh",
    ),
]


@pytest.mark.parametrize("loss,elementwise", REGRESSION_LOSSES)
def test_regressor_is_distilled_by_matching_its_outputs(loss, elementwise):
    # Before: "mse" was refused, and MeanSquaredError() got the sigmoid KD
    # of a binary logit (0.009 for teacher 100 against student 30).
    x, y = _regression_data()
    teacher = _regressor("t", 16, 1, 100.0)
    student = _regressor("s", 4, 2, 30.0)
    loss = loss() if callable(loss) else loss
    distiller = tfkd.Distiller(teacher, student, alpha=0.5)
    distiller.compile("sgd", loss=loss)
    assert isinstance(
        distiller.distillation_losses[0], tfkd.losses.OutputMatching
    )
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    t = teacher.predict(x, verbose=0)
    s = student.predict(x, verbose=0)
    assert 80 < t.mean() < 120 and 20 < s.mean() < 40
    expected = elementwise(s - t).mean()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    # The hard-label term is plain Keras' loss, labels shaped (batch,).
    student.compile("sgd", loss=loss)
    np.testing.assert_allclose(
        logs["student_loss"], student.evaluate(x, y, verbose=0), rtol=1e-5
    )
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def _class_and_regression(name, width, seed, bias):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        width,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(inputs)
    classes = keras.layers.Dense(
        3,
        name="classes",
        kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
    )(hidden)
    value = keras.layers.Dense(
        1,
        name="value",
        bias_initializer=keras.initializers.Constant(bias),
        kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
    )(hidden)
    return keras.Model(inputs, [classes, value], name=name)


def test_class_and_regression_heads_each_get_their_default():
    x, value = _regression_data()
    labels = (x[:, 1] > 0).astype("int32") + (x[:, 2] > 0).astype("int32")
    teacher = _class_and_regression("t", 16, 1, 100.0)
    student = _class_and_regression("s", 4, 7, 30.0)
    distiller = tfkd.Distiller(teacher, student, alpha=0.3)
    distiller.compile("sgd", loss=[sparse_ce(), "mse"])
    methods = distiller.distillation_losses
    assert [type(m).__name__ for m in methods] == ["DIST", "OutputMatching"]
    logs = distiller.evaluate(
        x, [labels, value], batch_size=32, verbose=0, return_dict=True
    )
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected = (
        tfkd.losses.dist_loss(t[0], s[0]).numpy() + ((s[1] - t[1]) ** 2).mean()
    )
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    # Compiled again with a binary loss on the one-unit head: a sigmoid KD.
    distiller.compile(
        "sgd",
        loss={"classes": sparse_ce(), "value": "binary_crossentropy"},
    )
    method = distiller.distillation_losses[1]
    assert isinstance(method, tfkd.losses.KD) and method.activation == "sigmoid"
    distiller.compile("sgd", loss={"classes": sparse_ce(), "value": "mae"})
    method = distiller.distillation_losses[1]
    assert method.loss == "mean_absolute_error"


@pytest.mark.parametrize(
    "loss,plain",
    [
        (
            "binary_crossentropy",
            lambda: keras.losses.BinaryCrossentropy(from_logits=True),
        ),
        ("mse", lambda: "mse"),
    ],
    ids=["binary_crossentropy", "mse"],
)
def test_labels_of_shape_batch_for_a_one_unit_output_work_as_in_keras(
    loss, plain
):
    # Before, under tf_keras: "a per-example loss returned a scalar".
    x, y = _regression_data()
    y = (y > 100.0).astype("float32")  # (batch,), as plain Keras takes them
    teacher, student = _teacher_student(classes=1)
    distiller = tfkd.Distiller(teacher, student, alpha=1.0)
    distiller.compile("sgd", loss=loss)
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    student.compile("sgd", loss=plain())
    np.testing.assert_allclose(
        logs["student_loss"], student.evaluate(x, y, verbose=0), rtol=1e-5
    )


# Issue 22. Shapes and labels.


def test_sample_weights_that_do_not_fit_the_per_example_loss_are_refused():
    # Before: (batch, 3) weights on a 10-class classifier were averaged
    # over, silently (plain Keras refuses them).
    x, y = toy_classification(n=32, classes=10)
    distiller = tfkd.Distiller(*_teacher_student(classes=10), alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce())
    weights = np.ones((32, 3), "float32")
    with pytest.raises(
        ValueError,
        match=r"Invalid sample weights: shape \((None|32), 3\) does not "
        r"broadcast to the per-example loss, shape \((None|32),\).*Pass one "
        r"weight per example",
    ):
        distiller.evaluate(x, y, sample_weight=weights, verbose=0)
    with pytest.raises(ValueError, match=r"shape \((None|32), 3\) does not"):
        distiller.fit(x, y, sample_weight=weights, verbose=0)
    # One weight per example, (batch,) or (batch, 1), as before.
    a = distiller.evaluate(x, y, sample_weight=weights[:, 0], verbose=0)
    distiller.compile("sgd", loss=sparse_ce())  # a new function to trace
    b = distiller.evaluate(x, y, sample_weight=weights[:, :1], verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("label", [10, -1])
def test_labels_outside_the_classes_are_an_error_for_dkd(label):
    # Before: DKD's target was all zeros, its loss finite and wrong.
    x, y = toy_classification(n=32, classes=10)
    y[5] = label
    distiller = tfkd.Distiller(
        *_teacher_student(classes=10),
        distillation_loss=tfkd.losses.DKD(),
        alpha=0.0,
    )
    distiller.compile("sgd")
    match = r"Labels outside the classes read by DKD.*\[0, classes\)"
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        distiller.evaluate(x, y, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        distiller.fit(x, y, verbose=0)
    # XLA drops asserts: the term is NaN there, for TerminateOnNaN.
    distiller.compile("sgd", jit_compile=True)
    logs = distiller.fit(x, y, verbose=0).history
    assert np.isnan(logs["distillation_loss"][0])


def test_labels_outside_the_classes_are_an_error_for_the_hard_label_loss():
    # Before: TensorFlow's sparse cross-entropy, NaN on GPUs.
    x, y = toy_classification(n=32, classes=10)
    y[3] = 10
    distiller = tfkd.Distiller(*_teacher_student(classes=10), alpha=0.5)
    distiller.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Labels outside the classes: .*Classes, smallest and largest "
        r"label:.*10.*10",
    ):
        distiller.evaluate(x, y, verbose=0)
    distiller.compile("sgd", loss=sparse_ce(), jit_compile=True)
    assert np.isnan(distiller.fit(x, y, verbose=0).history["student_loss"][0])


def _named_heads(name, width, seed, heads):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        width,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(inputs)
    outputs = [
        keras.layers.Dense(
            3,
            name=head,
            kernel_initializer=keras.initializers.GlorotUniform(seed + i + 1),
        )(hidden)
        for i, head in enumerate(heads)
    ]
    return keras.Model(inputs, outputs, name=name)


def test_multi_output_models_pair_their_outputs_by_name():
    # Before: paired by position, the student's "b" learnt the teacher's "a".
    x, _ = toy_classification(n=32)
    teacher = _named_heads("t", 16, 1, ["a", "b"])
    student = _named_heads("s", 4, 7, ["b", "a"])
    distiller = tfkd.Distiller(teacher, student, alpha=0.0, temperature=2.0)
    distiller.compile("sgd")
    logs = distiller.evaluate(x, verbose=0, return_dict=True)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected = _np_kd(t[0], s[1], 2.0).mean() + _np_kd(t[1], s[0], 2.0).mean()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    # Keras' automatic names on one side: by position, as before.
    unnamed = _named_heads("u", 4, 7, [None, None])
    tfkd.Distiller(teacher, unnamed)


def test_multi_output_names_that_do_not_pair_up_are_refused():
    teacher = _named_heads("t", 16, 1, ["label", "box"])
    student = _named_heads("s", 4, 7, ["cls", "bbox"])
    with pytest.raises(
        ValueError,
        match=r"names its outputs \['label', 'box'\] and student 's' "
        r"\['cls', 'bbox'\].*do not pair up.*teacher's names",
    ):
        tfkd.Distiller(teacher, student)
    partly = _named_heads("p", 4, 7, ["box", None])  # "box" moved
    with pytest.raises(ValueError, match="do not pair up"):
        tfkd.Distiller(teacher, partly)


def test_teacher_validation_logs_pair_outputs_by_name():
    x, y = toy_classification(n=32)
    labels = {"a": y, "b": (y + 1) % 3}
    teacher = _named_heads("t", 16, 1, ["a", "b"])
    student = _named_heads("s", 4, 7, ["b", "a"])
    distiller = tfkd.Distiller(teacher, student, alpha=0.5)
    distiller.compile(
        "sgd",
        loss={"a": sparse_ce(), "b": sparse_ce()},
        metrics={"a": ["accuracy"], "b": ["accuracy"]},
    )
    logs = distiller.fit(
        x, labels, validation_data=(x, labels), epochs=1, verbose=0
    ).history
    t = teacher.predict(x, verbose=0)
    for index, head in enumerate(["a", "b"]):
        expected = np.mean(t[index].argmax(-1) == labels[head])
        np.testing.assert_allclose(
            logs[f"val_teacher_{head}_accuracy"], [expected], rtol=1e-6
        )


# Issue 22. A SavedModel teacher (TFSMLayer).


@pytest.mark.skipif(IS_LEGACY, reason="keras.layers.TFSMLayer is Keras 3's")
def test_saved_model_teacher_with_a_one_key_dict_output_distils_exactly(
    tmp_path,
):
    # A SavedModel signature returns a dict, `{"output_0": logits}`: the
    # teacher was refused with "The teacher's outputs ['output_0'] lack
    # ['output']".
    x, y = toy_classification(32)
    teacher = make_mlp(16, name="t", seed=1)
    teacher.export(str(tmp_path / "teacher"), verbose=False)
    exported = keras.Sequential(
        [
            keras.layers.TFSMLayer(
                str(tmp_path / "teacher"), call_endpoint="serving_default"
            )
        ]
    )
    assert set(exported(x)) == {"output_0"}
    results = []
    for model in (teacher, exported):
        student = make_mlp(4, name="s", seed=2)
        distiller = tfkd.Distiller(model, student, alpha=0.5, temperature=2.0)
        distiller.compile("sgd", loss=sparse_ce())
        logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
        history = distiller.fit(
            x, y, validation_data=(x, y), epochs=1, verbose=0
        ).history
        results.append((logs, history, student.get_weights()))
    (logs, history, weights), (exported_logs, exported_history, trained) = (
        results
    )
    untrained = make_mlp(4, name="s", seed=2).predict(x, verbose=0)
    kd = _np_kd(teacher.predict(x, verbose=0), untrained, 2.0)
    np.testing.assert_allclose(logs["distillation_loss"], kd.mean(), rtol=1e-5)
    for key in logs:
        np.testing.assert_allclose(exported_logs[key], logs[key], rtol=1e-6)
    for key in ("loss", "distillation_loss", "val_teacher_loss"):
        np.testing.assert_allclose(
            exported_history[key], history[key], rtol=1e-6
        )
    for new, old in zip(trained, weights):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-7)


# Issue 22. Saving, continued: a file of the other Keras mode.

_LOAD_EACH = """
import json, sys
sys.path.insert(0, sys.argv[1])
import tfkd
from tfkd._keras import keras
results = []
for path in sys.argv[2:]:
    try:
        keras.models.load_model(path)
        results.append(["loaded", ""])
    except Exception as error:
        results.append([type(error).__name__, str(error)])
print(json.dumps(results))
"""


def _without_keras_key(path, target):
    """A copy of a saved Distiller as saved before its config named its
    Keras."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"].pop("keras", None)
                data = json.dumps(config)
            out.writestr(item, data)
    return target


def test_distiller_saved_in_one_keras_mode_is_refused_in_the_other(tmp_path):
    # Keras 3 and tf_keras cannot rebuild each other's models: loading
    # failed on the teacher with "Could not locate class 'Functional'"
    # (TypeError), naming neither the cause nor the fix.
    _, path = _saved_distiller(tmp_path)

    def sequential(name, width):
        return keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(width),
                keras.layers.Dense(3),
            ],
            name=name,
        )

    distiller = tfkd.Distiller(sequential("t", 16), sequential("s", 4))
    distiller.save(str(tmp_path / "sequential.keras"))
    # Files saved before the config named its Keras: Functional models (by
    # their module), Sequential ones (by their InputLayer).
    files = [str(path)] + [
        str(_without_keras_key(source, tmp_path / f"old_{source.name}"))
        for source in (path, tmp_path / "sequential.keras")
    ]
    for saved in files:
        assert isinstance(keras.models.load_model(saved), tfkd.Distiller)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["TF_USE_LEGACY_KERAS"] = "0" if IS_LEGACY else "1"
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_EACH, REPO_ROOT, *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    if IS_LEGACY:
        saved, running, fix = "tf_keras", "Keras 3", "set TF_USE_LEGACY_KERAS=1"
    else:
        saved, running, fix = "Keras 3", "tf_keras", "unset TF_USE_LEGACY_KERAS"
    assert len(results) == 3
    for kind, message in results:
        assert kind == "ValueError", message
        assert f"saved with {saved}" in message, message
        assert f"tfkd is running {running}" in message, message
        assert f"{fix} before importing TensorFlow" in message, message
        assert "distiller.student.save_weights(" in message, message


# Issue 22. Saving, continued: a teacher compiled before it was wrapped.


@pytest.mark.parametrize("ensemble", [False, True])
def test_reloading_a_distiller_of_a_compiled_teacher_restores_it_quietly(
    tmp_path, caplog, ensemble
):
    # The teacher, compiled and trained before it was wrapped, came back
    # compiled with its optimizer rebuilt for zero trainable variables: Keras
    # warned "Skipping variable loading for optimizer 'adam'" (tf_keras:
    # logged), which read as if the Distiller had lost its state. Keras 3
    # warned too for each compiled teacher of an ensemble.
    x, y = toy_classification(32)
    teacher, student = _teacher_student()
    teachers = [teacher, make_mlp(8, name="t2", seed=5)] if ensemble else []
    for model in teachers or [teacher]:
        model.compile(keras.optimizers.Adam(0.01), loss=sparse_ce())
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    distiller = tfkd.Distiller(teachers or teacher, student, alpha=0.3)
    distiller.compile(keras.optimizers.Adam(0.01), loss=sparse_ce())
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.models.load_model(path)
    messages = [str(w.message) for w in caught] + [
        record.getMessage() for record in caplog.records
    ]
    assert not [m for m in messages if "Skipping" in m], messages
    assert int(restored.optimizer.iterations.numpy()) == 2
    for saved, weight in zip(
        restored.optimizer.variables, distiller.optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(weight))
    for model in (distiller, restored):
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert (
        relative_difference(
            restored.student.get_weights(), distiller.student.get_weights()
        )
        < 1e-6
    )
    teacher_weights = distiller.teacher.get_weights()
    assert len(restored.teacher.get_weights()) == len(teacher_weights)
    for saved, weight in zip(restored.teacher.get_weights(), teacher_weights):
        np.testing.assert_array_equal(saved, weight)
