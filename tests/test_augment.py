"""`Distiller(augment=..., mixup=...)`: one augmented view for both models.

Hand-computed values come from NumPy on the models' outputs for the view
the step must have built; random draws are replaced, where a value is
checked, by fixed ones (`tfkd._augment.sample_mixup` patched).
"""

import functools
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_cnn
from conftest import make_mlp
from conftest import mirrored_strategy
from conftest import relative_difference
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd import _augment
from tfkd import _keras
from tfkd._keras import keras

LAM = 0.3


def shift(x):
    """A deterministic augmentation (a named function: it saves by name)."""
    return x + 1.0


def flip_width(images):
    return tf.reverse(images, axis=[2])


def relu(x):
    """A user function named like a Keras built-in (keras.activations.relu)."""
    return x * 2.0


@keras.saving.register_keras_serializable(package="tfkd_tests")
def tanh(x):
    """A registered function named like a Keras built-in."""
    return x - 1.0


def _scale(x, factor):
    return x * factor


@tf.function
def compiled_shift(x):
    return x + 1.0


class Shift(keras.layers.Layer):
    """Adds 1 in training only, as Keras' random layers act in training."""

    def call(self, inputs, training=None):
        return inputs + 1.0 if training else inputs


def _np_log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_ce(logits, y):
    """Per-example sparse cross-entropy from logits."""
    return -_np_log_softmax(logits)[np.arange(len(y)), y]


def _np_kd(teacher_logits, student_logits, temperature):
    """Per-example Hinton KD, T^2 * KL(softmax(t/T) || softmax(s/T))."""
    log_t = _np_log_softmax(teacher_logits / temperature)
    log_s = _np_log_softmax(student_logits / temperature)
    return temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(-1)


def _teacher(x, y, epochs=3):
    teacher = make_mlp(32, name="teacher", seed=10)
    teacher.compile("adam", sparse_ce())
    teacher.fit(x, y, epochs=epochs, verbose=0)
    return teacher


def _distiller(teacher, alpha=0.3, **kwargs):
    distiller = tfkd.Distiller(
        teacher,
        make_mlp(4, name="student", seed=20),
        alpha=alpha,
        temperature=3.0,
        **kwargs,
    )
    # A learning rate of 0: the step's logs are then the losses of the
    # weights that the test reads.
    distiller.compile(
        keras.optimizers.SGD(0.0), loss=sparse_ce(), metrics=["accuracy"]
    )
    return distiller


def _one_step(distiller, x, y, sample_weight=None):
    """The logs of one training step on the whole of `x`."""
    history = distiller.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=len(x),
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return {key: values[0] for key, values in history.history.items()}


def _fixed_mixup(monkeypatch, block=None):
    """Replaces the mixup draws: `lam = LAM`, the batch reversed (in blocks
    of `block` examples, if given: one replica's batch reversed)."""

    def sample_mixup(alpha, batch_size):
        size = block or batch_size
        indices = tf.reshape(tf.range(batch_size), [-1, size])
        return tf.constant(LAM), tf.reshape(indices[:, ::-1], [-1])

    monkeypatch.setattr(_augment, "sample_mixup", sample_mixup)


# (a) The teacher and the student get one augmented view.


@pytest.mark.parametrize("augment", [shift, Shift], ids=["function", "layer"])
def test_both_models_see_the_augmented_batch(augment):
    x, y = toy_classification(n=64)
    teacher = _teacher(x, y)
    augment = augment() if isinstance(augment, type) else augment
    distiller = _distiller(teacher, augment=augment)
    logs = _one_step(distiller, x, y)
    t = teacher.predict(x + 1.0, verbose=0)
    s = distiller.student.predict(x + 1.0, verbose=0)
    ce, kd = _np_ce(s, y).mean(), _np_kd(t, s, 3.0).mean()
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * ce + 0.7 * kd, rtol=1e-5)
    accuracy = np.mean(s.argmax(axis=1) == y)
    np.testing.assert_allclose(logs["accuracy"], accuracy)


def test_random_views_are_shared_not_redrawn():
    """A student that is a copy of the teacher matches it exactly on any
    view: the distillation loss is 0 only if both saw the same one."""
    x, y = toy_images(n=32, size=8)
    teacher = make_cnn(4, name="teacher", seed=1)
    student = make_cnn(4, name="student", seed=1)
    student.set_weights(teacher.get_weights())
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomTranslation(0.3, 0.3),
        ]
    )
    distiller = tfkd.Distiller(
        teacher, student, alpha=0.0, augment=augment, temperature=1.0
    )  # Hinton KD: exactly 0 for equal logits (DIST's Pearson has an eps)
    distiller.compile(keras.optimizers.SGD(0.0))
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["distillation_loss"], 0.0)
    # The views are random: the augmented student differs from the
    # un-augmented teacher.
    views = augment(x, training=True)
    assert np.abs(np.array(views) - x).max() > 0.1
    assert (
        _np_kd(
            teacher.predict(x, verbose=0),
            student.predict(views, verbose=0),
            1.0,
        ).mean()
        > 1e-6
    )


# (b) Not in evaluate and predict.


def test_evaluate_and_predict_do_not_augment():
    x, y = toy_classification(n=64)
    teacher = _teacher(x, y)
    distiller = _distiller(teacher, augment=shift, mixup=1.0)
    logs = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    t = teacher.predict(x, verbose=0)
    s = distiller.student.predict(x, verbose=0)
    np.testing.assert_allclose(
        logs["student_loss"], _np_ce(s, y).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["distillation_loss"], _np_kd(t, s, 3.0).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(distiller.predict(x, verbose=0), s, rtol=1e-6)


# (c) Mixup.


@pytest.mark.parametrize("weighted", [False, True])
def test_mixup_mixes_inputs_and_hard_label_losses(monkeypatch, weighted):
    _fixed_mixup(monkeypatch)
    x, y = toy_classification(n=64)
    w = None
    if weighted:
        w = np.random.default_rng(2).uniform(0.0, 2.0, len(x))
    teacher = _teacher(x, y)
    # A non-linear augmentation: mixing before it would give other inputs.
    distiller = _distiller(teacher, augment=tf.square, mixup=0.2)
    logs = _one_step(distiller, x, y, sample_weight=w)
    mixed = LAM * x**2 + (1 - LAM) * x[::-1] ** 2
    t = teacher.predict(mixed, verbose=0)
    s = distiller.student.predict(mixed, verbose=0)
    w = np.ones(len(x)) if w is None else w
    ce = LAM * np.mean(w * _np_ce(s, y))
    ce += (1 - LAM) * np.mean(w[::-1] * _np_ce(s, y[::-1]))
    kd = np.mean(w * _np_kd(t, s, 3.0))
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * ce + 0.7 * kd, rtol=1e-5)
    # The compiled metrics compare with the labels as they are.
    np.testing.assert_allclose(logs["accuracy"], np.mean(s.argmax(1) == y))


def test_mixup_draws_one_lam_and_a_permutation_per_batch():
    lam, permutation = _augment.sample_mixup(0.4, 16)
    assert lam.shape == () and 0.0 <= float(lam) <= 1.0
    assert sorted(np.array(permutation).tolist()) == list(range(16))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_draws_follow_beta_alpha_alpha(alpha):
    stats = pytest.importorskip("scipy.stats")
    draws = np.array(_augment.sample_beta(alpha, 20000), dtype="float64")
    assert np.all((draws >= 0) & (draws <= 1))
    lower = draws[draws < 0.5]
    assert abs(len(lower) / len(draws) - 0.5) < 0.02
    # The lower half: float32 rounds a few percent of the draws near 1 to
    # exactly 1 (its spacing there is 6e-8), not those near 0.
    result = stats.kstest(
        lower, lambda v: 2.0 * stats.beta(alpha, alpha).cdf(v)
    )
    assert result.pvalue > 1e-3, result
    variance = 1.0 / (4.0 * (2.0 * alpha + 1.0))
    np.testing.assert_allclose(draws.var(), variance, rtol=0.05)


def test_beta_limits_of_tiny_and_huge_alpha():
    tiny = np.array(_augment.sample_beta(1e-3, 2000))
    assert np.all(np.isfinite(tiny))
    # Beta(a, a) puts a mass of about 1e-6^a = 0.986 within 1e-6 of 0 or 1.
    near_ends = np.mean(np.minimum(tiny, 1 - tiny) < 1e-6)
    np.testing.assert_allclose(near_ends, 1e-6**1e-3, atol=0.01)
    assert 0.4 < np.mean(tiny > 0.5) < 0.6
    huge = np.array(_augment.sample_beta(1e6, 2000))
    np.testing.assert_allclose(huge, 0.5, atol=2e-3)


def test_mixup_with_real_draws_trains():
    x, y = toy_classification(n=64)
    distiller = _distiller(_teacher(x, y, epochs=1), mixup=0.4)
    distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("mixup", [-0.1, float("nan"), float("inf")])
def test_invalid_mixup_is_a_value_error(mixup):
    with pytest.raises(ValueError, match=f"mixup={mixup}"):
        tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), mixup=mixup)


def test_mixup_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="`mixup` must be a float.*str"):
        tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), mixup="0.2")


def test_augment_of_the_wrong_type_names_it():
    with pytest.raises(TypeError, match="`augment` must be.*of type int"):
        tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), augment=5)


def test_mixup_refuses_integer_inputs():
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 4)(inputs)
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    teacher = keras.Model(inputs, logits, name="t")
    student = keras.models.clone_model(teacher)
    distiller = tfkd.Distiller(teacher, student, mixup=0.2)
    distiller.compile("sgd", loss=sparse_ce())
    tokens = np.random.default_rng(0).integers(0, 20, (16, 6), dtype="int32")
    with pytest.raises(ValueError, match="int32.*cannot be mixed"):
        distiller.fit(tokens, np.zeros(16, "int32"), verbose=0)


# (d) Under tf.distribute.


def _replicated_run(strategy, data, initial_weights=None):
    with strategy.scope():
        teacher = make_cnn(8, name="teacher", seed=1, batch_norm=True)
        student = make_cnn(4, name="student", seed=2)
        distiller = tfkd.Distiller(
            teacher, student, alpha=0.5, augment=flip_width, mixup=0.2
        )
        distiller.compile(
            keras.optimizers.SGD(0.1, momentum=0.9),
            loss=sparse_ce(),
            metrics=["accuracy"],
        )
    if initial_weights is not None:
        distiller.set_weights(initial_weights)
    start = distiller.get_weights()
    start_student = distiller.student.get_weights()
    history = distiller.fit(data, epochs=1, verbose=0)
    return distiller, (start, start_student), history.history


def test_two_replicas_augment_and_mix_like_one_device(monkeypatch):
    global_batch = 16
    # Each replica mixes within its own half of the global batch; the
    # one-device run gets the same pairs.
    _fixed_mixup(monkeypatch, block=global_batch // 2)
    x, y = toy_images(n=global_batch * 3, size=8)
    w = np.random.default_rng(3).uniform(0.0, 2.0, len(x)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(global_batch)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    single, (start, start_student), single_logs = _replicated_run(one, data)
    mirrored = mirrored_strategy()
    assert mirrored.num_replicas_in_sync == 2
    replicated, _, mirrored_logs = _replicated_run(mirrored, data, start)
    trained = single.student.get_weights()
    assert relative_difference(trained, start_student) > 1e-4
    assert (
        relative_difference(replicated.student.get_weights(), trained) <= 1e-5
    )
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(
            mirrored_logs[key], single_logs[key], rtol=1e-4, atol=1e-5
        )


def test_keras_augmentation_layers_train_on_two_replicas():
    x, y = toy_images(n=32, size=8)
    with mirrored_strategy().scope():
        augment = keras.Sequential([keras.layers.RandomFlip("horizontal")])
        distiller = tfkd.Distiller(
            make_cnn(8, name="teacher", seed=1),
            make_cnn(4, name="student", seed=2),
            augment=augment,
            mixup=0.4,
        )
        distiller.compile("sgd", loss=sparse_ce())
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# (e) XLA and mixed precision.


def test_jit_compile_trains_with_augment_and_mixup():
    x, y = toy_images(n=32, size=8)
    distiller = tfkd.Distiller(
        make_cnn(8, name="teacher", seed=1),
        make_cnn(4, name="student", seed=2),
        augment=flip_width,
        mixup=0.4,
    )
    distiller.compile("sgd", loss=sparse_ce(), jit_compile=True)
    with warnings.catch_warnings():
        # Keras 3 warns when it falls back from XLA.
        warnings.simplefilter("error", UserWarning)
        history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    jit = getattr(
        distiller, "_jit_compile" if _keras.IS_LEGACY else "jit_compile"
    )
    assert jit is True
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_trains_with_augment_and_mixup(mixed_float16):
    x, y = toy_images(n=32, size=8)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal")])
    distiller = tfkd.Distiller(
        make_cnn(8, name="teacher", seed=1),
        make_cnn(4, name="student", seed=2),
        augment=augment,
        mixup=0.4,
    )
    distiller.compile("sgd", loss=sparse_ce())
    assert distiller.student.layers[-1].compute_dtype == "float16"
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# (f) Cached teachers.


@pytest.mark.parametrize(
    "settings", [{"augment": shift}, {"mixup": 0.2}], ids=["augment", "mixup"]
)
def test_cached_teacher_outputs_are_refused(settings):
    x, y = toy_classification(n=64)
    teacher = _teacher(x, y, epochs=1)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    cached = tfkd.cache_teacher_outputs(teacher, batches, verbose=0)
    distiller = _distiller(teacher, **settings)
    with pytest.raises(ValueError, match="cached teacher.*live teacher"):
        distiller.fit(cached, epochs=1, verbose=0)
    # Evaluation does not augment: a cache serves it.
    distiller.evaluate(cached, verbose=0)


# (g) Random layers in the student.


def test_random_layers_in_the_student_warn():
    inner = keras.Sequential(
        [keras.layers.RandomFlip("horizontal", name="flip")], name="inner"
    )
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3)(inner(inputs))
    logits = keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(hidden)
    )
    student = keras.Model(inputs, logits, name="student")
    with pytest.warns(
        UserWarning, match=r"inner/flip \(RandomFlip\).*augment="
    ):
        tfkd.Distiller(make_cnn(8, name="teacher"), student)


def test_a_student_without_random_layers_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tfkd.Distiller(make_cnn(8, name="teacher"), make_cnn(4))


# (h) Saving.


def test_distiller_with_an_augmentation_layer_saves_and_loads(tmp_path):
    x, y = toy_images(n=32, size=8)
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomTranslation(0.1, 0.1),
        ],
        name="augment",
    )
    distiller = tfkd.Distiller(
        make_cnn(8, name="teacher", seed=1),
        make_cnn(4, name="student", seed=2),
        augment=augment,
        mixup=0.4,
    )
    distiller.compile("sgd", loss=sparse_ce())
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, tfkd.Distiller)
    assert [type(layer).__name__ for layer in restored.augment.layers] == [
        "RandomFlip",
        "RandomTranslation",
    ]
    for layer, saved in zip(restored.augment.layers, augment.layers):
        assert layer.get_config() == saved.get_config()
    assert restored.mixup == 0.4
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )
    history = restored.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_an_augment_function_loads_by_name(tmp_path):
    x, y = toy_classification(n=32)
    distiller = _distiller(make_mlp(8, name="teacher"), augment=shift)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    with pytest.raises(TypeError, match="`augment`.*custom_objects"):
        keras.models.load_model(path)
    restored = keras.models.load_model(path, custom_objects={"shift": shift})
    assert restored.augment is shift
    restored.fit(x, y, epochs=1, verbose=0)


# Issue 22: augments that could not be saved, or reloaded as another.


def _saved(tmp_path, augment):
    x, y = toy_classification(n=32)
    distiller = _distiller(make_mlp(8, name="teacher"), augment=augment)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    return path


def test_a_function_named_like_a_keras_builtin_reloads_as_itself(tmp_path):
    # Saved by its bare name, `relu` reloaded as keras.activations.relu,
    # silently.
    path = _saved(tmp_path, relu)
    with pytest.raises(TypeError, match="`augment` \\('relu'\\).*custom_obj"):
        keras.models.load_model(path)
    restored = keras.models.load_model(path, custom_objects={"relu": relu})
    assert restored.augment is relu
    np.testing.assert_allclose(restored.augment(tf.constant([-3.0])), [-6.0])


def test_a_registered_function_reloads_by_its_registered_name(tmp_path):
    restored = keras.models.load_model(_saved(tmp_path, tanh))
    assert restored.augment is tanh


def test_a_tf_function_augment_saves_and_loads(tmp_path):
    # Accepted, but the saved file did not load ("could not be
    # deserialized properly").
    path = _saved(tmp_path, compiled_shift)
    restored = keras.models.load_model(
        path, custom_objects={"compiled_shift": compiled_shift}
    )
    assert restored.augment is compiled_shift


def _bound_method():
    return Shift().call


class _CallableObject:
    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "augment, kind",
    [
        (functools.partial(_scale, factor=2.0), "a `functools.partial`"),
        (_bound_method(), "a bound method"),
        (
            _CallableObject(),
            "a callable _CallableObject object without `get_config`",
        ),
        (tf.function(lambda x: x), "a `tf.function` of a lambda"),
    ],
    ids=["partial", "bound_method", "callable_object", "tf_function_lambda"],
)
def test_an_augment_that_cannot_be_saved_is_refused_at_construction(
    augment, kind
):
    # Accepted, then failed at `save` (leaving a 0-byte file) or at load.
    with pytest.raises(TypeError) as error:
        tfkd.Distiller(make_mlp(8, name="t"), make_mlp(4), augment=augment)
    message = str(error.value)
    assert f"`augment` is {kind}, which the Distiller cannot save" in message
    assert "register_keras_serializable" in message
    assert "keras.layers.Layer" in message


def test_a_lambda_augment_names_safe_mode_at_load(tmp_path):
    path = _saved(tmp_path, lambda x: x + 1.0)
    with pytest.raises(ValueError, match="`augment`, a lambda.*safe_mode"):
        keras.models.load_model(path)
    restored = keras.models.load_model(path, safe_mode=False)
    np.testing.assert_allclose(restored.augment(tf.constant([1.0])), [2.0])


# Issue 22: an augment that returns no batch like its input is named.


def test_a_layer_class_as_augment_is_refused():
    with pytest.raises(
        TypeError,
        match="`augment` is the class RandomFlip, not an instance.*"
        "`augment=RandomFlip\\(...\\)`",
    ):
        tfkd.Distiller(
            make_mlp(8, name="t"), make_mlp(4), augment=keras.layers.RandomFlip
        )


def _returns_none(x):
    tf.reverse(x, axis=[1])


def _returns_pair(x):
    return x, x


def _returns_numpy(x):
    return np.zeros((16, 8), "float32")


def _drops_examples(x):
    return x[::2]


def _drops_features(x):
    return x[:, :4]


@pytest.mark.parametrize(
    "augment, error, message",
    [
        (_returns_none, TypeError, "`augment` returned None"),
        (
            _returns_pair,
            TypeError,
            "`augment` returned a tuple of 2 for inputs that are a tensor",
        ),
        (_returns_numpy, TypeError, "`augment` returned a numpy.ndarray, not"),
        (
            _drops_examples,
            tf.errors.InvalidArgumentError,
            "`augment` changed the batch size",
        ),
        (
            _drops_features,
            ValueError,
            "`augment` changed the shape of the inputs from \\(None, 8\\) "
            "to \\(None, 4\\)",
        ),
    ],
    ids=["none", "tuple", "numpy", "batch_size", "width"],
)
def test_an_augment_that_breaks_the_batch_is_named(augment, error, message):
    # The errors blamed the model or the data ("Input 0 of layer ... is
    # incompatible", "Dimensions must be equal", an unpacking error).
    x, y = toy_classification(n=32)
    distiller = _distiller(make_mlp(8, name="teacher"), augment=augment)
    # Batches of an unknown static size, as from most data pipelines.
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(error, match=message) as raised:
        distiller.fit(data, epochs=1, verbose=0)
    assert "takes the inputs `x` of a training batch" in str(raised.value)


def test_an_augment_that_crops_for_a_fixed_size_model_is_named():
    # The student's error named its input layer, not `augment`.
    x, y = toy_images(n=32, size=8)
    distiller = tfkd.Distiller(
        make_cnn(8, name="teacher", seed=1),
        make_cnn(4, name="student", seed=2),
        augment=keras.layers.RandomCrop(6, 6),
    )
    distiller.compile("sgd", loss=sparse_ce())
    with pytest.raises(
        ValueError,
        match="`augment` returns batches of shape \\(\\w+, 6, 6, 1\\), but "
        "'student' takes inputs of shape \\(None, 8, 8, 1\\).*Resizing",
    ):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
